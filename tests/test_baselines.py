"""The `structconv compare` baselines: Torch-Pruning channel pruning, weight / spatial SVD, narrow nets.

Every method must land within ±3 % of a target mults count (the paper's accounting,
``structconv.count_ops``); targets are Struct-A-like 2x (0.5 x dense) and Struct-B-like 4x
(0.27 x dense) compressions.
"""

import copy
import os

import pytest
import torch
import torchvision
from torch import nn

import structconv as sc
from structconv.models import create_model
from structconv.models.cifar_resnet import PadShortcut

tp = pytest.importorskip("torch_pruning")

from structconv.baselines import (  # noqa: E402 - after the optional-dependency skip
    ChannelMapShortcut,
    load_pruned,
    prune_to_mults,
    save_pruned,
)
from structconv.baselines.pruning import customized_pruners, unpad_shortcuts  # noqa: E402

from .conftest import rel_err  # noqa: E402

TOL = 0.03
MNIST = (1, 1, 28, 28)
CIFAR = (1, 3, 32, 32)


def resnet20():
    return create_model("cifar_resnet20", num_classes=10, in_chans=1)


def resnet18_small():
    """torchvision ResNet18 with the small-image stem: 3x3 stride-1 conv on 1 channel, no max-pool."""
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


def mobilenet_v2():
    return torchvision.models.mobilenet_v2(num_classes=10)


BUILDERS = {"resnet20": (resnet20, MNIST), "resnet18": (resnet18_small, MNIST), "mobilenet_v2": (mobilenet_v2, CIFAR)}


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics, as a trained model has (fresh ones make BN an identity)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)
    return model


def trained_like(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    build, shape = BUILDERS[name]
    torch.manual_seed(seed)
    return randomize_bn(build()).eval(), torch.randn(shape)


def mults(model, x) -> int:
    return sc.count_ops(model, tuple(x.shape)).mults


def assert_within(reached: int, target: float) -> None:
    assert abs(reached - target) <= TOL * target, f"reached {reached:,} for target {target:,.0f}"


# --------------------------------------------------------------------------------------------
# Torch-Pruning and the CIFAR ResNet's padded shortcut


def test_channel_map_shortcut_computes_the_pad_shortcut():
    x = torch.randn(2, 16, 9, 9)
    for stride, extra in [(2, 16), (1, 0), (2, 6)]:
        pad = PadShortcut(16, 16 + extra, stride)
        assert torch.equal(ChannelMapShortcut(16, 16 + extra, stride, offset=extra // 2)(x), pad(x))
    model, x = trained_like("resnet20")
    ref = model(x)
    unpadded = unpad_shortcuts(copy.deepcopy(model), x)
    assert not any(isinstance(m, PadShortcut) for m in unpadded.modules())
    assert torch.equal(unpadded(x), ref)


def test_pruning_silent_channels_across_padded_shortcuts_is_exact():
    """Channels that are zero everywhere can be removed without changing the output: the
    dependency graph must route stage 1's residual channels through the shortcut into stage 2
    without coupling the two stages' widths."""
    model, _ = trained_like("resnet20")
    x = torch.randn(3, 1, 28, 28)
    model = unpad_shortcuts(model, x[:1])
    stage1 = [model.bn1] + [b.bn2 for b in model.layer1]
    stage2 = [b.bn2 for b in model.layer2]
    dead1 = [0, 3, 7]
    # stage 2 (32 channels) receives stage 1 at positions 8..23: silence padded positions and
    # those fed by silenced stage-1 channels (8 + 0, 8 + 7)
    dead2 = [1, 8, 15, 26, 30]
    with torch.no_grad():
        for bns, idxs in ((stage1, dead1), (stage2, dead2)):
            for bn in bns:
                bn.weight[idxs] = 0
                bn.bias[idxs] = 0
    ref = model(x)
    graph = tp.DependencyGraph().build_dependency(model, x[:1], customized_pruners=customized_pruners())
    graph.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=dead1).prune()
    graph.get_pruning_group(model.layer2[0].conv2, tp.prune_conv_out_channels, idxs=dead2).prune()
    assert model.conv1.out_channels == 16 - len(dead1)
    assert model.layer2[0].conv2.out_channels == 32 - len(dead2)
    shortcut = model.layer2[0].shortcut
    assert (shortcut.in_channels, shortcut.out_channels) == (13, 27)
    assert model.layer3[0].shortcut.in_channels == 27
    assert rel_err(model(x), ref) < 1e-6


@pytest.mark.parametrize(
    "name, fraction, steps",
    [("resnet20", 0.5, 32), ("resnet20", 0.27, 32), ("mobilenet_v2", 0.27, 16), ("resnet18", 0.5, 12)],
)
def test_prune_to_mults_hits_the_target_with_plain_smaller_layers(name, fraction, steps):
    model, x = trained_like(name)
    dense = mults(model, x)
    before = copy.deepcopy(model.state_dict())
    pruned = prune_to_mults(model, x, fraction * dense, steps=steps)
    assert_within(mults(pruned, x), fraction * dense)
    assert pruned(x).shape == model(x).shape
    assert mults(model, x) == dense and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    convs = [m for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    with_params = {type(m) for m in pruned.modules() if list(m.parameters(recurse=False))}
    assert with_params <= {nn.Conv2d, nn.BatchNorm2d, nn.Linear}
    assert sum(c.out_channels for c in convs) < sum(c.out_channels for c in model.modules() if isinstance(c, nn.Conv2d))


def test_pruned_model_survives_save_and_load(tmp_path):
    model, x = trained_like("resnet20")
    pruned = prune_to_mults(model, x, 0.5 * mults(model, x), steps=16).eval()
    path = tmp_path / "pruned.pth"
    save_pruned(pruned, path)
    assert os.listdir(tmp_path) == ["pruned.pth"]  # the temporary file was moved over
    loaded = load_pruned(path, resnet20()).eval()
    assert torch.equal(loaded(x), pruned(x))
    assert mults(loaded, x) == mults(pruned, x)
    assert [p.shape for p in loaded.parameters()] == [p.shape for p in pruned.parameters()]


def test_prune_in_place_replays_the_chosen_step_on_the_model():
    model, x = trained_like("resnet20")
    target = 0.4 * mults(model, x)
    reference = prune_to_mults(model, x, target, steps=16)
    same = prune_to_mults(model, x, target, steps=16, inplace=True)
    assert same is model
    assert torch.equal(model(x), reference(x))


def test_prune_to_mults_rejects_unreachable_targets():
    model, x = trained_like("resnet20")
    dense = mults(model, x)
    with pytest.raises(ValueError, match="target_mults"):
        prune_to_mults(model, x, 0.02 * dense, max_pruning_ratio=0.5, steps=8)
    with pytest.raises(ValueError, match="above the dense"):
        prune_to_mults(model, x, 2 * dense)
    with pytest.raises(ValueError, match="round_to=0"):
        prune_to_mults(model, x, 0.5 * dense, round_to=0)
