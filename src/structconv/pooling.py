"""Sum-pooling: its kernels, and the one table of backends that every caller loops over.

A decomposed layer (Sec. 4.1) first sums its input over a box of ``channel_window`` channels
and ``window`` spatial taps, without multiplications.  The sum can run several ways, and which
is fastest depends on the shape, the memory layout and the library, so each way is a
*backend* in :data:`BACKENDS`:

==========  ========  ===========================================================  ==========================
name        axis      kernel                                                       applies
==========  ========  ===========================================================  ==========================
``matmul``  channel   one GEMM with a constant 0/1 band matrix                     always
``sum``     channel   shifted adds, or a cumulative sum for wide windows            always
``conv``    spatial   depthwise convolution with a kernel of ones (zero padding)   symmetric zero padding
``pool``    spatial   ``avg_pool`` with ``divisor_override=1`` (zero padding)      symmetric zero padding
``shift``   spatial   explicit pad, then shifted adds per axis                     always
==========  ========  ===========================================================  ==========================

Each backend also states its dtypes and its ``auto`` rule.  ``'auto'`` takes, in table order,
the first backend that applies and whose rule prefers it, else the last one that applies.
:func:`sum_pool`, :func:`structconv.functional.structured_conv`, the :class:`SumPool` module
and :func:`structconv.autotune.optimize` all go through :func:`apply` and this table, so a new
backend is one :func:`register_backend` call (see docs/architecture.md).

Every backend computes each output as a plain sum of the same inputs, so they agree up to
float summation order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "PoolSpec",
    "SumPoolBackend",
    "BACKENDS",
    "register_backend",
    "backend_names",
    "applicable_backends",
    "select_backend",
    "apply",
    "sum_pool",
    "box_sum",
    "padded_box_sum",
    "channel_band_matrix",
    "channel_sum_matmul",
    "channel_sum_conv",
    "pooling_kernel_applies",
    "pad_input",
]

# Windows up to this size are summed from shifted views (window - 1 adds, no cancellation);
# larger ones use a cumulative sum (about 2 passes whatever the window).
_CUMSUM_MIN_WINDOW = 5
# 'auto' heuristics, measured on oneDNN/MKL CPUs (BENCHMARKS.md): a GEMM channel pool does
# C*c multiply-adds per position against about 3*C memory passes for the sums, so it wins
# for wide windows until C*c grows large; a depthwise conv with ones beats the pooling
# kernel on narrow tensors.
_GEMM_MIN_WINDOW = 5
_GEMM_MAX_MACS = 1 << 17
_DEPTHWISE_MAX_CHANNELS = 64

_FLOATS = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_PAD_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


# ------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------
def _axis_slice(x: Tensor, dim: int, start: int, length: int, step: int) -> Tensor:
    """View of ``length`` elements of ``x`` along ``dim``: ``start, start+step, ...``."""
    index = [slice(None)] * dim + [slice(start, start + (length - 1) * step + 1, step)]
    return x[tuple(index)]


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()


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
    ``divisor_override=1``; ``method='conv'`` is a depthwise convolution with a kernel of ones.
    Either way each output is a plain sum of ``prod(window)`` inputs, so the result equals
    ``box_sum`` along every axis of ``F.pad(x, ...)`` up to summation order.  Needs
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
        out = F.avg_pool2d(
            x.unsqueeze(2),
            (1, window[0]),
            (1, stride[0]),
            (0, padding[0]),
            count_include_pad=True,
            divisor_override=divisor,
        ).squeeze(2)
    elif nd == 3 and any(size < w for size, w in zip(x.shape[2:], window)):
        # avg_pool3d rejects inputs smaller than the window even when padding covers it
        padded = F.pad(x, [p for q in reversed(padding) for p in (q, q)])
        return _shifted_spatial_sums(padded, tuple(window), (1,) * nd, tuple(stride))
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
    convolution with the same 0/1 kernel, evaluated at the kept positions only.  Each output is
    a sum of ``channel_window`` inputs with weight 1, so the result is exact up to float
    summation order.
    """
    b, ch = x.shape[:2]
    spatial = x.shape[2:]
    out_ch = matrix.shape[1]
    if any(s != 1 for s in stride) or not (x.is_contiguous() or _channels_innermost(x)):
        # Strided or irregular input: a 1x1 convolution with the 0/1 kernel reads the kept
        # positions directly instead of copying them out first.
        return channel_sum_conv(x, matrix, stride)
    nd = len(spatial)
    if _channels_innermost(x):
        # explicit permutations (no negative axes: they export to ONNX cleanly)
        flat = x.permute(0, *range(2, nd + 2), 1).reshape(-1, ch)
        y = torch.mm(flat, matrix)
        return y.view(b, *spatial, out_ch).permute(0, nd + 1, *range(1, nd + 1))
    y = torch.matmul(matrix.t(), x.reshape(b, ch, -1))
    return y.view(b, out_ch, *spatial)


def channel_sum_conv(x: Tensor, matrix: Tensor, stride: Sequence[int] = ()) -> Tensor:
    """Channel sum-pool as a 1x1 convolution with the 0/1 ``matrix`` of
    :func:`channel_band_matrix` as its kernel (subsampling by ``stride`` in the same pass).
    Exported, it is a Convolution node: runtimes that keep activations in a blocked channel
    layout (OpenVINO's CPU plugin) run it without the layout conversions a MatMul on the
    channel axis costs them (BENCHMARKS.md, "OpenVINO")."""
    spatial = x.shape[2:]
    weight = matrix.t().reshape(matrix.shape[1], x.shape[1], *([1] * len(spatial)))
    return _CONV[len(spatial)](x, weight, None, tuple(stride) or (1,) * len(spatial))


def _channel_box_sum(x: Tensor, window: int, groups: int) -> Tensor:
    if window == 1:
        return x
    if groups == 1:
        return box_sum(x, 1, window)
    b, ch = x.shape[:2]
    grouped = x.reshape(b, groups, ch // groups, *x.shape[2:])
    pooled = box_sum(grouped, 2, window)
    return pooled.reshape(b, -1, *x.shape[2:])


def _shifted_spatial_sums(x: Tensor, window, dilation, stride) -> Tensor:
    for a in range(len(window)):
        if window[a] != 1 or stride[a] != 1:
            x = box_sum(x, 2 + a, window[a], dilation[a], stride[a])
    return x


def pad_input(x: Tensor, pad: Sequence[int], padding_mode: str) -> Tensor:
    """``F.pad`` with an ``nn.ConvNd`` padding_mode name."""
    if not pad:
        return x
    return F.pad(x, list(pad), mode=_PAD_MODE[padding_mode])


# ------------------------------------------------------------------------------------------
# What a pool computes
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PoolSpec:
    """One sum-pool: pad ``x`` (``F.pad`` list, last axis first, with ``padding_mode``), then
    sum ``channel_window`` consecutive channels within each of ``groups`` groups (stride 1) and
    ``window[a]`` taps spaced ``dilation[a]`` along spatial axis ``a``, kept every ``stride[a]``."""

    channel_window: int
    window: tuple[int, ...]
    groups: int = 1
    dilation: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    pad: tuple[int, ...] = ()
    padding_mode: str = "zeros"
    kernel_padding: tuple[int, ...] | None = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        nd = len(self.window)
        object.__setattr__(self, "window", tuple(int(w) for w in self.window))
        object.__setattr__(self, "dilation", tuple(int(d) for d in self.dilation) or (1,) * nd)
        object.__setattr__(self, "stride", tuple(int(s) for s in self.stride) or (1,) * nd)
        object.__setattr__(self, "pad", tuple(int(p) for p in self.pad))
        if self.padding_mode not in _PAD_MODE:
            raise ValueError(f"padding_mode={self.padding_mode!r} must be one of {', '.join(_PAD_MODE)}")
        for name in ("dilation", "stride"):
            if len(getattr(self, name)) != nd:
                raise ValueError(f"{name}={getattr(self, name)} must have {nd} entries (one per window axis)")
        if self.pad and len(self.pad) != 2 * nd:
            raise ValueError(f"pad={self.pad} must have 2 entries per spatial axis ({2 * nd}), last axis first (F.pad)")
        if any(p < 0 for p in self.pad):
            raise ValueError(f"pad={self.pad} must not be negative")
        # Per-axis symmetric zero padding under which a whole-spatial-pool kernel applies
        # (derived once: forward reads it on every call).
        object.__setattr__(
            self, "kernel_padding", pooling_kernel_applies(self.window, self.dilation, self.pad, self.padding_mode)
        )

    @property
    def nd(self) -> int:
        return len(self.window)

    def check_input(self, x: Tensor, owner: str = "sum_pool") -> None:
        """A one-line ``ValueError`` for an input this pool cannot take."""
        nd = self.nd
        if x.dim() != nd + 2:
            raise ValueError(
                f"{owner}: a {nd}-D window expects a {nd + 2}-D input (batch, channels, "
                f"{nd} spatial), got shape {tuple(x.shape)}"
            )
        channels = x.shape[1]
        if channels % self.groups:
            raise ValueError(f"{owner}: input channels ({channels}) must be divisible by groups ({self.groups})")
        per_group = channels // self.groups
        if not 1 <= self.channel_window <= per_group:
            raise ValueError(
                f"{owner}: channel_window={self.channel_window} must be in [1, {per_group}] (the input "
                "channels per group)"
            )
        sizes = list(x.shape[2:])
        if self.pad:
            for a in range(nd):
                sizes[a] += self.pad[2 * (nd - 1 - a)] + self.pad[2 * (nd - 1 - a) + 1]
        for a, (size, w, d) in enumerate(zip(sizes, self.window, self.dilation)):
            if (w - 1) * d + 1 > size:
                raise ValueError(
                    f"{owner}: spatial axis {a} has {size} positions (after padding) but the "
                    f"window spans {(w - 1) * d + 1}"
                )


class PoolConstants:
    """Per-pool constant tensors (the 0/1 channel matrix, the depthwise kernel of ones), built
    on first use for the input's channels, dtype and device.  A module keeps one, so tracers and
    exporters see a constant of known shape; derived data, never saved."""

    def __init__(self) -> None:
        self._matrix: Tensor | None = None
        self._ones: Tensor | None = None

    @staticmethod
    def _stale(t: Tensor | None, x: Tensor) -> bool:
        return t is None or t.shape[0] != x.shape[1] or t.dtype != x.dtype or t.device != x.device

    def channel_matrix(self, x: Tensor, spec: PoolSpec) -> Tensor:
        m = self._matrix
        if self._stale(m, x):
            with torch.inference_mode(False):  # usable by autograd even if built under inference_mode
                m = channel_band_matrix(
                    int(x.shape[1]), spec.channel_window, spec.groups, dtype=x.dtype, device=x.device
                )
            self._matrix = m
        return m

    def prepare(self, channels: int, spec: PoolSpec, *, dtype=None, device=None) -> None:
        """Build the channel matrix now (a GEMM channel pool then does no set-up work, and a tracer
        or exporter sees a ready constant)."""
        self._matrix = channel_band_matrix(
            channels, spec.channel_window, spec.groups, dtype=dtype or torch.get_default_dtype(), device=device
        )

    def ones(self, x: Tensor, spec: PoolSpec) -> Tensor:
        k = self._ones
        if self._stale(k, x):
            with torch.inference_mode(False):
                k = torch.ones(int(x.shape[1]), 1, *spec.window, dtype=x.dtype, device=x.device)
            self._ones = k
        return k


# ------------------------------------------------------------------------------------------
# The backend table
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SumPoolBackend:
    """One way to run one axis of the sum-pool.

    ``applies(spec, x)`` says whether it is correct for this pool and input; ``prefer(spec, x)``
    is its ``'auto'`` rule.  A channel backend's ``run(x, spec, constants, stride=())`` pools the
    channels (``stride`` non-empty only where ``strided`` says it can subsample the spatial axes
    in the same pass); a spatial backend's ``run(x, spec, constants, channel)`` pools the
    spatial axes and runs the ``channel`` backend (``None`` when there is no channel pool)
    where it is cheapest.
    """

    name: str
    axis: str  # "channel" or "spatial"
    kernel: str  # one line: what runs
    dtypes: frozenset
    applies: Callable[[PoolSpec, Tensor], bool]
    prefer: Callable[[PoolSpec, Tensor], bool]
    run: Callable[..., Tensor]
    strided: bool = False  # channel backends: can also subsample spatially (1x1-conv-like)
    runs_last: bool = False  # channel backends: best after the spatial sums that shrink the tensor


#: axis -> {name: backend}, in 'auto' priority order
BACKENDS: dict[str, dict[str, SumPoolBackend]] = {"channel": {}, "spatial": {}}


def register_backend(backend: SumPoolBackend, *, before: str | None = None) -> SumPoolBackend:
    """Add ``backend`` to :data:`BACKENDS` (at the end of its axis, or ahead of ``before`` in the
    ``'auto'`` order); returns it.  The last backend of each axis must apply everywhere."""
    if backend.axis not in BACKENDS:
        raise ValueError(f"backend {backend.name!r}: axis={backend.axis!r} must be 'channel' or 'spatial'")
    table = BACKENDS[backend.axis]
    if backend.name in table or backend.name == "auto" or not backend.name.isidentifier():
        raise ValueError(f"backend name {backend.name!r} is taken or not an identifier")
    items = list(table.items())
    at = len(items) if before is None else [n for n, _ in items].index(before)
    items.insert(at, (backend.name, backend))
    table.clear()
    table.update(items)
    return backend


def backend_names(axis: str) -> tuple[str, ...]:
    """Names of the ``axis`` backends, in ``'auto'`` order."""
    return tuple(BACKENDS[axis])


def _usable(b: SumPoolBackend, spec: PoolSpec, x: Tensor) -> bool:
    return x.dtype in b.dtypes and b.applies(spec, x)


def applicable_backends(axis: str, spec: PoolSpec, x: Tensor) -> list[str]:
    """The ``axis`` backends that can run ``spec`` on ``x`` (what autotune measures)."""
    return [name for name, b in BACKENDS[axis].items() if _usable(b, spec, x)]


def select_backend(axis: str, spec: PoolSpec, x: Tensor, method: str = "auto") -> SumPoolBackend:
    """The backend that runs ``axis`` of ``spec`` on ``x``: ``method`` if it applies, else the
    ``'auto'`` choice (the first usable backend whose rule prefers it, else the last usable)."""
    table = BACKENDS[axis]
    if method != "auto":
        chosen = table.get(method)
        if chosen is None:
            raise ValueError(f"unknown {axis} sum-pool backend {method!r}; choose 'auto' or one of {', '.join(table)}")
        if _usable(chosen, spec, x):
            return chosen
    last = None
    for b in table.values():
        if _usable(b, spec, x):
            if b.prefer(spec, x):
                return b
            last = b
    if last is None:
        raise ValueError(f"no {axis} sum-pool backend handles dtype {x.dtype}")
    return last


# ---- channel backends --------------------------------------------------------------------
def _matmul_prefer(spec: PoolSpec, x: Tensor) -> bool:
    channels = x.shape[1]
    c = channels // spec.groups - spec.channel_window + 1
    return spec.groups == 1 and spec.channel_window >= _GEMM_MIN_WINDOW and channels * c <= _GEMM_MAX_MACS


register_backend(
    SumPoolBackend(
        "matmul",
        "channel",
        "one GEMM with a constant 0/1 band matrix (a 1x1 conv where strided)",
        _FLOATS,
        applies=lambda spec, x: True,
        prefer=_matmul_prefer,
        run=lambda x, spec, k, stride=(): channel_sum_matmul(x, k.channel_matrix(x, spec), stride),
        strided=True,
        runs_last=True,
    )
)
register_backend(
    SumPoolBackend(
        "conv",
        "channel",
        "a 1x1 convolution with the constant 0/1 band kernel (for runtimes with blocked layouts)",
        _FLOATS,
        applies=lambda spec, x: True,
        prefer=lambda spec, x: False,  # chosen by name (a runtime target) or by autotune, never by 'auto'
        run=lambda x, spec, k, stride=(): channel_sum_conv(x, k.channel_matrix(x, spec), stride),
        strided=True,
        runs_last=True,
    )
)
register_backend(
    SumPoolBackend(
        "sum",
        "channel",
        "shifted adds, or a cumulative sum for windows of 5 or more",
        _FLOATS,
        applies=lambda spec, x: True,
        prefer=lambda spec, x: True,
        run=lambda x, spec, k, stride=(): _channel_box_sum(x, spec.channel_window, spec.groups),
    )
)


# ---- spatial backends --------------------------------------------------------------------
def _kernel_applies(spec: PoolSpec, x: Tensor) -> bool:
    return spec.kernel_padding is not None


def _kernel_pool(method: str):
    def run(x: Tensor, spec: PoolSpec, k: PoolConstants, channel: SumPoolBackend | None) -> Tensor:
        """Zero-padded spatial pool in one kernel (no padded copy), and the channel pool on
        whichever side of it touches fewer elements."""
        padding = spec.kernel_padding

        def spatial(t: Tensor) -> Tensor:
            ones = k.ones(t, spec) if method == "conv" else None
            return padded_box_sum(t, spec.window, spec.stride, padding, method, ones)

        if channel is None:
            return spatial(x)
        grows = all(
            (s + 2 * p - w) // st + 1 >= s for s, p, w, st in zip(x.shape[2:], padding, spec.window, spec.stride)
        )
        if grows:
            return spatial(channel.run(x, spec, k))
        return channel.run(spatial(x), spec, k)

    return run


def _ordered(ops: list, channel_last: bool) -> list:
    """``ops`` sorted by (channel op last if ``channel_last``, shrink ratio, dim): an insertion
    sort with plain comparisons, which torch.compile traces (``list.sort`` on size-derived
    keys is a graph break)."""
    out: list = []
    for op in ops:
        key = (channel_last and op[1] == 1, op[0], op[1])
        i = len(out)
        while i > 0:
            prev = out[i - 1]
            if (channel_last and prev[1] == 1, prev[0], prev[1]) <= key:
                break
            i -= 1
        out.insert(i, op)
    return out


def _shift_run(x: Tensor, spec: PoolSpec, k: PoolConstants, channel: SumPoolBackend | None) -> Tensor:
    """Explicit padding, then one shifted-add (or cumulative) sum per axis, in the order that
    shrinks the tensor fastest; a channel backend that ``runs_last`` goes after the spatial sums."""
    x = pad_input(x, spec.pad, spec.padding_mode)
    window, stride, dilation = spec.window, spec.stride, spec.dilation
    if channel is not None and channel.strided and all(w == 1 for w in window):
        # only subsampling besides the channel pool (e.g. a 1x1 stride-2 conv): one pass that
        # reads just the kept positions
        return channel.run(x, spec, k, stride)
    ops = []
    for a in range(spec.nd):
        if window[a] == 1 and stride[a] == 1:
            continue
        size = x.shape[2 + a]
        out = max((size - ((window[a] - 1) * dilation[a] + 1)) // stride[a] + 1, 0)
        ops.append((out / size, 2 + a))
    if channel is not None:
        per_group = x.shape[1] // spec.groups
        ops.append(((per_group - spec.channel_window + 1) / per_group, 1))
    for _, dim in _ordered(ops, channel is not None and channel.runs_last):
        if dim == 1:
            x = channel.run(x, spec, k)
        else:
            a = dim - 2
            x = box_sum(x, dim, window[a], dilation[a], stride[a])
    return x


register_backend(
    SumPoolBackend(
        "conv",
        "spatial",
        "depthwise convolution with a constant kernel of ones, zero padding inside",
        frozenset({torch.float32, torch.float64, torch.bfloat16}),
        applies=_kernel_applies,
        # Inductor fuses the pooling kernel with its neighbours; a depthwise conv stays an opaque call
        prefer=lambda spec, x: not torch.compiler.is_compiling() and x.shape[1] < _DEPTHWISE_MAX_CHANNELS,
        run=_kernel_pool("conv"),
    )
)
register_backend(
    SumPoolBackend(
        "pool",
        "spatial",
        "avg_pool with divisor_override=1, zero padding inside",
        _FLOATS,
        applies=_kernel_applies,
        prefer=lambda spec, x: True,
        run=_kernel_pool("pool"),
    )
)
register_backend(
    SumPoolBackend(
        "shift",
        "spatial",
        "explicit pad, then shifted adds (cumulative sums for wide windows) per axis",
        _FLOATS,
        applies=lambda spec, x: True,
        prefer=lambda spec, x: True,
        run=_shift_run,
    )
)


# ------------------------------------------------------------------------------------------
# Running a pool
# ------------------------------------------------------------------------------------------
def apply(
    x: Tensor,
    spec: PoolSpec,
    *,
    channel: SumPoolBackend,
    spatial: SumPoolBackend,
    constants: PoolConstants,
) -> Tensor:
    """Run ``spec`` on ``x`` with the given backends (no argument checks: see :func:`sum_pool`)."""
    return spatial.run(x, spec, constants, channel if spec.channel_window > 1 else None)


def sum_pool(
    x: Tensor,
    channel_window: int,
    window: Sequence[int],
    *,
    groups: int = 1,
    dilation: Sequence[int] | int = 1,
    stride: Sequence[int] | int = 1,
    pad: Sequence[int] = (),
    padding_mode: str = "zeros",
    channel_method: str = "auto",
    spatial_method: str = "auto",
) -> Tensor:
    """Sum-pooling over channels (stride 1, within each group) and spatial axes.

    ``x`` has shape ``(B, C, *spatial)`` with ``len(window)`` spatial axes.  Output channel
    ``g*c + j`` sums input channels ``g*Cg + j ... g*Cg + j + channel_window - 1`` of group
    ``g`` (``Cg = C // groups``, ``c = Cg - channel_window + 1``); spatial axis ``a`` sums
    ``window[a]`` taps spaced by ``dilation[a]`` and is evaluated every ``stride[a]`` positions,
    after ``pad`` (an ``F.pad`` list) with ``padding_mode``.  This is the
    ``1_{(C-c+1) x (N-n+1) x ...}`` convolution of Sec. 5, without multiplications.
    ``channel_method`` / ``spatial_method`` name a backend of :data:`BACKENDS` (``'auto'``
    picks one; a named backend that does not apply to the input falls back to ``'auto'``).
    """
    nd = len(window)
    spec = PoolSpec(
        int(channel_window),
        tuple(window),
        int(groups),
        as_ntuple(dilation, nd, "dilation"),
        as_ntuple(stride, nd, "stride"),
        tuple(pad),
        padding_mode,
    )
    spec.check_input(x)
    return apply(
        x,
        spec,
        channel=select_backend("channel", spec, x, channel_method),
        spatial=select_backend("spatial", spec, x, spatial_method),
        constants=PoolConstants(),
    )


def as_ntuple(value, nd: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * nd
    value = tuple(int(v) for v in value)
    if len(value) != nd:
        raise ValueError(f"{name}={value} must have {nd} entries")
    return value
