"""Datasets for ``structconv train``: torchvision's CIFAR-10/100, Fashion-MNIST, ImageFolder.

Each dataset comes with its standard augmentation and a :class:`DataInfo` (classes, channels,
input size), which the trainer passes to ``create_model`` -- so a 28x28 grayscale dataset and
a 32x32 RGB one need no model-specific code (``in_chans`` sets the stem; every model here ends
in global pooling).  ``--in-chans 3`` / ``--image-size`` convert the images instead.

Fashion-MNIST is read from the Debian package ``dataset-fashion-mnist`` when present
(``/usr/share/datasets/fashion-mnist``), else downloaded by torchvision when allowed.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, DistributedSampler, Subset

from . import validation as v

__all__ = [
    "DATASETS",
    "NATIVE",
    "input_size",
    "DataInfo",
    "build_datasets",
    "SeededAugmentation",
    "ResumableSampler",
    "DEBIAN_FASHION_MNIST",
]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DATASETS = ("cifar10", "cifar100", "fashion-mnist", "imagenet", "folder")

_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about the data."""

    name: str
    num_classes: int
    in_chans: int
    image_size: int

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (self.in_chans, self.image_size, self.image_size)


class SeededAugmentation(Dataset):
    """Wraps a dataset so sample ``i`` of epoch ``e`` is augmented with its own fixed seed.

    Makes training reproducible independently of worker count, DDP rank and where a resumed
    run restarts inside an epoch (the global RNG is untouched: the seed is set in a fork).
    """

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.dataset, self.seed, self.epoch = dataset, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        key = f"{self.seed}/{self.epoch}/{index}".encode()
        sample_seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            return self.dataset[index]


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (one replica when not distributed) that can skip the first samples.

    The order of an epoch depends only on ``seed`` and the epoch; ``start_index`` drops what a
    killed run had already trained on, so a resumed run sees exactly the remaining batches.
    """

    start_index = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.start_index :])

    def __len__(self) -> int:
        return max(0, super().__len__() - self.start_index)


def _missing(name: str, root: Path, hint: str) -> FileNotFoundError:
    return FileNotFoundError(f"{name} dataset not found under {str(root)!r}: {hint}")


def _fashion_mnist_raw(root: Path, download: bool) -> bool:
    """Put the Debian package's files in ``root/FashionMNIST/raw`` (extracted); True if present."""
    from torchvision.datasets import FashionMNIST
    from torchvision.datasets.utils import extract_archive

    raw = root / "FashionMNIST" / "raw"
    names = [Path(url).name for url, _ in FashionMNIST.resources]
    if all((raw / Path(n).stem).is_file() for n in names):
        return True
    if not all((DEBIAN_FASHION_MNIST / n).is_file() for n in names):
        return False
    raw.mkdir(parents=True, exist_ok=True)
    for n in names:
        target = raw / Path(n).stem
        if not target.is_file():
            # Extract beside the target, then rename: a concurrent run (two studies started at
            # once) or a killed one never sees, or leaves, a half-written file that would pass
            # the is_file() check above and fail later inside torchvision.
            with tempfile.TemporaryDirectory(dir=raw, prefix=".extract-") as tmp:
                extract_archive(str(DEBIAN_FASHION_MNIST / n), tmp)
                os.replace(Path(tmp) / target.name, target)
    return True


def _transforms(name: str, train: bool, image_size: int, native: int, in_chans: int, native_chans: int):
    from torchvision import transforms as T

    mean, std = _STATS.get(name, _STATS["imagenet"])
    if in_chans != native_chans:  # grayscale <-> RGB: 1 -> 3 repeats the channel, 3 -> 1 averages stats
        mean, std = (mean * in_chans)[:in_chans], (std * in_chans)[:in_chans]
        if in_chans == 1:
            mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    convert = [T.Grayscale(num_output_channels=in_chans)] if in_chans != native_chans else []
    norm = [T.ToTensor(), T.Normalize(mean, std)]
    if name in ("imagenet", "folder"):
        if train:
            return T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), *convert, *norm])
        return T.Compose([T.Resize(int(round(image_size / 0.875))), T.CenterCrop(image_size), *convert, *norm])
    resize = [T.Resize(image_size)] if image_size != native else []
    if train:  # the standard CIFAR recipe: pad-and-crop + horizontal flip (pad 2 for 28x28 images)
        pad = 4 if native >= 32 else 2
        return T.Compose([*resize, T.RandomCrop(image_size, padding=pad), T.RandomHorizontalFlip(), *convert, *norm])
    return T.Compose([*resize, *convert, *norm])


#: dataset -> (channels, image size) of its images as stored
NATIVE = {"cifar10": (3, 32), "cifar100": (3, 32), "fashion-mnist": (1, 28), "imagenet": (3, 224), "folder": (3, 224)}


def input_size(name: str, *, image_size: int | None = None, in_chans: int | None = None) -> tuple[int, int, int]:
    """``(C, H, W)`` a model trained on dataset ``name`` sees (its native size unless converted)."""
    v.choice(name, "dataset", tuple(NATIVE))
    chans, size = NATIVE[name]
    size = image_size or size
    return (in_chans or chans, size, size)


def build_datasets(
    name: str,
    root: str | os.PathLike,
    *,
    download: bool = False,
    image_size: int | None = None,
    in_chans: int | None = None,
    train_subset: int | None = None,
    eval_subset: int | None = None,
    seed: int = 0,
):
    """``(train, test, DataInfo)`` for dataset ``name`` stored under ``root`` in torchvision's format.

    ``cifar10``/``cifar100``: ``root/cifar-10-batches-py`` (python pickle batches).
    ``fashion-mnist``: ``root/FashionMNIST/raw`` (filled from the Debian package when present).
    ``imagenet``/``folder``: ``root/train`` and ``root/val`` ImageFolder trees.
    The train split is wrapped in :class:`SeededAugmentation`.  ``*_subset`` keep the first N images.
    """
    from torchvision import datasets

    v.choice(name, "dataset", DATASETS)
    for arg, value in (("image_size", image_size), ("train_subset", train_subset), ("eval_subset", eval_subset)):
        if value is not None:
            v.integer(value, arg, low=1)
    if in_chans is not None:
        v.choice(in_chans, "in_chans", (1, 3))
    root = v.path(root, "data_path").expanduser()
    if name in ("cifar10", "cifar100"):
        cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        classes = 10 if name == "cifar10" else 100
        folder = cls.base_folder
        if not download and not (root / folder).is_dir():
            raise _missing(
                name, root, f"expected {folder}/ (torchvision's CIFAR python batches); set download=True to fetch it"
            )
        make = lambda train, tf: cls(str(root), train=train, transform=tf, download=download)  # noqa: E731
    elif name == "fashion-mnist":
        classes = 10
        if not _fashion_mnist_raw(root, download) and not download:
            raise _missing(
                name,
                root,
                "expected FashionMNIST/raw/ (install Debian's dataset-fashion-mnist, "
                f"which provides {DEBIAN_FASHION_MNIST}, or set download=True)",
            )

        def make(train, tf):
            return datasets.FashionMNIST(str(root), train=train, transform=tf, download=download)

    else:
        for split in ("train", "val"):
            if not (root / split).is_dir():
                raise _missing(name, root, f"expected ImageFolder directories {root / 'train'} and {root / 'val'}")

        def make(train, tf):
            return datasets.ImageFolder(str(root / ("train" if train else "val")), transform=tf)

        classes = None
    native_chans, native = NATIVE[name]
    image_size = native if image_size is None else image_size
    in_chans = native_chans if in_chans is None else in_chans
    try:
        train = make(True, _transforms(name, True, image_size, native, in_chans, native_chans))
        test = make(False, _transforms(name, False, image_size, native, in_chans, native_chans))
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted" / download failures
        raise _missing(name, root, str(err).strip().splitlines()[0]) from None
    if classes is None:
        classes = len(train.classes)
        if sorted(test.classes) != sorted(train.classes):
            raise ValueError(f"{root}: train/ has {len(train.classes)} classes but val/ has {len(test.classes)}")
    if train_subset is not None:
        train = Subset(train, range(min(train_subset, len(train))))
    if eval_subset is not None:
        test = Subset(test, range(min(eval_subset, len(test))))
    return SeededAugmentation(train, seed), test, DataInfo(name, classes, in_chans, image_size)
