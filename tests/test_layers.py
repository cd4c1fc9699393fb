import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import structconv as sc
from structconv.basis import StructuredBasis

from .conftest import TOL, float64_reference, rel_err

STRUCTURED = {1: sc.StructuredConv1d, 2: sc.StructuredConv2d, 3: sc.StructuredConv3d}
DECOMPOSED = {1: sc.DecomposedConv1d, 2: sc.DecomposedConv2d, 3: sc.DecomposedConv3d}
COMPOSITE = {1: sc.CompositeConv1d, 2: sc.CompositeConv2d, 3: sc.CompositeConv3d}
DENSE = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


@st.composite
def conv_configs(draw, max_nd=3):
    """Random nn.ConvNd options: every padding form and mode, stride, dilation, groups, non-square kernels."""
    nd = draw(st.integers(1, max_nd))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    per_group = draw(st.integers(1, 6))
    depthwise = draw(st.booleans()) and groups > 1
    if depthwise:
        per_group = 1
    out_channels = groups * draw(st.integers(1, 3))
    max_k = 4 if nd < 3 else 3
    kernel = tuple(draw(st.integers(1, max_k)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    padding_kind = draw(st.sampled_from(["int", "tuple", "same", "valid"]))
    stride = (1,) * nd if padding_kind == "same" else tuple(draw(st.integers(1, 3)) for _ in range(nd))
    if padding_kind == "int":
        padding = draw(st.integers(0, 3))
    elif padding_kind == "tuple":
        padding = tuple(draw(st.integers(0, 3)) for _ in range(nd))
    else:
        padding = padding_kind
    padding_mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate", "circular"]))
    c = draw(st.integers(1, per_group))
    n = tuple(draw(st.integers(1, k)) for k in kernel)
    pads = sc.functional.conv_padding(padding, kernel, dilation, stride)
    # input large enough for the kernel, and for reflect padding (pad < size)
    lows = [max((k - 1) * d + 1 - a - b, max(a, b) + 1, 1) for k, d, (a, b) in zip(kernel, dilation, pads)]
    size = tuple(draw(st.integers(low, max(low, 9 if nd < 3 else 6))) for low in lows)
    return dict(
        nd=nd, in_channels=groups * per_group, out_channels=out_channels, kernel_size=kernel, stride=stride,
        padding=padding, dilation=dilation, groups=groups, bias=draw(st.booleans()), padding_mode=padding_mode,
        c=c, n=n, size=size,
    )  # fmt: skip


def build(cls, cfg, dtype):
    kwargs = {k: v for k, v in cfg.items() if k not in ("nd", "size")}
    return cls(**kwargs, dtype=dtype)


@settings(max_examples=300)
@given(cfg=conv_configs(), dtype=st.sampled_from([torch.float64, torch.float32]), seed=st.integers(0, 2**31 - 1))
def test_decomposed_equals_projected_structured(cfg, dtype, seed):
    torch.manual_seed(seed)
    layer = build(STRUCTURED[cfg["nd"]], cfg, dtype)
    layer.project_()
    assert layer.structure_error() < (1e-12 if dtype == torch.float64 else 1e-6)
    dec = layer.decompose()
    assert isinstance(dec, DECOMPOSED[cfg["nd"]])
    x = torch.randn(2, cfg["in_channels"], *cfg["size"], dtype=dtype)
    expected = float64_reference(layer, x)
    got = dec(x)
    assert got.shape == expected.shape
    assert rel_err(got, expected) <= TOL[dtype]
    # the recomposed dense layer is the same function too
    assert rel_err(dec.recompose()(x), expected) <= TOL[dtype]


@settings(max_examples=100)
@given(cfg=conv_configs(), seed=st.integers(0, 2**31 - 1))
def test_decomposition_of_unprojected_weight_computes_the_projection(cfg, seed):
    """decompose() without project_() gives alpha = A^+ W: the function of the *projected* layer."""
    torch.manual_seed(seed)
    layer = build(STRUCTURED[cfg["nd"]], cfg, torch.float64)
    projected = build(STRUCTURED[cfg["nd"]], cfg, torch.float64)
    projected.load_state_dict(layer.state_dict())
    projected.project_()
    x = torch.randn(2, cfg["in_channels"], *cfg["size"], dtype=torch.float64)
    assert rel_err(layer.decompose()(x), projected(x)) <= 1e-10


@settings(max_examples=100)
@given(cfg=conv_configs(), dtype=st.sampled_from([torch.float64, torch.float32]), seed=st.integers(0, 2**31 - 1))
def test_direct_training_form_equals_dense_conv_with_composed_kernel(cfg, dtype, seed):
    torch.manual_seed(seed)
    dec = build(DECOMPOSED[cfg["nd"]], cfg, dtype)
    basis = StructuredBasis(cfg["in_channels"] // cfg["groups"], cfg["kernel_size"], cfg["c"], cfg["n"])
    dense = build(DENSE[cfg["nd"]], {k: v for k, v in cfg.items() if k not in ("c", "n")}, dtype)
    with torch.no_grad():
        dense.weight.copy_(basis.compose(dec.weight))
        if dense.bias is not None:
            dense.bias.copy_(dec.bias)
    x = torch.randn(2, cfg["in_channels"], *cfg["size"], dtype=dtype)
    assert rel_err(dec(x), float64_reference(dense, x)) <= TOL[dtype]


def test_direct_training_gradients_match_dense_reparameterization():
    torch.manual_seed(0)
    dec = sc.DecomposedConv2d(6, 4, 3, padding=1, c=3, n=2, dtype=torch.float64)
    x = torch.randn(2, 6, 7, 7, dtype=torch.float64)
    dec(x).square().sum().backward()
    basis = StructuredBasis(6, (3, 3), 3, (2, 2))
    alpha = dec.weight.detach().clone().requires_grad_(True)
    y = torch.nn.functional.conv2d(x, basis.compose(alpha), dec.bias.detach(), padding=1)
    y.square().sum().backward()
    torch.testing.assert_close(dec.weight.grad, alpha.grad)


def test_direct_training_init_keeps_output_scale():
    torch.manual_seed(0)
    dense = nn.Conv2d(64, 64, 3, padding=1, bias=False)
    dec = sc.DecomposedConv2d(64, 64, 3, padding=1, bias=False, c=32, n=3)
    x = torch.randn(8, 64, 16, 16)
    ratio = dec(x).std() / dense(x).std()
    assert 0.5 < ratio < 2.0, ratio


@settings(max_examples=100)
@given(
    in_features=st.integers(1, 40),
    out_features=st.integers(1, 10),
    bias=st.booleans(),
    lead=st.lists(st.integers(1, 3), max_size=2),
    dtype=st.sampled_from([torch.float64, torch.float32]),
    data=st.data(),
)
def test_linear_decomposition_is_exact(in_features, out_features, bias, lead, dtype, data):
    r = data.draw(st.integers(1, in_features))
    layer = sc.StructuredLinear(in_features, out_features, bias, dtype=dtype, r=r).project_()
    dec = layer.decompose()
    x = torch.randn(4, *lead, in_features, dtype=dtype)
    expected = float64_reference(layer, x)
    assert rel_err(dec(x), expected) <= TOL[dtype]
    assert rel_err(dec.recompose()(x), expected) <= TOL[dtype]
    assert dec.linear.weight.shape == (out_features, r)


@settings(max_examples=100)
@given(cfg=conv_configs(), dtype=st.sampled_from([torch.float64, torch.float32]), data=st.data())
def test_composite_decomposition_is_exact(cfg, dtype, data):
    per_group = cfg["in_channels"] // cfg["groups"]
    shape = (per_group, *cfg["kernel_size"])
    numel = int(torch.tensor(shape).prod())
    m = data.draw(st.integers(1, numel))
    # random binary masks, made independent by giving mask i a private element i (after a shuffle)
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    masks = (torch.rand(m, numel, generator=gen) < 0.4).double()
    masks[:, :m] = 0
    masks[torch.arange(m), torch.arange(m)] = 1
    masks = masks[:, torch.randperm(numel, generator=gen)].reshape(m, *shape)
    kwargs = {k: v for k, v in cfg.items() if k not in ("nd", "size", "c", "n")}
    layer = COMPOSITE[cfg["nd"]](**kwargs, basis=masks, dtype=dtype).project_()
    dec = layer.decompose()
    x = torch.randn(2, cfg["in_channels"], *cfg["size"], dtype=dtype)
    expected = float64_reference(layer, x)
    assert rel_err(dec(x), expected) <= TOL[dtype]
    assert rel_err(dec.recompose()(x), expected) <= TOL[dtype]


def test_structured_layers_are_drop_in_subclasses():
    conv = sc.StructuredConv2d(8, 16, 3, 2, 1, bias=False, c=4, n=3)
    assert isinstance(conv, nn.Conv2d)
    dense = nn.Conv2d(8, 16, 3, 2, 1, bias=False)
    assert conv.state_dict().keys() == dense.state_dict().keys()
    conv.load_state_dict(dense.state_dict())  # existing checkpoints load
    x = torch.randn(1, 8, 9, 9)
    torch.testing.assert_close(conv(x), dense(x))
    lin = sc.StructuredLinear(10, 3, r=5)
    assert isinstance(lin, nn.Linear) and lin.state_dict().keys() == nn.Linear(10, 3).state_dict().keys()


def test_from_dense_shares_parameters_and_keeps_function():
    dense = nn.Conv2d(6, 4, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2, padding_mode="reflect")
    dense.eval()
    conv = sc.StructuredConv2d.from_dense(dense, c=2, n=(2, 3))
    assert conv.weight is dense.weight and conv.bias is dense.bias
    assert not conv.training
    x = torch.randn(2, 6, 8, 11)
    torch.testing.assert_close(conv(x), dense(x))


def test_project_reaches_structure_and_is_idempotent():
    conv = sc.StructuredConv2d(8, 4, 3, c=4, n=2, dtype=torch.float64)
    assert conv.structure_error() > 0.1
    conv.project_()
    w = conv.weight.detach().clone()
    assert conv.structure_error() < 1e-12
    conv.project_()
    torch.testing.assert_close(conv.weight.detach(), w)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: sc.StructuredConv2d(8, 4, 3, c=9, n=2), r"StructuredConv2d: c=9 .*C=8"),
        (lambda: sc.StructuredConv2d(8, 4, 3, groups=2, c=5, n=2), r"c=5 .*C=4"),
        (lambda: sc.StructuredConv2d(8, 4, 3, c=4, n=4), r"n=4 but kernel size 3"),
        (lambda: sc.StructuredConv2d(8, 4, (3, 3), c=4, n=(2, 2, 2)), r"n=\(2, 2, 2\) must have 2 entries"),
        (lambda: sc.StructuredConv1d(8, 4, 3, c=0, n=2), r"c=0"),
        (lambda: sc.StructuredConv2d(8, 4, 3, c=2.5, n=2), r"c=2.5 must be an int"),
        (lambda: sc.StructuredLinear(10, 3, r=11), r"StructuredLinear: c=11"),
        (lambda: sc.DecomposedConv2d(8, 4, 3, c=4, n=0), r"DecomposedConv2d: .*n=0"),
        (lambda: sc.DecomposedConv2d(8, 4, 3, stride=2, padding="same", c=4, n=2), r"'same' requires stride 1"),
        (lambda: sc.DecomposedConv2d(8, 4, 3, padding_mode="mirror", c=4, n=2), r"padding_mode='mirror'"),
        (lambda: sc.CompositeConv2d(2, 4, 3, basis=torch.ones(1, 2, 2, 2)), r"CompositeConv2d: basis masks have shape"),
        (lambda: sc.CompositeConv2d(1, 4, 2, basis=torch.full((1, 1, 2, 2), 2.0)), r"binary"),
    ],
)
def test_bad_layer_arguments_raise_clear_value_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_repr_mentions_structure():
    conv = sc.StructuredConv2d(8, 4, 3, c=4, n=2)
    assert "c=4" in repr(conv) and "n=(2, 2)" in repr(conv)
    dec = conv.decompose()
    assert "SumPool" in repr(dec) and "channel_window=5" in repr(dec)


def test_orthonormal_parametrization_keeps_function_and_projects_gradient_steps():
    """SGD on beta (alpha = (A^T A)^{-1/2} beta) is dense SGD with the gradient projected onto the subspace."""
    from structconv.layers import deorthonormalize_, orthonormalize_

    torch.manual_seed(0)
    layer = sc.DecomposedConv2d(6, 4, 3, stride=2, padding=1, c=3, n=2, dtype=torch.float64)
    x = torch.randn(2, 6, 9, 9, dtype=torch.float64)
    before = layer(x)
    w_before = layer.basis.compose(layer.weight.detach())
    orthonormalize_(layer)
    assert rel_err(layer(x), before) <= 1e-12
    assert {n for n, _ in layer.named_parameters()} == {"conv.bias", "conv.parametrizations.weight.original"}

    # the dense gradient at the same kernel
    w = w_before.clone().requires_grad_(True)
    torch.nn.functional.conv2d(x, w, layer.bias.detach(), stride=2, padding=1).square().sum().backward()
    lr = 1e-3
    opt = torch.optim.SGD([layer.conv.parametrizations.weight.original], lr=lr)
    layer(x).square().sum().backward()
    opt.step()
    w_after = layer.basis.compose(layer.weight.detach())
    expected = w_before - lr * layer.basis.project(w.grad)
    torch.testing.assert_close(w_after, expected, rtol=1e-10, atol=1e-12)

    deorthonormalize_(layer)
    assert {n for n, _ in layer.named_parameters()} == {"conv.weight", "conv.bias"}
    assert layer.basis.compose(layer.weight.detach()).allclose(w_after)


def test_direct_training_init_is_the_projection_of_a_dense_init():
    torch.manual_seed(0)
    for layer in (sc.DecomposedConv2d(8, 16, 3, c=4, n=2), sc.DecomposedLinear(64, 10, r=32)):
        basis = layer.basis
        # alpha = A^+ W0 lies in the range of A^+: composing and re-projecting changes nothing
        alpha = layer.weight.detach()
        torch.testing.assert_close(basis.coefficients(basis.compose(alpha)), alpha, rtol=1e-5, atol=1e-6)
        dense_bound = 1 / math.sqrt(math.prod(basis.full_shape))  # kaiming_uniform(a=sqrt 5) bound
        assert basis.compose(alpha).abs().max() <= dense_bound * 1.0001
