import pytest
import torch
import torchvision
from torch import nn

import structconv as sc

from .conftest import rel_err


def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def project_all(model):
    for m in model.modules():
        if isinstance(m, sc.StructuredLayer):
            m.project_()
    return model


def test_structurize_keeps_function_and_state_dict():
    model = resnet18()
    x = torch.randn(2, 3, 64, 64)
    structured = sc.structurize(model, ratio=2.0)
    assert structured is not model
    assert structured.state_dict().keys() == model.state_dict().keys()
    torch.testing.assert_close(structured(x), model(x))
    kinds = {type(m).__name__ for m in structured.modules()}
    assert {"StructuredConv2d", "StructuredLinear"} <= kinds and "Conv2d" not in kinds
    # the original is untouched
    assert not any(isinstance(m, sc.StructuredLayer) for m in model.modules())


def test_resnet18_decomposes_exactly_with_half_the_params():
    # whole models are compared in float64: the layer tests cover float32 at 1e-5, and 20
    # layers of float32 rounding in two different orders would only measure the rounding
    structured = project_all(sc.structurize(resnet18().double(), ratio=2.0))
    deployed = sc.decompose(structured)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    assert rel_err(deployed(x), structured(x)) <= 1e-10
    dense_params = sum(p.numel() for p in structured.parameters())
    deployed_params = sum(p.numel() for p in deployed.parameters())
    assert 1.9 <= dense_params / deployed_params <= 2.3, dense_params / deployed_params
    assert not any(isinstance(m, sc.StructuredLayer) for m in deployed.modules())


@pytest.mark.parametrize("name, size", [("mobilenet_v2", 64), ("efficientnet_b1", 64)])
def test_torchvision_models_structurize_and_decompose_exactly(name, size):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, num_classes=10).eval().double()
    structured = project_all(sc.structurize(model, ratio=2.0))
    report = sc.plan(model, ratio=2.0)
    assert len(report.structured) > 10
    deployed = sc.decompose(structured)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    assert rel_err(deployed(x), structured(x)) <= 1e-10


def test_plan_reports_skipped_layers_with_reasons():
    model = nn.Sequential(
        nn.Conv2d(8, 8, 1, groups=8),  # depthwise 1x1: nothing to compress
        nn.Conv2d(8, 16, 3),
        nn.ConvTranspose2d(16, 4, 2),
        nn.Flatten(),
        nn.LazyLinear(3),
    )
    report = sc.plan(model, ratio=2.0, filter_fn=lambda m, name: name != "1")
    by_name = {p.name: p for p in report.layers}
    assert by_name["0"].spec is None and "cannot be compressed" in by_name["0"].reason
    assert by_name["1"].spec is None and "filter_fn" in by_name["1"].reason
    assert by_name["2"].spec is None and "unsupported layer type" in by_name["2"].reason
    text = str(report)
    assert "left dense" in text and "filter_fn" in text


def test_choose_structure_reaches_ratio_with_most_freedom():
    spec, note = sc.convert.choose_structure(64, (3, 3), 2.0)
    assert spec == sc.StructureSpec(32, (3, 3)) and note == ""
    spec, _ = sc.convert.choose_structure(64, (3, 3), 2.0, prefer="spatial")
    assert spec.c * spec.n[0] * spec.n[1] == 288 and spec.c > 32
    spec, _ = sc.convert.choose_structure(3, (7, 7), 2.0)
    assert 3 * 49 / (spec.c * spec.n[0] * spec.n[1]) >= 2.0
    spec, note = sc.convert.choose_structure(1, (3, 3), 100.0)
    assert spec == sc.StructureSpec(1, (1, 1)) and "max ratio 9" in note
    for channels, kernel, ratio in [(5, (3,), 1.5), (16, (1, 1), 4.0), (7, (3, 5), 3.0), (512, (), 2.0)]:
        spec, _ = sc.convert.choose_structure(channels, kernel, ratio)
        full = channels * torch.tensor(kernel).prod().item()
        achieved = full / (spec.c * torch.tensor(spec.n).prod().item())
        assert achieved >= ratio - 1e-9
        # no choice with more freedom reaches the ratio
        assert all(
            full / (c * torch.tensor(n).prod().item()) < ratio - 1e-9
            for c in range(1, channels + 1)
            for n in sc.convert._all_sizes(kernel)
            if c * torch.tensor(n).prod().item() > spec.c * torch.tensor(spec.n).prod().item()
        )


def test_overrides_by_name_pattern_and_skip():
    model = resnet18()
    structured = sc.structurize(
        model,
        ratio=2.0,
        overrides={"conv1": sc.StructureSpec(3, (5, 5)), "layer4.*": 4.0, "fc": None, "layer1.0.conv1": (16, 3)},
    )
    assert structured.conv1.c == 3 and structured.conv1.n == (5, 5)
    assert structured.layer1[0].conv1.c == 16
    assert structured.layer4[0].conv1.basis.ratio >= 4.0
    assert type(structured.fc) is nn.Linear
    assert structured.layer2[0].conv1.basis.ratio == 2.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ratio=0), r"ratio=0 must be positive"),
        (dict(ratio=-2.0), r"ratio=-2.0 must be positive"),
        (dict(ratio=0.5), r"ratio=0.5 < 1"),
        (dict(ratio=float("nan")), r"ratio=nan"),
        (dict(ratio=2.0, overrides={"layer9.*": 2.0}), r"overrides \['layer9.\*'\] match no convertible layer"),
        (dict(ratio=2.0, overrides={"conv1": sc.StructureSpec(4, (3, 3))}), r"layer 'conv1' \(Conv2d\): c=4"),
        (dict(ratio=2.0, overrides={"fc": sc.StructureSpec(600)}), r"layer 'fc' \(Linear\): c=600"),
        (dict(ratio=2.0, overrides={"conv1": "half"}), r"layer 'conv1': override 'half'"),
        (dict(ratio=2.0, prefer="fast"), r"prefer='fast'"),
    ],
)
def test_bad_conversion_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sc.structurize(resnet18(), **kwargs)


def test_decompose_without_structure_raises():
    with pytest.raises(ValueError, match="Conv2d is not a structured layer"):
        sc.decompose(nn.Conv2d(3, 3, 3))
    with pytest.raises(ValueError, match="ResNet has no structured layers"):
        sc.decompose(resnet18())


def test_inplace_conversion_and_single_layer_models():
    model = resnet18()
    out = sc.structurize(model, 2.0, inplace=True)
    assert out is model and isinstance(model.conv1, sc.StructuredConv2d)
    dec = sc.decompose(model, inplace=True)
    assert dec is model and isinstance(model.conv1, sc.DecomposedConv2d)
    single = sc.structurize(nn.Conv2d(8, 4, 3), 2.0)
    assert isinstance(single, sc.StructuredConv2d)
    assert isinstance(sc.decompose(single), sc.DecomposedConv2d)


def test_structurize_with_a_ready_plan():
    model = resnet18()
    the_plan = sc.plan(model, 4.0, filter_fn=lambda m, name: name.startswith("layer3"))
    structured = sc.structurize(model, the_plan)
    names = [n for n, m in structured.named_modules() if isinstance(m, sc.StructuredLayer)]
    assert names and all(n.startswith("layer3") for n in names)
    with pytest.raises(ValueError, match="pass filter_fn/overrides to plan"):
        sc.structurize(model, the_plan, overrides={"fc": None})


@pytest.mark.parametrize("name", ["resnet10t", "mobilenetv3_small_050"])
def test_timm_models_structurize_and_decompose_exactly(name):
    import timm  # a dev dependency: a missing timm must fail, not skip
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).eval().double()
    report = sc.plan(model, 2.0)
    assert not report.skipped, str(report)  # timm's Linear subclass converts like nn.Linear
    structured = project_all(sc.structurize(model, 2.0))
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    assert rel_err(sc.decompose(structured)(x), structured(x)) <= 1e-10


def test_timm_same_padding_conv_is_reported_not_converted():
    import timm  # a dev dependency: a missing timm must fail, not skip
    model = timm.create_model("tf_efficientnet_b0", num_classes=10)
    skipped = {p.name: p.reason for p in sc.plan(model, 2.0).skipped}
    assert "Conv2dSame" in skipped["conv_stem"]
    assert type(sc.structurize(model, 2.0).conv_stem).__name__ == "Conv2dSame"
