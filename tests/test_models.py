"""Model registry: paper architectures, Struct-A/B plans, torchvision/timm fallback, errors."""

import pytest
import torch

import structconv as sc
from structconv.models import PAPER_MODELS, create_model, default_input_size, get_entry, list_models
from structconv.models.cifar_resnet import PadShortcut
from structconv.models.presets import preset_specs


@pytest.mark.parametrize("depth,params", [(20, 0.27e6), (32, 0.46e6), (56, 0.85e6)])
def test_cifar_resnet_is_the_he_et_al_design(depth, params):
    model = create_model(f"cifar_resnet{depth}")
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(n_params - params) / params < 0.02
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 6 * ((depth - 2) // 6) + 1  # parameter-free shortcuts: no 1x1 projection convs
    assert sum(isinstance(m, PadShortcut) for m in model.modules()) == 2
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_pad_shortcut_subsamples_and_zero_pads():
    x = torch.randn(1, 4, 6, 6)
    y = PadShortcut(4, 8, 2)(x)
    assert y.shape == (1, 8, 3, 3)
    assert torch.equal(y[:, 2:6], x[:, :, ::2, ::2])
    assert y[:, :2].abs().sum() == 0 and y[:, 6:].abs().sum() == 0


def test_list_models_and_input_sizes():
    assert set(PAPER_MODELS) <= set(list_models())
    assert default_input_size("cifar_resnet20") == (3, 32, 32)
    assert default_input_size("resnet18") == (3, 224, 224)
    assert default_input_size("efficientnet_b1") == (3, 240, 240)


@pytest.mark.parametrize("struct", ["A", "B"])
def test_struct_plan_keeps_the_function_and_converts_every_layer(struct):
    torch.manual_seed(0)
    dense = create_model("cifar_resnet20", num_classes=7, in_chans=1).eval()
    model = sc.structurize(dense, overrides=preset_specs("cifar_resnet20", struct, dense))
    model.eval()
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(model(x), dense(x), rtol=1e-5, atol=1e-5)
    built = create_model("cifar_resnet20", num_classes=7, in_chans=1, struct=struct)
    kinds = [type(m).__name__ for m in built.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert kinds and all(k.startswith("Structured") for k in kinds[1:])  # a 1-channel stem may stay dense


def test_struct_b_compresses_more_than_a():
    a = sc.count_ops(sc.decompose(create_model("cifar_resnet20", struct="A")), (1, 3, 32, 32))
    b = sc.count_ops(sc.decompose(create_model("cifar_resnet20", struct="B")), (1, 3, 32, 32))
    assert b.params < a.params and b.mults < a.mults


def test_every_plan_names_a_registered_model():
    assert all(get_entry(arch).presets for arch in PAPER_MODELS)


def test_plans_follow_docs_plans_md():
    # CIFAR Struct-B: every 3x3 at c = ceil(9C/16), n = 2; ResNet18 Struct-A: 3x3 at c = C, n = 2, stem dense
    plan = preset_specs("cifar_resnet20", "B", create_model("cifar_resnet20"))
    assert plan["layer3.0.conv2"] == sc.StructureSpec(36, (2, 2)) and plan["conv1"] == sc.StructureSpec(1, (3, 3))
    plan = preset_specs("resnet18", "A", create_model("resnet18"))
    assert plan["layer2.0.conv1"] == sc.StructureSpec(64, (2, 2)) and plan["conv1"] is None
    assert plan["layer2.0.downsample.0"] == sc.StructureSpec(32, (1, 1))


def test_ratio_structurizes_any_torchvision_and_timm_model():
    tv = create_model("squeezenet1_1", num_classes=5, ratio=2.0)
    assert any(isinstance(m, sc.StructuredConv2d) for m in tv.modules())
    assert tv.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    tm = create_model("resnet10t", num_classes=3, in_chans=1, ratio=2.0)  # timm-only name
    assert any(isinstance(m, sc.StructuredConv2d) for m in tm.modules())
    assert tm.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 3)


def test_torchvision_in_chans_is_adapted_generically():
    model = create_model("resnet18", num_classes=4, in_chans=1).eval()
    assert model.conv1.in_channels == 1
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 4)


def test_errors_are_clear():
    with pytest.raises(ValueError, match="unknown architecture 'resnet_does_not_exist'"):
        create_model("resnet_does_not_exist")
    with pytest.raises(ValueError, match="no Struct-B preset for 'efficientnet_b1'"):
        create_model("efficientnet_b1", struct="B")
    with pytest.raises(ValueError, match="not both"):
        create_model("cifar_resnet20", struct="A", ratio=2.0)
    with pytest.raises(ValueError, match="no pretrained weights"):
        create_model("cifar_resnet20", pretrained=True)


def test_pretrained_download_failure_is_a_clear_error():
    try:
        create_model("resnet18", pretrained=True)
    except ValueError as err:
        assert "pretrained weights for 'resnet18'" in str(err)
    # with network access the real weights load, which is also correct


def test_save_load_rebuilds_through_the_registry(tmp_path):
    model = create_model("cifar_resnet20", num_classes=10, in_chans=1, struct="A")
    sc.save(model, tmp_path / "m.pth", model_args={"arch": "cifar_resnet20", "num_classes": 10, "in_chans": 1})
    again = sc.load(tmp_path / "m.pth")
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(again.eval()(x), model.eval()(x))
