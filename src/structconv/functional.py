"""Plain functions behind the layers: the geometry of a decomposition and the structured conv.

A structured convolution (Sec. 4.1) is ``conv(x, W) == conv(sum_pool(pad(x)), alpha)``.
With stride ``s``, dilation ``d`` and kernel ``N = n + w - 1`` on an axis (``w`` the pool
window), output ``y`` reads pooled positions ``y*s + l*d`` for ``l < n`` only, so the pool is
evaluated on the sub-grid of step ``t = gcd(s, d)`` (``t = s`` when ``n == 1``) and the small
conv then runs with stride ``s/t`` and dilation ``d/t``: nothing is pooled that is not read.
The sum-pool itself, its kernels and its backends live in :mod:`structconv.pooling`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch.nn.functional as F
from torch import Tensor

from .pooling import (  # re-exported: the plain-function API
    PoolConstants,
    PoolSpec,
    apply,
    as_ntuple,
    box_sum,
    channel_band_matrix,
    channel_sum_matmul,
    pad_input,
    padded_box_sum,
    select_backend,
    sum_pool,
)

__all__ = [
    "box_sum",
    "padded_box_sum",
    "sum_pool",
    "channel_band_matrix",
    "channel_sum_matmul",
    "pad_input",
    "DecompositionGeometry",
    "conv_padding",
    "structured_conv",
]


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
    return tuple((p, p) for p in as_ntuple(padding, nd, "padding"))


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

    def pool_spec(self, channel_window: int, groups: int = 1) -> PoolSpec:
        """The :class:`~structconv.pooling.PoolSpec` of this decomposition's sum-pool."""
        return PoolSpec(
            channel_window, self.pool_window, groups, self.pool_dilation, self.pool_stride, self.pad, self.padding_mode
        )


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


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
        as_ntuple(stride, nd, "stride"),
        padding,
        as_ntuple(dilation, nd, "dilation"),
        padding_mode,
    )
    spec = geo.pool_spec(x.shape[1] // groups - alpha.shape[1] + 1, groups)
    spec.check_input(x, "structured_conv")
    pooled = apply(
        x,
        spec,
        channel=select_backend("channel", spec, x),
        spatial=select_backend("spatial", spec, x),
        constants=PoolConstants(),
    )
    return _CONV[nd](pooled, alpha, bias, geo.conv_stride, geo.conv_padding, geo.conv_dilation, groups)
