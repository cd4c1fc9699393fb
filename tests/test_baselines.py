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
    factor_spatial_svd,
    factor_weight_svd,
    load_pruned,
    narrow_to_mults,
    prune_to_mults,
    save_pruned,
    spatial_svd,
    weight_svd,
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


# --------------------------------------------------------------------------------------------
# Weight SVD and spatial SVD

CONVS = [
    dict(in_channels=5, out_channels=7, kernel_size=3, stride=2, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 5), stride=(2, 1), padding=(1, 2), bias=False),
    dict(in_channels=3, out_channels=8, kernel_size=3, padding="same", dilation=2),
    dict(in_channels=6, out_channels=3, kernel_size=(5, 3), stride=(1, 3), padding=0),
    dict(in_channels=6, out_channels=4, kernel_size=1, stride=2),
]


@pytest.mark.parametrize("kwargs", CONVS, ids=lambda k: f"{k['kernel_size']}-{k.get('stride', 1)}-{k.get('padding')}")
def test_full_rank_factorizations_reproduce_the_conv(kwargs):
    torch.manual_seed(0)
    conv = nn.Conv2d(**kwargs).double()
    x = torch.randn(2, conv.in_channels, 11, 9, dtype=torch.float64)
    out_ch, in_ch, kh, kw = conv.weight.shape
    weight_full, spatial_full = min(out_ch, in_ch * kh * kw), min(in_ch * kh, out_ch * kw)
    assert rel_err(factor_weight_svd(conv, weight_full)(x), conv(x)) < 1e-10
    assert rel_err(factor_spatial_svd(conv, spatial_full)(x), conv(x)) < 1e-10
    with pytest.raises(ValueError, match="rank="):
        factor_weight_svd(conv, weight_full + 1)
    with pytest.raises(ValueError, match="rank=0"):
        factor_spatial_svd(conv, 0)


def test_full_rank_linear_factorization_is_exact_and_truncation_is_optimal():
    torch.manual_seed(0)
    lin = nn.Linear(20, 7).double()
    x = torch.randn(3, 20, dtype=torch.float64)
    assert rel_err(factor_weight_svd(lin, 7)(x), lin(x)) < 1e-10
    # rank r keeps the best rank-r approximation: the error is the tail singular values
    conv = nn.Conv2d(6, 10, 3).double()
    s = torch.linalg.svdvals(conv.weight.detach().reshape(10, -1))
    for rank in (1, 4, 9):
        first, second = factor_weight_svd(conv, rank)
        effective = second.weight.reshape(10, rank) @ first.weight.reshape(rank, -1)
        error = torch.linalg.matrix_norm(effective - conv.weight.detach().reshape(10, -1))
        assert error.item() == pytest.approx(s[rank:].square().sum().sqrt().item(), rel=1e-9)


def test_spatial_svd_splits_the_kernel_into_vertical_and_horizontal_convs():
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1)
    vertical, horizontal = factor_spatial_svd(conv, 5)
    assert (vertical.kernel_size, vertical.stride, vertical.padding, vertical.bias) == ((3, 1), (2, 1), (1, 0), None)
    assert (horizontal.kernel_size, horizontal.stride, horizontal.padding) == ((1, 3), (1, 2), (0, 1))
    assert torch.equal(horizontal.bias, conv.bias)
    assert (vertical.out_channels, horizontal.in_channels) == (5, 5)


@pytest.mark.parametrize("method", [weight_svd, spatial_svd])
@pytest.mark.parametrize("name, fraction", [("resnet20", 0.5), ("resnet20", 0.27), ("mobilenet_v2", 0.27)])
def test_svd_hits_the_target_and_keeps_grouped_convs(method, name, fraction):
    model, x = trained_like(name)
    dense = mults(model, x)
    factored = method(model, x, fraction * dense)
    assert_within(mults(factored, x), fraction * dense)
    assert factored(x).shape == model(x).shape
    assert mults(model, x) == dense  # the original is untouched
    pairs = [m for m in factored.modules() if isinstance(m, nn.Sequential) and len(m) == 2
             and all(isinstance(p, (nn.Conv2d, nn.Linear)) for p in m)]  # fmt: skip
    assert pairs
    grouped = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(grouped) == len([m for m in factored.modules() if isinstance(m, nn.Conv2d) and m.groups > 1])
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert any(m.weight.shape == classifier.weight.shape for m in factored.modules() if isinstance(m, nn.Linear))


def test_weight_svd_on_resnet18_respects_filter_fn():
    model, x = trained_like("resnet18")
    dense = mults(model, x)
    factored = weight_svd(model, x, 0.5 * dense, filter_fn=lambda m, name: not name.startswith("layer4"))
    assert_within(mults(factored, x), 0.5 * dense)
    assert all(isinstance(m, nn.Conv2d) for m in (factored.layer4[0].conv1, factored.layer4[1].conv2))
    assert isinstance(factored.layer1[0].conv1, nn.Sequential)
    assert factored(x).shape == (1, 10)


def test_svd_rejects_targets_no_rank_reaches():
    model, x = trained_like("resnet20")
    with pytest.raises(ValueError, match="target_mults=.*reached"):
        spatial_svd(model, x, 0.01 * mults(model, x))


# --------------------------------------------------------------------------------------------
# Narrow networks


def constant_build(build):
    """A builder whose weights are recognizable: every conv weight 0.5, BN running mean 3."""

    def fn():
        model = build()
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.Conv2d):
                    m.weight.fill_(0.5)
                elif isinstance(m, nn.BatchNorm2d):
                    m.running_mean.fill_(3.0)
        return model

    return fn


@pytest.mark.parametrize(
    "name, fraction", [("resnet20", 0.5), ("resnet20", 0.27), ("resnet18", 0.27), ("mobilenet_v2", 0.5)]
)
def test_narrow_network_is_uniformly_thinner_and_freshly_initialized(name, fraction):
    build, shape = BUILDERS[name]
    x = torch.randn(shape)
    dense_model = build()
    dense = mults(dense_model, x)
    narrow = narrow_to_mults(constant_build(build), x, fraction * dense)
    assert_within(mults(narrow, x), fraction * dense)
    assert narrow.eval()(x).shape == (1, 10)
    for m in narrow.modules():  # re-initialized: nothing left of the source's weights
        if isinstance(m, nn.Conv2d):
            assert not torch.all(m.weight == 0.5)
        elif isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.running_mean == 0)
    # a width multiplier: one alpha with every conv within 1.5 channels of alpha * its width
    # (round(alpha * width), give or take the one channel of the staggered rounding)
    pairs = [(n.out_channels, d.out_channels) for n, d in zip(narrow.modules(), dense_model.modules())
             if isinstance(d, nn.Conv2d)]  # fmt: skip
    lowest = max((w - 1.5) / full for w, full in pairs)
    highest = min((w + 1.5) / full for w, full in pairs)
    assert lowest <= highest, pairs
    assert any(w < full for w, full in pairs)


def test_narrow_cifar_resnet_has_option_a_shortcuts():
    x = torch.randn(MNIST)
    narrow = narrow_to_mults(resnet20, x, 0.27 * mults(resnet20(), x))
    shortcuts = [m for m in narrow.modules() if isinstance(m, (PadShortcut, ChannelMapShortcut))]
    assert len(shortcuts) == 2 and all(isinstance(m, PadShortcut) for m in shortcuts)
    assert narrow.layer2[0].conv1.in_channels + shortcuts[0].extra == narrow.layer2[0].conv2.out_channels


def test_narrow_rejects_module_objects_in_ignored_layers():
    model = resnet20()
    with pytest.raises(ValueError, match="qualified name"):
        narrow_to_mults(resnet20, torch.randn(MNIST), 1e6, ignored_layers=[model.conv1])
