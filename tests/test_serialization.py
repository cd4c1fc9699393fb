import pytest
import torch
import torchvision
from torch import nn

import structconv as sc

from .conftest import rel_err


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, groups=2, padding_mode="reflect", padding=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ).eval()  # fmt: skip


@pytest.mark.parametrize("form", ["structured", "decomposed", "mixed", "composite"])
def test_checkpoint_round_trip_rebuilds_layers(tmp_path, form):
    model = sc.structurize(small_net(), 2.0)
    if form == "composite":
        masks = sc.StructuredBasis(3, (3, 3), 2, (2, 2)).masks()
        model[0] = sc.CompositeConv2d.from_dense(small_net()[0], basis=masks)
    if form in ("decomposed", "composite"):
        model = sc.decompose(model)
    if form == "mixed":
        model[3] = model[3].decompose()
    path = tmp_path / "ckpt.pt"
    sc.save(model, path, epoch=3)
    loaded = sc.load(path, small_net())
    assert [type(m) for m in loaded.modules()] == [type(m) for m in model.modules()]
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(loaded(x), model(x))
    assert torch.load(path, weights_only=True)["epoch"] == 3
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp file


def test_decomposed_resnet_checkpoint_loads_into_fresh_model(tmp_path):
    structured = sc.structurize(torchvision.models.resnet18(num_classes=10).eval(), 2.0)
    deployed = sc.decompose(structured)
    sc.save(deployed, tmp_path / "r18.pt")
    loaded = sc.load(tmp_path / "r18.pt", torchvision.models.resnet18(num_classes=10))
    x = torch.randn(1, 3, 32, 32)
    assert rel_err(loaded.eval()(x), deployed(x)) == 0.0


def test_bad_checkpoints_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        sc.load(tmp_path / "missing.pt", small_net())
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="corrupt.pt.*corrupt"):
        sc.load(corrupt, small_net())
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": 1}, foreign)
    with pytest.raises(ValueError, match="not a structconv checkpoint"):
        sc.load(foreign, small_net())
    good = tmp_path / "good.pt"
    sc.save(sc.structurize(small_net(), 2.0), good)
    with pytest.raises(ValueError, match="does not match the model"):
        sc.load(good, nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)))
    with pytest.raises(ValueError, match="records no architecture"):
        sc.load(good)


def test_orthonormal_direct_training_checkpoint_round_trip(tmp_path):
    from structconv.layers import orthonormalize_

    model = orthonormalize_(sc.decompose(sc.structurize(small_net(), 2.0)))
    sc.save(model, tmp_path / "direct.pt")
    loaded = sc.load(tmp_path / "direct.pt", small_net())
    assert loaded.state_dict().keys() == model.state_dict().keys()
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(loaded(x), model(x))
