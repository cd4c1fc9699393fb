"""The speed paths of the deployment form compute the same function as the reference paths."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import structconv as sc
from structconv import pooling
from structconv.functional import box_sum, channel_band_matrix, channel_sum_matmul, padded_box_sum

from .conftest import TOL, float64_reference, rel_err
from .test_layers import STRUCTURED, build, conv_configs

FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}


def _reference_channel_pool(x, window, groups):
    b, ch = x.shape[:2]
    g = x.reshape(b, groups, ch // groups, *x.shape[2:])
    c = ch // groups - window + 1
    return torch.stack([g[:, :, j : j + window].sum(2) for j in range(c)], 2).reshape(b, groups * c, *x.shape[2:])


@pytest.mark.parametrize("channels,window,groups", [(8, 5, 1), (64, 33, 1), (12, 4, 3), (16, 5, 2), (7, 7, 1)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_channel_sum_matmul_equals_window_sums(channels, window, groups, layout):
    torch.manual_seed(0)
    x = torch.randn(2, channels, 5, 6, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    m = channel_band_matrix(channels, window, groups, dtype=torch.float64)
    assert set(m.unique().tolist()) <= {0.0, 1.0} and m.sum() == m.shape[1] * window
    got = channel_sum_matmul(x, m)
    assert rel_err(got, _reference_channel_pool(x, window, groups)) < 1e-12
    if layout == "channels_last":  # the GEMM keeps the layout: nothing to copy before the conv
        assert got.is_contiguous(memory_format=torch.channels_last)
    strided = channel_sum_matmul(x, m, (2, 3))
    assert rel_err(strided, _reference_channel_pool(x, window, groups)[:, :, ::2, ::3]) < 1e-12


@pytest.mark.parametrize("window,stride", [(5, 1), (7, 2), (9, 3), (6, 1)])
def test_cumsum_box_sum_matches_direct_sum(window, stride):
    x = torch.randn(3, 20, 4, dtype=torch.float64)
    expected = torch.stack([x[:, i * stride : i * stride + window].sum(1) for i in range((20 - window) // stride + 1)], 1)
    with torch.no_grad():
        assert rel_err(box_sum(x, 1, window, 1, stride), expected) < 1e-12
    y = x.clone().requires_grad_()
    out = box_sum(y, 1, window, 1, stride)  # autograd path
    assert rel_err(out, expected) < 1e-12
    out.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


@settings(max_examples=120)
@given(cfg=conv_configs(max_nd=3), method=st.sampled_from(["auto", *pooling.BACKENDS["channel"]]),
       channels_last=st.booleans(), seed=st.integers(0, 2**31 - 1))  # fmt: skip
def test_decomposed_layer_fast_paths_are_exact(cfg, method, channels_last, seed):
    """Every channel-pool method, in NCHW and channels_last, equals the projected dense layer."""
    torch.manual_seed(seed)
    layer = build(STRUCTURED[cfg["nd"]], cfg, torch.float32)
    layer.project_()
    dec = layer.decompose()
    dec.pool.channel_method = method
    x = torch.randn(2, cfg["in_channels"], *cfg["size"])
    expected = float64_reference(layer, x)
    if channels_last and x.dim() in FORMATS:
        x = x.contiguous(memory_format=FORMATS[x.dim()])
        dec = dec.to(memory_format=FORMATS[x.dim()])
    with torch.inference_mode():
        got = dec(x)
    assert rel_err(got, expected) <= TOL[torch.float32]


@pytest.mark.parametrize("channels,c,stride", [(64, 32, 1), (32, 8, 2), (48, 16, 1)])
def test_wide_channel_pools_use_the_gemm_and_are_exact(channels, c, stride):
    torch.manual_seed(1)
    layer = sc.StructuredConv2d(channels, 24, 3, stride=stride, padding=1, c=c, n=3).project_()
    dec = layer.decompose()
    x = torch.randn(2, channels, 9, 9)
    assert dec.pool.backends(x)[0].name == "matmul"
    expected = float64_reference(layer, x)
    for fmt in (torch.contiguous_format, torch.channels_last):
        d = dec.to(memory_format=fmt)
        with torch.inference_mode():
            assert rel_err(d(x.contiguous(memory_format=fmt)), expected) <= TOL[torch.float32]


def test_channel_method_validation():
    pool = sc.SumPool(3, (1, 1))
    with pytest.raises(ValueError, match="channel_method"):
        pool.channel_method = "fast"


def test_gemm_pool_follows_dtype_and_keeps_state_dict():
    layer = sc.StructuredConv2d(16, 8, 3, padding=1, c=4, n=3, dtype=torch.float64).project_()
    dec = layer.decompose()
    assert not any("matrix" in k for k in dec.state_dict())
    x = torch.randn(1, 16, 5, 5, dtype=torch.float64)
    assert rel_err(dec(x), layer(x)) < 1e-10
    dec32 = dec.float()
    assert rel_err(dec32(x.float()), layer(x)) < 1e-5


@given(nd=st.integers(1, 3), data=st.data(), dtype=st.sampled_from([torch.float64, torch.float32]),
       channels_last=st.booleans(), method=st.sampled_from(["pool", "conv"]))  # fmt: skip
def test_padded_box_sum_equals_box_sums_of_the_padded_input(nd, data, dtype, channels_last, method):
    """One kernel (avg_pool with divisor 1, or a depthwise conv with ones) == F.pad then
    box_sum along every axis."""
    window = [data.draw(st.integers(1, 4)) for _ in range(nd)]
    padding = [data.draw(st.integers(0, w // 2)) for w in window]
    stride = [data.draw(st.integers(1, 3)) for _ in range(nd)]
    size = [data.draw(st.integers(max(1, w - 2 * p), 9)) for w, p in zip(window, padding)]
    x = torch.randn(2, 3, *size, dtype=dtype, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99))))
    if channels_last and x.dim() in FORMATS:
        x = x.contiguous(memory_format=FORMATS[x.dim()])
    want = F.pad(x.double(), [p for q in reversed(padding) for p in (q, q)])
    for a in range(nd):
        want = box_sum(want, 2 + a, window[a], 1, stride[a])
    got = padded_box_sum(x, window, stride, padding, method)
    assert got.dtype == dtype and got.shape == want.shape
    assert rel_err(got, want) <= TOL[dtype]


@pytest.mark.parametrize("method", ["pool", "conv"])
def test_padded_box_sum_is_differentiable(method):
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: padded_box_sum(t, (2, 3), (1, 2), (1, 1), method), (x,))
    with pytest.raises(ValueError, match="method='fft'"):
        padded_box_sum(x, (2, 3), (1, 2), (1, 1), "fft")


@pytest.mark.parametrize("method", ["auto", "pool", "conv"])
@pytest.mark.parametrize("channels,c", [(16, 16), (96, 96), (32, 12)])
def test_spatial_methods_of_a_decomposed_layer_are_exact(method, channels, c):
    torch.manual_seed(2)
    layer = sc.StructuredConv2d(channels, 8, 3, padding=1, c=c, n=2).project_()
    dec = layer.decompose()
    dec.pool.spatial_method = method
    x = torch.randn(2, channels, 7, 7)
    expected = float64_reference(layer, x)
    for fmt in (torch.contiguous_format, torch.channels_last):
        with torch.inference_mode():
            got = dec.to(memory_format=fmt)(x.contiguous(memory_format=fmt))
        assert rel_err(got, expected) <= TOL[torch.float32]
    with pytest.raises(ValueError, match="spatial_method='fast'"):
        dec.pool.spatial_method = "fast"


@pytest.mark.parametrize(
    "kwargs,applies",
    [
        (dict(kernel_size=3, padding=1, n=2), True),  # ResNet 3x3 -> 2x2 pool + 2x2 conv
        (dict(kernel_size=3, padding=1, n=2, stride=2), True),
        (dict(kernel_size=5, padding=2, n=1), True),
        (dict(kernel_size=3, padding=1, n=2, padding_mode="reflect"), False),
        (dict(kernel_size=3, padding=2, n=2, dilation=2), False),
        (dict(kernel_size=4, padding="same", n=2), False),  # asymmetric 'same' padding
        (dict(kernel_size=3, padding=1, n=3, c=4), False),  # no spatial window: channel pool only
    ],
)
def test_pooling_kernel_is_used_exactly_where_it_applies(kwargs, applies):
    torch.manual_seed(0)
    kwargs = {"c": 8, **kwargs}
    layer = sc.StructuredConv2d(8, 6, **kwargs).project_()
    dec = layer.decompose()
    assert (dec.pool.kernel_padding is not None) == applies
    x = torch.randn(2, 8, 11, 11)
    with torch.inference_mode():
        assert rel_err(dec(x), float64_reference(layer, x)) <= TOL[torch.float32]
