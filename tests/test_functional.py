import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from structconv.basis import StructuredBasis
from structconv.functional import box_sum, conv_padding, structured_conv, sum_pool

from .conftest import TOL, rel_err

DTYPES = st.sampled_from([torch.float64, torch.float32])


def naive_box_sum(x, dim, window, dilation, stride):
    x = x.movedim(dim, -1)
    length = x.shape[-1]
    out_len = (length - (window - 1) * dilation - 1) // stride + 1
    out = torch.stack([sum(x[..., i * stride + k * dilation] for k in range(window)) for i in range(out_len)], -1)
    return out.movedim(-1, dim)


@given(
    length=st.integers(1, 40),
    window=st.integers(1, 12),
    dilation=st.integers(1, 3),
    stride=st.integers(1, 4),
    dim=st.integers(0, 2),
    dtype=DTYPES,
    seed=st.integers(0, 2**31 - 1),
)
def test_box_sum_matches_naive(length, window, dilation, stride, dim, dtype, seed):
    span = (window - 1) * dilation + 1
    if span > length:
        return
    shape = [3, 4, 5]
    shape[dim] = length
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    got = box_sum(x, dim, window, dilation, stride)
    want = naive_box_sum(x.double(), dim, window, dilation, stride)
    assert got.shape == want.shape
    assert rel_err(got, want) <= TOL[dtype]


def test_box_sum_rejects_window_larger_than_input():
    with pytest.raises(ValueError, match="spans 5 elements"):
        box_sum(torch.zeros(2, 4), 1, 3, dilation=2)


def test_box_sum_is_differentiable():
    x = torch.randn(2, 9, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: box_sum(t, 1, 6, 1, 2), (x,))
    assert torch.autograd.gradcheck(lambda t: box_sum(t, 1, 2, 2, 1), (x,))


def reference_sum_pool(x, channel_window, window, groups, dilation, stride):
    """The pool as a grouped convolution with a kernel of ones (Sec. 5: sum-pool == conv with 1)."""
    nd = len(window)
    per_group = x.shape[1] // groups
    c = per_group - channel_window + 1
    # output channel g*c + j of group g reads input channels j .. j+channel_window-1 of that group
    weight = torch.zeros(groups * c, per_group, *window, dtype=x.dtype)
    for j in range(c):
        weight[j::c, j : j + channel_window] = 1
    conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    return conv(x, weight, None, stride, 0, dilation, groups)


@given(
    nd=st.integers(1, 3),
    groups=st.integers(1, 3),
    per_group=st.integers(1, 9),
    dtype=DTYPES,
    data=st.data(),
)
def test_sum_pool_matches_conv_with_ones(nd, groups, per_group, dtype, data):
    channel_window = data.draw(st.integers(1, per_group))
    window = tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(data.draw(st.integers(1, 2)) for _ in range(nd))
    stride = tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
    size = tuple(data.draw(st.integers((w - 1) * d + 1, 7)) for w, d in zip(window, dilation))
    x = torch.randn(2, groups * per_group, *size, dtype=dtype)
    got = sum_pool(x, channel_window, window, groups=groups, dilation=dilation, stride=stride)
    want = reference_sum_pool(x.double(), channel_window, window, groups, dilation, stride)
    assert got.shape == want.shape
    assert rel_err(got, want) <= TOL[dtype]


def test_sum_pool_validates_arguments():
    x = torch.zeros(1, 6, 5, 5)
    with pytest.raises(ValueError, match="divisible by groups"):
        sum_pool(x, 1, (1, 1), groups=4)
    with pytest.raises(ValueError, match=r"channel_window=4 must be in \[1, 3\]"):
        sum_pool(x, 4, (1, 1), groups=2)
    with pytest.raises(ValueError, match="4-D input"):
        sum_pool(torch.zeros(1, 6, 5), 1, (1, 1))


def test_conv_padding_same_is_asymmetric_like_torch():
    assert conv_padding("same", (4,), (1,), (1,)) == ((1, 2),)
    assert conv_padding("valid", (3, 3), (1, 1), (1, 1)) == ((0, 0), (0, 0))
    with pytest.raises(ValueError, match="stride 1"):
        conv_padding("same", (3,), (1,), (2,))
    with pytest.raises(ValueError, match="'full'"):
        conv_padding("full", (3,), (1,), (1,))


@given(data=st.data(), dtype=DTYPES)
def test_structured_conv_function_equals_dense_conv(data, dtype):
    nd = data.draw(st.integers(1, 3))
    groups = data.draw(st.integers(1, 2))
    per_group = data.draw(st.integers(1, 5))
    kernel = tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
    c = data.draw(st.integers(1, per_group))
    n = tuple(data.draw(st.integers(1, k)) for k in kernel)
    stride = tuple(data.draw(st.integers(1, 2)) for _ in range(nd))
    dilation = tuple(data.draw(st.integers(1, 2)) for _ in range(nd))
    padding = tuple(data.draw(st.integers(0, 2)) for _ in range(nd))
    size = tuple(data.draw(st.integers((k - 1) * d + 1, 7)) for k, d in zip(kernel, dilation))
    basis = StructuredBasis(per_group, kernel, c, n)
    alpha = torch.randn(2 * groups, c, *n, dtype=dtype)
    bias = torch.randn(2 * groups, dtype=dtype)
    x = torch.randn(2, groups * per_group, *size, dtype=dtype)
    got = structured_conv(x, alpha, bias, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups)
    conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    want = conv(x.double(), basis.compose(alpha.double()), bias.double(), stride, padding, dilation, groups)
    assert rel_err(got, want) <= TOL[dtype]
