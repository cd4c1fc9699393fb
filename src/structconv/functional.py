"""Plain functions behind the layers: sum-pooling and the geometry of a decomposition.

A structured convolution (Sec. 4.1) is ``conv(x, W) == conv(sum_pool(pad(x)), alpha)``.
With stride ``s``, dilation ``d`` and kernel ``N = n + w - 1`` on an axis (``w`` the pool
window), output ``y`` reads pooled positions ``y*s + l*d`` for ``l < n`` only, so the pool is
evaluated on the sub-grid of step ``t = gcd(s, d)`` (``t = s`` when ``n == 1``) and the small
conv then runs with stride ``s/t`` and dilation ``d/t``: nothing is pooled that is not read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["box_sum", "padded_box_sum", "sum_pool", "channel_band_matrix", "channel_sum_matmul", "DecompositionGeometry", "conv_padding", "structured_conv"]

# Windows up to this size are summed from shifted views (window - 1 adds, no cancellation);
# larger ones use a cumulative sum (about 2 passes whatever the window).
_CUMSUM_MIN_WINDOW = 5


def _axis_slice(x: Tensor, dim: int, start: int, length: int, step: int) -> Tensor:
    """View of ``length`` elements of ``x`` along ``dim``: ``start, start+step, ...``."""
    index = [slice(None)] * dim + [slice(start, start + (length - 1) * step + 1, step)]
    return x[tuple(index)]


def box_sum(x: Tensor, dim: int, window: int, dilation: int = 1, stride: int = 1) -> Tensor:
    """Sliding-window sum along one axis: ``out[i] = sum_{k < window} x[i*stride + k*dilation]``.

    Exact up to float rounding and differentiable.  The output has
    ``(L - (window-1)*dilation - 1) // stride + 1`` entries along ``dim``.
    """
    dim = dim % x.dim()
    length = x.shape[dim]
    span = (window - 1) * dilation + 1
    if window < 1 or dilation < 1 or stride < 1:
        raise ValueError(f"box_sum needs window, dilation, stride >= 1, got {window}, {dilation}, {stride}")
    if span > length:
        raise ValueError(
            f"box_sum window spans {span} elements (window={window}, dilation={dilation}) "
            f"but the input has only {length} along dim {dim}"
        )
    out_len = (length - span) // stride + 1
    if window == 1:
        return _axis_slice(x, dim, 0, out_len, stride)
    if window < _CUMSUM_MIN_WINDOW or dilation != 1:
        out = _axis_slice(x, dim, 0, out_len, stride)
        for k in range(1, window):
            out = out + _axis_slice(x, dim, k * dilation, out_len, stride)
        return out
    # Cumulative sum S; out[i] = S[i*t + w - 1] - S[i*t - 1], with S[-1] = 0.  The result is
    # written into one fresh tensor (no concatenation pass).
    cum = torch.cumsum(x, dim)
    hi = _axis_slice(cum, dim, window - 1, out_len, stride)
    if out_len == 1:
        return hi
    lo = _axis_slice(cum, dim, stride - 1, out_len - 1, stride)
    if (torch.is_grad_enabled() and x.requires_grad) or _tracing():
        # autograd, tracers and exporters want out-of-place ops
        return torch.cat((hi.narrow(dim, 0, 1), hi.narrow(dim, 1, out_len - 1) - lo), dim)
    out = torch.empty_like(hi)
    out.narrow(dim, 0, 1).copy_(hi.narrow(dim, 0, 1))
    torch.sub(hi.narrow(dim, 1, out_len - 1), lo, out=out.narrow(dim, 1, out_len - 1))
    return out


def padded_box_sum(
    x: Tensor,
    window: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    method: str = "pool",
    ones: Tensor | None = None,
) -> Tensor:
    """Spatial sum-pool of ``x`` zero-padded by ``padding`` on both sides of each axis, in one
    kernel; the padded input is never materialized.

    ``method='pool'`` is ``avg_pool`` with ``count_include_pad=True`` and
    ``divisor_override=1``; ``method='conv'`` is a depthwise convolution with a kernel of ones
    (oneDNN runs it up to 3x faster than the pooling kernel on narrow tensors, e.g. 16
    channels).  Either way each output is a plain sum of ``prod(window)`` inputs, so the result
    equals ``box_sum`` along every axis of ``F.pad(x, ...)`` up to summation order.  Needs
    ``padding[a] <= window[a] // 2`` (a pooling-kernel limit; see :func:`pooling_kernel_applies`).
    1-D inputs pool as 2-D with a unit axis (``avg_pool1d`` has no ``divisor_override``).
    ``ones`` is the ``(C, 1, *window)`` kernel of ones for ``'conv'``, if the caller keeps one
    (a module attribute is a constant to tracers and exporters; one built here from
    ``x.shape`` is not).
    """
    nd = len(window)
    if method == "conv":
        if ones is None:
            ones = torch.ones(x.shape[1], 1, *window, dtype=x.dtype, device=x.device)
        return _CONV[nd](x, ones, None, tuple(stride), tuple(padding), 1, x.shape[1])
    if method != "pool":
        raise ValueError(f"padded_box_sum: method={method!r} must be 'pool' or 'conv'")
    # ONNX AveragePool has no divisor and the exporters drop divisor_override silently: export
    # the mean and scale it back (exact for power-of-two windows, else about 1 ulp).
    exporting = _tracing() and torch.onnx.is_in_onnx_export()  # cheap test first (eager hot path)
    divisor = None if exporting else 1
    if nd == 1:
        out = F.avg_pool2d(x.unsqueeze(2), (1, window[0]), (1, stride[0]), (0, padding[0]),
                           count_include_pad=True, divisor_override=divisor).squeeze(2)  # fmt: skip
    elif nd == 3 and any(size < w for size, w in zip(x.shape[2:], window)):
        # avg_pool3d rejects inputs smaller than the window even when padding covers it
        padded = F.pad(x, [p for q in reversed(padding) for p in (q, q)])
        return _sum_pool(padded, 1, tuple(window), 1, (1,) * nd, tuple(stride), None)
    else:
        pool = F.avg_pool2d if nd == 2 else F.avg_pool3d
        out = pool(x, tuple(window), tuple(stride), tuple(padding), count_include_pad=True, divisor_override=divisor)
    return out * float(math.prod(window)) if exporting else out


def pooling_kernel_applies(
    window: Sequence[int], dilation: Sequence[int], pad: Sequence[int], padding_mode: str
) -> tuple[int, ...] | None:
    """Symmetric per-axis zero padding for :func:`padded_box_sum`, or ``None`` where it does not
    apply (dilation, non-zero padding modes, asymmetric or too wide padding, no spatial window,
    more than 3 spatial axes).  ``pad`` is an ``F.pad`` list (last axis first)."""
    nd = len(window)
    if not 1 <= nd <= 3 or all(w == 1 for w in window) or any(d != 1 for d in dilation):
        return None
    if pad and padding_mode != "zeros":
        return None
    pairs = [(pad[2 * (nd - 1 - a)], pad[2 * (nd - 1 - a) + 1]) if pad else (0, 0) for a in range(nd)]
    if any(before != after or before > w // 2 for (before, after), w in zip(pairs, window)):
        return None
    return tuple(before for before, _ in pairs)


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()


def channel_band_matrix(
    channels: int, channel_window: int, groups: int = 1, *, dtype: torch.dtype | None = None, device=None
) -> Tensor:
    """0/1 matrix ``M`` of shape ``(C, groups*c)`` with ``x @ M`` = the channel sum-pool of ``x``.

    Column ``g*c + j`` has ones on rows ``g*Cg + j ... g*Cg + j + channel_window - 1``
    (``Cg = C // groups``, ``c = Cg - channel_window + 1``): block-diagonal over groups.
    """
    per_group = channels // groups
    c = per_group - channel_window + 1
    rows = torch.arange(per_group, device=device).unsqueeze(1)
    cols = torch.arange(c, device=device).unsqueeze(0)
    band = ((rows >= cols) & (rows < cols + channel_window)).to(dtype or torch.get_default_dtype())
    if groups == 1:
        return band
    return torch.block_diag(*([band] * groups))


def _channels_innermost(x: Tensor) -> bool:
    """True when ``x`` (B, C, *spatial) is dense with channels innermost (channels_last)."""
    return x.dim() >= 3 and x.permute(0, *range(2, x.dim()), 1).is_contiguous()


def channel_sum_matmul(x: Tensor, matrix: Tensor, stride: Sequence[int] = ()) -> Tensor:
    """Channel sum-pool as one GEMM with the 0/1 ``matrix`` of :func:`channel_band_matrix`.

    A channels_last input is viewed as ``(B*H*W, C)`` and multiplied in place of memory: the
    result is channels_last and nothing is copied.  A contiguous (NCHW) input is multiplied as
    ``M^T @ x.view(B, C, H*W)``.  With a ``stride`` (or another layout) it is a 1x1
    convolution with the same 0/1 kernel, evaluated at the kept positions only.  Each output is a sum of ``channel_window`` inputs with
    weight 1, so the result is exact up to float summation order.
    """
    b, ch = x.shape[:2]
    spatial = x.shape[2:]
    out_ch = matrix.shape[1]
    if any(s != 1 for s in stride) or not (x.is_contiguous() or _channels_innermost(x)):
        # Strided or irregular input: a 1x1 convolution with the 0/1 kernel reads the kept
        # positions directly instead of copying them out first.
        weight = matrix.t().reshape(out_ch, ch, *([1] * len(spatial)))
        strides = tuple(stride) or (1,) * len(spatial)
        return _CONV[len(spatial)](x, weight, None, strides)
    nd = len(spatial)
    if _channels_innermost(x):
        # explicit permutations (no negative axes: they export to ONNX cleanly)
        flat = x.permute(0, *range(2, nd + 2), 1).reshape(-1, ch)
        y = torch.mm(flat, matrix)
        return y.view(b, *spatial, out_ch).permute(0, nd + 1, *range(1, nd + 1))
    y = torch.matmul(matrix.t(), x.reshape(b, ch, -1))
    return y.view(b, out_ch, *spatial)


def sum_pool(
    x: Tensor,
    channel_window: int,
    window: Sequence[int],
    *,
    groups: int = 1,
    dilation: Sequence[int] | int = 1,
    stride: Sequence[int] | int = 1,
) -> Tensor:
    """Sum-pooling over channels (stride 1, within each group) and spatial axes.

    ``x`` has shape ``(B, C, *spatial)`` with ``len(window)`` spatial axes.  Output channel
    ``g*c + j`` sums input channels ``g*Cg + j ... g*Cg + j + channel_window - 1`` of group
    ``g`` (``Cg = C // groups``, ``c = Cg - channel_window + 1``); spatial axis ``a`` sums
    ``window[a]`` taps spaced by ``dilation[a]`` and is evaluated every ``stride[a]`` positions.
    This is the ``1_{(C-c+1) x (N-n+1) x ...}`` convolution of Sec. 5, without multiplications.
    """
    nd = len(window)
    dilation = _ntuple(dilation, nd, "dilation")
    stride = _ntuple(stride, nd, "stride")
    if x.dim() != nd + 2:
        raise ValueError(f"sum_pool with a {nd}-D window expects a {nd + 2}-D input, got shape {tuple(x.shape)}")
    channels = x.shape[1]
    if groups < 1 or channels % groups:
        raise ValueError(f"input channels ({channels}) must be divisible by groups ({groups})")
    per_group = channels // groups
    if not 1 <= channel_window <= per_group:
        raise ValueError(f"channel_window={channel_window} must be in [1, {per_group}] (channels per group)")
    return _sum_pool(x, channel_window, tuple(window), groups, dilation, stride, None)


def _sum_pool(
    x: Tensor,
    channel_window: int,
    window: tuple[int, ...],
    groups: int,
    dilation: tuple[int, ...],
    stride: tuple[int, ...],
    channel_matrix: Tensor | None,
) -> Tensor:
    """:func:`sum_pool` without argument checks; ``channel_matrix`` (from
    :func:`channel_band_matrix`) selects the GEMM channel pool."""
    nd = len(window)
    per_group = x.shape[1] // groups
    # Apply the per-axis sums in the order that shrinks the tensor fastest (cheapest first).
    ops = []
    for a in range(nd):
        if window[a] == 1 and stride[a] == 1:
            continue
        size = x.shape[2 + a]
        span = (window[a] - 1) * dilation[a] + 1
        out = max((size - span) // stride[a] + 1, 0)
        ops.append((out / size, 2 + a))
    if channel_window > 1:
        ops.append(((per_group - channel_window + 1) / per_group, 1))
    # The GEMM reads the whole input once whatever the window: run it after the spatial sums
    # that shrink the tensor, so it multiplies as few rows as possible.
    gemm_last = channel_matrix is not None and channel_window > 1
    ops = _ordered(ops, gemm_last)
    if channel_matrix is not None and channel_window > 1 and all(w == 1 for w in window):
        # Only strided subsampling besides the channel pool (e.g. a 1x1 stride-2 conv): one
        # GEMM-like pass that reads just the kept positions.
        return channel_sum_matmul(x, channel_matrix, stride)
    for _, dim in ops:
        if dim == 1:
            if channel_matrix is not None:
                x = channel_sum_matmul(x, channel_matrix)
            else:
                x = _channel_box_sum(x, channel_window, groups)
        else:
            a = dim - 2
            x = box_sum(x, dim, window[a], dilation[a], stride[a])
    return x


def _ordered(ops: list, gemm_last: bool) -> list:
    """``ops`` sorted by (channel op last if ``gemm_last``, shrink ratio, dim): an insertion
    sort with plain comparisons, which torch.compile traces (``list.sort`` on size-derived
    keys is a graph break)."""
    out: list = []
    for op in ops:
        key = (gemm_last and op[1] == 1, op[0], op[1])
        i = len(out)
        while i > 0:
            prev = out[i - 1]
            pkey = (gemm_last and prev[1] == 1, prev[0], prev[1])
            if (pkey[0], pkey[1], pkey[2]) <= (key[0], key[1], key[2]):
                break
            i -= 1
        out.insert(i, op)
    return out


def _channel_box_sum(x: Tensor, window: int, groups: int) -> Tensor:
    if window == 1:
        return x
    if groups == 1:
        return box_sum(x, 1, window)
    b, ch = x.shape[:2]
    grouped = x.reshape(b, groups, ch // groups, *x.shape[2:])
    pooled = box_sum(grouped, 2, window)
    return pooled.reshape(b, -1, *x.shape[2:])


def _ntuple(value, nd: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * nd
    value = tuple(int(v) for v in value)
    if len(value) != nd:
        raise ValueError(f"{name}={value} must have {nd} entries")
    return value


def conv_padding(
    padding, kernel_size: Sequence[int], dilation: Sequence[int], stride: Sequence[int]
) -> tuple[tuple[int, int], ...]:
    """Explicit ``(before, after)`` padding per axis for an ``nn.ConvNd`` ``padding`` value.

    Handles ints, tuples, ``'valid'`` and ``'same'`` (which, like PyTorch, puts the odd extra
    element after).
    """
    nd = len(kernel_size)
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * nd
        if padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError(f"padding='same' requires stride 1, got stride={tuple(stride)}")
            pads = []
            for k, d in zip(kernel_size, dilation):
                total = d * (k - 1)
                pads.append((total // 2, total - total // 2))
            return tuple(pads)
        raise ValueError(f"padding={padding!r} must be an int, a tuple, 'same' or 'valid'")
    return tuple((p, p) for p in _ntuple(padding, nd, "padding"))


@dataclass(frozen=True)
class DecompositionGeometry:
    """How a structured conv's options map onto pad -> sum-pool -> small conv.

    ``pad`` is an ``F.pad`` list (last axis first) applied before pooling, with
    ``padding_mode``; zero padding along axes whose pool is the identity is instead left to
    the small conv (``conv_padding``), which avoids a copy.
    """

    pad: tuple[int, ...]
    padding_mode: str
    pool_window: tuple[int, ...]
    pool_dilation: tuple[int, ...]
    pool_stride: tuple[int, ...]
    conv_stride: tuple[int, ...]
    conv_dilation: tuple[int, ...]
    conv_padding: tuple[int, ...]

    @classmethod
    def from_conv(
        cls,
        kernel_size: Sequence[int],
        n: Sequence[int],
        stride: Sequence[int],
        padding,
        dilation: Sequence[int],
        padding_mode: str = "zeros",
    ) -> "DecompositionGeometry":
        nd = len(kernel_size)
        pads = conv_padding(padding, kernel_size, dilation, stride)
        window = tuple(k - m + 1 for k, m in zip(kernel_size, n))
        pool_stride, conv_stride, conv_dil, conv_pad, explicit = [], [], [], [], []
        for a in range(nd):
            s, d, m = stride[a], dilation[a], n[a]
            t = s if m == 1 else math.gcd(s, d)
            pool_stride.append(t)
            conv_stride.append(s // t)
            conv_dil.append(d // t if m > 1 else 1)
            before, after = pads[a]
            defer = padding_mode == "zeros" and window[a] == 1 and t == 1 and before == after
            conv_pad.append(before if defer else 0)
            explicit.append((0, 0) if defer else (before, after))
        flat = tuple(p for pair in reversed(explicit) for p in pair)
        return cls(
            pad=flat if any(flat) else (),
            padding_mode=padding_mode,
            pool_window=window,
            pool_dilation=tuple(dilation),
            pool_stride=tuple(pool_stride),
            conv_stride=tuple(conv_stride),
            conv_dilation=tuple(conv_dil),
            conv_padding=tuple(conv_pad),
        )


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_PAD_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


def pad_input(x: Tensor, pad: Sequence[int], padding_mode: str) -> Tensor:
    """``F.pad`` with an ``nn.ConvNd`` padding_mode name."""
    if not pad:
        return x
    return F.pad(x, list(pad), mode=_PAD_MODE[padding_mode])


def structured_conv(
    x: Tensor,
    alpha: Tensor,
    bias: Tensor | None,
    kernel_size: Sequence[int],
    *,
    stride: Sequence[int] | int = 1,
    padding=0,
    dilation: Sequence[int] | int = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> Tensor:
    """Structured convolution in decomposed form: pad, sum-pool, small conv (Sec. 4.1, Fig. 4).

    ``alpha`` has shape ``(C_out, c, n1, ..., nd)``; the result equals a dense convolution with
    the kernel ``StructuredBasis(C_in // groups, kernel_size, c, n).compose(alpha)`` and the same
    options.
    """
    nd = len(kernel_size)
    geo = DecompositionGeometry.from_conv(
        tuple(kernel_size),
        tuple(alpha.shape[2:]),
        _ntuple(stride, nd, "stride"),
        padding,
        _ntuple(dilation, nd, "dilation"),
        padding_mode,
    )
    per_group = x.shape[1] // groups
    pooled = sum_pool(
        pad_input(x, geo.pad, padding_mode),
        per_group - alpha.shape[1] + 1,
        geo.pool_window,
        groups=groups,
        dilation=geo.pool_dilation,
        stride=geo.pool_stride,
    )
    return _CONV[nd](pooled, alpha, bias, geo.conv_stride, geo.conv_padding, geo.conv_dilation, groups)
