"""Tiny datasets written in torchvision's real on-disk formats, for tests (no downloads)."""

from __future__ import annotations

import gzip
import importlib.util
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def _images(n: int, size: int, channels: int, classes: int, seed: int):
    """Learnable images: class k is a bright band at a class-specific height, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    rng.shuffle(labels)
    imgs = rng.integers(0, 60, size=(n, size, size, channels), dtype=np.uint8)
    band = max(1, size // (classes + 2))
    for i, k in enumerate(labels):
        top = band * (k + 1)
        imgs[i, top : top + band] = 230
    return imgs, labels


def make_fashion_mnist(root: Path, n_train: int = 256, n_test: int = 64, seed: int = 0) -> Path:
    """``root/FashionMNIST/raw/*-idx?-ubyte`` in the original IDX format (what torchvision reads)."""
    raw = Path(root) / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        imgs, labels = _images(n, 28, 1, 10, s)
        with open(raw / f"{prefix}-images-idx3-ubyte", "wb") as f:
            f.write(struct.pack(">IIII", 0x803, n, 28, 28) + imgs[..., 0].tobytes())
        with open(raw / f"{prefix}-labels-idx1-ubyte", "wb") as f:
            f.write(struct.pack(">II", 0x801, n) + labels.astype(np.uint8).tobytes())
    return Path(root)


def make_fashion_mnist_gz(directory: Path, n_train: int = 64, n_test: int = 32) -> Path:
    """The four ``*.gz`` files as Debian's dataset-fashion-mnist ships them."""
    tmp = make_fashion_mnist(Path(directory) / "_plain", n_train, n_test) / "FashionMNIST" / "raw"
    for f in tmp.iterdir():
        with open(f, "rb") as src, gzip.open(Path(directory) / (f.name + ".gz"), "wb") as dst:
            dst.write(src.read())
    return Path(directory)


def make_cifar10(root: Path, n_train: int = 100, n_test: int = 40, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` with python-pickle batches like the real archive."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    imgs, labels = _images(n_train, 32, 3, 10, seed)
    per = -(-n_train // 5)
    for b in range(5):
        sl = slice(b * per, (b + 1) * per)
        data = imgs[sl].transpose(0, 3, 1, 2).reshape(-1, 3072)
        with open(folder / f"data_batch_{b + 1}", "wb") as f:
            pickle.dump({"data": data, "labels": labels[sl].tolist()}, f)
    imgs, labels = _images(n_test, 32, 3, 10, seed + 1)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": imgs.transpose(0, 3, 1, 2).reshape(-1, 3072), "labels": labels.tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return Path(root)


def make_image_folder(root: Path, classes: int = 3, per_class: int = 4, size: int = 40) -> Path:
    """``root/train/<class>/*.png`` and ``root/val/<class>/*.png`` (an ImageNet-style tree)."""
    for split, seed in (("train", 0), ("val", 1)):
        imgs, labels = _images(classes * per_class, size, 3, classes, seed)
        for i, (img, k) in enumerate(zip(imgs, labels)):
            d = Path(root) / split / f"n{k:08d}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"img{i}.png")
    return Path(root)


def load_example(name: str):
    """The module ``examples/<name>.py`` (examples are scripts, not part of the package)."""
    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"examples_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
