"""Datasets in torchvision's on-disk formats, augmentation seeding, resumable sampling."""

import pytest
import torch

import structconv.data as data
from structconv.data import ResumableSampler, SeededAugmentation, build_datasets

from ._synthetic import make_cifar10, make_fashion_mnist, make_fashion_mnist_gz, make_image_folder


@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    # torchvision checks the md5 of the real archive's batches; ours are generated in the same format
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args, **kwargs: True)
    return make_cifar10(tmp_path / "cifar")


def test_fashion_mnist_native_is_1x28x28(tmp_path):
    train, test, info = build_datasets("fashion-mnist", make_fashion_mnist(tmp_path, 32, 16))
    assert (len(train), len(test)) == (32, 16)
    assert info.input_size == (1, 28, 28) and info.num_classes == 10
    x, y = test[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= y < 10


def test_fashion_mnist_from_debian_package_files(tmp_path, monkeypatch):
    debian = make_fashion_mnist_gz(tmp_path / "usr_share")
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", debian)
    train, test, _ = build_datasets("fashion-mnist", tmp_path / "root")
    assert (len(train), len(test)) == (64, 32)
    assert (tmp_path / "root" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_a_failed_extraction_leaves_no_file_that_passes_for_the_dataset(tmp_path, monkeypatch):
    # torchvision opens the target before decompressing: a truncated archive (or a second run
    # reading mid-extraction) used to leave an empty file that the next run took as extracted.
    debian = make_fashion_mnist_gz(tmp_path / "usr_share")
    archive = debian / "train-images-idx3-ubyte.gz"
    whole = archive.read_bytes()
    archive.write_bytes(whole[: len(whole) // 2])
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", debian)
    raw = tmp_path / "root" / "FashionMNIST" / "raw"
    with pytest.raises(EOFError):
        build_datasets("fashion-mnist", tmp_path / "root")
    assert not (raw / "train-images-idx3-ubyte").exists()
    assert [p.name for p in raw.iterdir() if p.name.startswith(".")] == []
    archive.write_bytes(whole)  # the package repaired: the next run extracts it and reads it
    train, _, _ = build_datasets("fashion-mnist", tmp_path / "root")
    assert len(train) == 64


def test_channel_and_size_conversion_needs_no_model_code(tmp_path, cifar_root):
    train, _, info = build_datasets("fashion-mnist", make_fashion_mnist(tmp_path, 8, 8), in_chans=3, image_size=32)
    assert info.input_size == (3, 32, 32) and train[0][0].shape == (3, 32, 32)
    train, test, info = build_datasets("cifar10", cifar_root, in_chans=1)
    assert info.input_size == (1, 32, 32) and test[0][0].shape == (1, 32, 32)


def test_cifar10_pickle_batches(cifar_root):
    train, test, info = build_datasets("cifar10", cifar_root)
    assert (len(train), len(test), info.num_classes, info.input_size) == (100, 40, 10, (3, 32, 32))
    assert train[3][0].shape == (3, 32, 32)


def test_image_folder_tree(tmp_path):
    root = make_image_folder(tmp_path / "imnet", classes=3, per_class=2)
    train, test, info = build_datasets("imagenet", root, image_size=24)
    assert info.num_classes == 3 and info.input_size == (3, 24, 24)
    assert train[0][0].shape == (3, 24, 24) and test[0][0].shape == (3, 24, 24)


def test_missing_and_unknown_datasets_are_clear(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="fashion-mnist dataset not found under .*empty"):
        build_datasets("fashion-mnist", tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        build_datasets("cifar10", tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="ImageFolder"):
        build_datasets("imagenet", tmp_path / "empty")
    with pytest.raises(ValueError, match="dataset='mnist3d' must be one of"):
        build_datasets("mnist3d", tmp_path)


def test_augmentation_is_seeded_per_sample_and_epoch(tmp_path):
    train, _, _ = build_datasets("fashion-mnist", make_fashion_mnist(tmp_path, 16, 8), seed=3)
    assert isinstance(train, SeededAugmentation)
    state = torch.get_rng_state()
    first = [train[i][0] for i in range(16)]
    torch.manual_seed(123)  # the global RNG does not matter ...
    assert all(torch.equal(a, train[i][0]) for i, a in enumerate(first))
    assert torch.equal(torch.get_rng_state(), torch.random.default_generator.get_state())
    train.set_epoch(1)  # ... the epoch does
    assert any(not torch.equal(a, train[i][0]) for i, a in enumerate(first))
    torch.set_rng_state(state)


def test_resumable_sampler_skips_exactly_the_consumed_prefix():
    ds = list(range(50))
    full = ResumableSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=7)
    full.set_epoch(2)
    order = list(full)
    part = ResumableSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=7)
    part.set_epoch(2)
    part.start_index = 20
    assert list(part) == order[20:] and len(part) == 30
    ranks = [list(ResumableSampler(ds, num_replicas=2, rank=r, shuffle=True, seed=7)) for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1]) and len(ranks[0]) == 25
