"""Structured, decomposed and composite layers: thin modules over :mod:`structconv.functional`.

Three forms of one layer:

* **Training form** -- ``StructuredConv{1,2,3}d`` / ``StructuredLinear`` subclass the ``nn``
  layer they replace, keep its constructor and state_dict keys, compute densely, and know
  their basis (``structure_error``, ``project_``, ``decompose``).
* **Deployment form** -- ``DecomposedConv{1,2,3}d`` / ``DecomposedLinear``: a parameter-free
  :class:`SumPool` followed by a small ``nn.ConvNd`` / ``nn.Linear`` whose weight is
  ``alpha = A^+ W``.  Built from scratch they are the direct-training form of Sec. 6.4.
* **Composite** -- ``CompositeConv{1,2,3}d`` takes any composite basis (Def. 1); its
  decomposition (Eq. 1) sums the input under each mask, then combines the sums with ``alpha``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .basis import CompositeBasis, StructuredBasis
from .functional import (
    DecompositionGeometry,
    _channel_box_sum,
    _sum_pool,
    box_sum,
    channel_band_matrix,
    channel_sum_matmul,
    conv_padding,
    pad_input,
    padded_box_sum,
    pooling_kernel_applies,
    sum_pool,
)

__all__ = [
    "StructuredLayer",
    "DecomposedLayer",
    "SumPool",
    "StructuredConv1d",
    "StructuredConv2d",
    "StructuredConv3d",
    "StructuredLinear",
    "DecomposedConv1d",
    "DecomposedConv2d",
    "DecomposedConv3d",
    "DecomposedLinear",
    "CompositeConv1d",
    "CompositeConv2d",
    "CompositeConv3d",
    "DecomposedCompositeConv",
    "OrthonormalCoefficients",
    "orthonormalize_",
    "deorthonormalize_",
]

_CONV_CLASSES = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
# Channel pools with at least this window, and at most this many multiply-adds per position
# (C * c), run as one GEMM with a 0/1 matrix; see SumPool.channel_method.
_GEMM_MIN_WINDOW = 5
_GEMM_MAX_MACS = 1 << 17
_DEPTHWISE_MAX_CHANNELS = 64


def _tuple(value, nd: int, name: str, owner: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * nd
    try:
        value = tuple(int(v) for v in value)
    except TypeError:
        raise ValueError(f"{owner}: {name}={value!r} must be an int or a tuple of {nd} ints") from None
    if len(value) != nd:
        raise ValueError(f"{owner}: {name}={value} must have {nd} entries")
    return value


def _basis_for(owner: str, channels_per_group: int, kernel_size, c, n) -> StructuredBasis:
    nd = len(kernel_size)
    if not isinstance(c, int) or isinstance(c, bool):
        raise ValueError(f"{owner}: c={c!r} must be an int")
    try:
        return StructuredBasis(channels_per_group, tuple(kernel_size), c, _tuple(n, nd, "n", owner))
    except ValueError as err:
        raise ValueError(f"{owner}: {err}") from None


class StructuredLayer:
    """Mixin for the training form: a dense layer that knows its (structured or composite) basis.

    Subclasses set ``self.basis``; ``self.weight`` has shape ``(out, *basis.full_shape)``.
    """

    basis: StructuredBasis | CompositeBasis
    weight: nn.Parameter

    def structure_error(self) -> float:
        """``||(I - A A^+) W||_F / ||W||_F``: 0 when the weight is exactly structured."""
        return self.basis.error(self.weight)

    @torch.no_grad()
    def project_(self) -> "StructuredLayer":
        """Replace ``W`` by its projection ``A A^+ W`` in place; returns ``self``."""
        self.weight.copy_(self.basis.project(self.weight))
        return self

    def coefficients(self) -> Tensor:
        """``alpha = A^+ W`` (detached), the weight of the decomposed layer."""
        with torch.no_grad():
            return self.basis.coefficients(self.weight)

    def decompose(self) -> nn.Module:  # pragma: no cover - overridden
        raise NotImplementedError


class DecomposedLayer:
    """Marker mixin for deployment forms (sum-pool + small layer, or mask sums + alpha)."""

    def recompose(self) -> nn.Module:  # pragma: no cover - overridden
        """The dense layer with the recomposed kernel ``A alpha``: same function."""
        raise NotImplementedError


@torch.no_grad()
def _init_as_projected_dense(small: nn.Module, basis: StructuredBasis) -> None:
    """Direct-training init (Sec. 6.4): ``alpha = A^+ W0`` for ``W0`` drawn like the dense layer's
    default init, i.e. the function a freshly structurized-and-decomposed layer starts with.

    Scaling alpha's own default init cannot do this: a sum of ``window`` correlated,
    non-negative activations grows like ``window``, not ``sqrt(window)``, and the first steps
    diverge (seen on Fashion-MNIST: ResNet20 stuck at chance).
    """
    w = small.weight
    dense = torch.empty(w.shape[0], *basis.full_shape, device=w.device, dtype=w.dtype)
    nn.init.kaiming_uniform_(dense, a=math.sqrt(5))  # nn.ConvNd / nn.Linear default
    w.copy_(basis.coefficients(dense))
    if small.bias is not None:
        bound = 1 / math.sqrt(math.prod(basis.full_shape))
        nn.init.uniform_(small.bias, -bound, bound)


class OrthonormalCoefficients(nn.Module):
    """Parametrization ``alpha = (A^T A)^{-1/2} beta`` for direct training (Sec. 6.4).

    Registered with ``torch.nn.utils.parametrize`` on a decomposed layer's small weight (see
    :func:`orthonormalize_`).  The dense kernel is then ``W = Q beta`` with orthonormal ``Q``, so
    plain SGD on ``beta`` takes exactly the step ``W - lr * P grad_W`` of dense training with the
    gradient projected onto the structured subspace.  Training ``alpha`` itself scales that step
    by ``A^T A``, whose largest eigenvalue is about the squared window size (1,089 for a
    33-wide channel pool): learning rates tuned for the dense network diverge.
    """

    def __init__(self, basis: StructuredBasis) -> None:
        super().__init__()
        self.basis = basis

    def forward(self, beta: Tensor) -> Tensor:
        return self.basis.orthonormal_to_coefficients(beta)

    def right_inverse(self, alpha: Tensor) -> Tensor:
        return self.basis.coefficients_to_orthonormal(alpha)


def _small_layer(module: nn.Module) -> nn.Module:
    return module.linear if isinstance(module, DecomposedLinear) else module.conv


def orthonormalize_(model: nn.Module) -> nn.Module:
    """Train every decomposed layer of ``model`` through :class:`OrthonormalCoefficients` (in place).

    The layers compute the same function before and after; only the trained parameters change
    (``conv.parametrizations.weight.original`` holds ``beta``).  Checkpoints written with
    :func:`structconv.save` record this and :func:`structconv.load` restores it.  Call
    :func:`deorthonormalize_` before deployment to store plain ``alpha`` again.
    """
    from torch.nn.utils import parametrize

    for module in model.modules():
        if isinstance(module, (_DecomposedConvNd, DecomposedLinear)):
            small = _small_layer(module)
            if not parametrize.is_parametrized(small, "weight"):
                parametrize.register_parametrization(small, "weight", OrthonormalCoefficients(module.basis))
    return model


def deorthonormalize_(model: nn.Module) -> nn.Module:
    """Undo :func:`orthonormalize_` in place, keeping the current ``alpha`` as plain weights."""
    from torch.nn.utils import parametrize

    for module in model.modules():
        if isinstance(module, (_DecomposedConvNd, DecomposedLinear)):
            small = _small_layer(module)
            if parametrize.is_parametrized(small, "weight"):
                parametrize.remove_parametrizations(small, "weight", leave_parametrized=True)
    return model


# ------------------------------------------------------------------------------------------
# Sum pooling
# ------------------------------------------------------------------------------------------
class SumPool(nn.Module):
    """Pad, then sum-pool over channels (within groups) and spatial axes. No parameters.

    See :func:`structconv.functional.sum_pool`; ``pad`` / ``padding_mode`` follow ``F.pad``
    and ``nn.ConvNd`` conventions.
    """

    def __init__(
        self,
        channel_window: int,
        window: Sequence[int],
        *,
        groups: int = 1,
        dilation: Sequence[int] = (),
        stride: Sequence[int] = (),
        pad: Sequence[int] = (),
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        nd = len(window)
        self.channel_window = int(channel_window)
        self.window = tuple(int(w) for w in window)
        self.groups = int(groups)
        self.dilation = tuple(dilation) or (1,) * nd
        self.stride = tuple(stride) or (1,) * nd
        self.pad = tuple(pad)
        self.padding_mode = padding_mode
        self.channel_method = "auto"
        self.spatial_method = "auto"
        # The 0/1 channel-pool matrix of the GEMM channel pool: derived data, so neither a
        # parameter nor a buffer (not saved; rebuilt on the input's device and dtype).
        self._channel_matrix: Tensor | None = None

    @property
    def channel_method(self) -> str:
        """How the channel pool runs: ``'matmul'`` (one GEMM with a 0/1 band matrix, exact,
        fastest for wide windows in channels_last), ``'sum'`` (shifted adds / cumulative sum)
        or ``'auto'`` (``'matmul'`` when the window is wide and the GEMM is cheap)."""
        return self._channel_method

    @channel_method.setter
    def channel_method(self, value: str) -> None:
        if value not in ("auto", "matmul", "sum"):
            raise ValueError(f"SumPool: channel_method={value!r} must be 'auto', 'matmul' or 'sum'")
        self._channel_method = value

    @property
    def spatial_method(self) -> str:
        """How a zero-padded spatial pool runs (where :attr:`kernel_padding` applies):
        ``'pool'`` (``avg_pool`` with divisor 1), ``'conv'`` (depthwise conv with ones) or
        ``'auto'`` (``'conv'`` below 64 channels, where oneDNN's depthwise conv was measured
        1.4-3x faster, else ``'pool'``; always ``'pool'`` under ``torch.compile``, whose
        Inductor fuses it); :func:`structconv.autotune.optimize` measures both in eager mode."""
        return getattr(self, "_spatial_method", "auto")  # modules pickled before it existed

    @spatial_method.setter
    def spatial_method(self, value: str) -> None:
        if value not in ("auto", "pool", "conv"):
            raise ValueError(f"SumPool: spatial_method={value!r} must be 'auto', 'pool' or 'conv'")
        self._spatial_method = value

    def _spatial_kernel(self, channels: int) -> str:
        method = self.spatial_method
        if method != "auto":
            return method
        if torch.compiler.is_compiling():
            # Inductor lowers the pooling kernel to loops it fuses with the neighbouring
            # ReLU / add; a depthwise conv stays an opaque oneDNN call.
            return "pool"
        return "conv" if channels < _DEPTHWISE_MAX_CHANNELS else "pool"

    def _use_matmul(self, channels: int) -> bool:
        if self.channel_window == 1 or self._channel_method == "sum":
            return False
        if self._channel_method == "matmul":
            return True
        per_group = channels // self.groups
        c = per_group - self.channel_window + 1
        # The GEMM does C*c multiply-adds per position, the sums about 3*C memory passes:
        # measured on oneDNN/MKL CPUs, the GEMM wins for wide windows up to C*c ~ 2^17.
        return self.groups == 1 and self.channel_window >= _GEMM_MIN_WINDOW and channels * c <= _GEMM_MAX_MACS

    def prepare(self, channels: int, *, device=None, dtype=None) -> "SumPool":
        """Build the channel-pool matrix for ``channels`` input channels now (it is otherwise
        built on the first forward), so ``forward`` does no set-up work; returns ``self``."""
        if self._use_matmul(channels):
            self._channel_matrix = channel_band_matrix(
                channels, self.channel_window, self.groups, dtype=dtype or torch.get_default_dtype(), device=device
            )
        else:
            self._channel_matrix = None
        return self

    def _matrix(self, x: Tensor) -> Tensor:
        m = self._channel_matrix
        if m is None or m.shape[0] != x.shape[1] or m.dtype != x.dtype or m.device != x.device:
            m = channel_band_matrix(x.shape[1], self.channel_window, self.groups, dtype=x.dtype, device=x.device)
            self._channel_matrix = m
        return m

    @property
    def kernel_padding(self) -> tuple[int, ...] | None:
        """Per-axis zero padding when the spatial pool runs as one pooling kernel
        (:func:`~structconv.functional.padded_box_sum`), else ``None``."""
        # cached on the geometry: forward runs once per layer per call (9 us uncached)
        key = (self.window, self.dilation, self.pad, self.padding_mode)
        cached = self.__dict__.get("_kernel_padding_cache")
        if cached is None or cached[0] != key:
            cached = (key, pooling_kernel_applies(*key))
            self.__dict__["_kernel_padding_cache"] = cached
        return cached[1]

    def _ones(self, x: Tensor) -> Tensor:
        """The depthwise kernel of ones for ``x``'s channels (derived data, cached like the
        channel matrix, so TorchScript/ONNX see a constant of known shape)."""
        k = getattr(self, "_ones_kernel", None)
        if k is None or k.shape[0] != x.shape[1] or k.dtype != x.dtype or k.device != x.device:
            with torch.inference_mode(False):  # usable by autograd even if built under inference_mode
                k = torch.ones(int(x.shape[1]), 1, *self.window, dtype=x.dtype, device=x.device)
            self._ones_kernel = k
        return k

    def forward(self, x: Tensor) -> Tensor:
        kernel_padding = self.kernel_padding
        if kernel_padding is not None and x.dim() == len(self.window) + 2 and x.shape[1] % self.groups == 0:
            return self._pool_with_kernel(x, kernel_padding)
        x = pad_input(x, self.pad, self.padding_mode)
        if x.dim() != len(self.window) + 2 or x.shape[1] % self.groups:
            return sum_pool(x, self.channel_window, self.window, groups=self.groups, dilation=self.dilation,
                            stride=self.stride)  # fmt: skip  (raises the descriptive error)
        matrix = self._matrix(x) if self._use_matmul(x.shape[1]) else None
        return _sum_pool(x, self.channel_window, self.window, self.groups, self.dilation, self.stride, matrix)

    def _spatial_pool(self, x: Tensor, padding: tuple[int, ...]) -> Tensor:
        method = self._spatial_kernel(x.shape[1])
        ones = self._ones(x) if method == "conv" else None
        return padded_box_sum(x, self.window, self.stride, padding, method, ones)

    def _channel_pool(self, x: Tensor) -> Tensor:
        if self._use_matmul(x.shape[1]):
            return channel_sum_matmul(x, self._matrix(x))
        return _channel_box_sum(x, self.channel_window, self.groups)

    def _pool_with_kernel(self, x: Tensor, padding: tuple[int, ...]) -> Tensor:
        """Zero-padded spatial pool in one kernel (no padded copy, no shifted adds), and the
        channel pool on whichever side of it touches fewer elements."""
        if self.channel_window == 1:
            return self._spatial_pool(x, padding)
        grows = all((s + 2 * p - w) // st + 1 >= s
                    for s, p, w, st in zip(x.shape[2:], padding, self.window, self.stride))  # fmt: skip
        if grows:
            return self._spatial_pool(self._channel_pool(x), padding)
        return self._channel_pool(self._spatial_pool(x, padding))

    def extra_repr(self) -> str:
        parts = [f"channel_window={self.channel_window}", f"window={self.window}"]
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        if any(d != 1 for d in self.dilation):
            parts.append(f"dilation={self.dilation}")
        if any(s != 1 for s in self.stride):
            parts.append(f"stride={self.stride}")
        if self.pad:
            parts.append(f"pad={self.pad}, padding_mode={self.padding_mode!r}")
        return ", ".join(parts)


# ------------------------------------------------------------------------------------------
# Structured convolutions (training form)
# ------------------------------------------------------------------------------------------
class _StructuredConvNd(StructuredLayer):
    _nd: int

    def _init_structure(self, c, n) -> None:
        self.basis = _basis_for(type(self).__name__, self.in_channels // self.groups, self.kernel_size, c, n)

    @property
    def c(self) -> int:
        return self.basis.c

    @property
    def n(self) -> tuple[int, ...]:
        return self.basis.n

    @classmethod
    def from_dense(cls, conv: nn.Module, *, c: int, n) -> "_StructuredConvNd":
        """Wrap an existing ``nn.ConvNd`` (sharing its Parameters) in the structured form."""
        dense = _CONV_CLASSES[cls._nd]
        if type(conv) is not dense and not isinstance(conv, _StructuredConvNd):
            raise ValueError(f"{cls.__name__}.from_dense expects an {dense.__name__}, got {type(conv).__name__}")
        new = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, device="meta", c=c, n=n,
        )  # fmt: skip
        new.weight = conv.weight
        new.bias = conv.bias
        new.train(conv.training)
        return new

    def decompose(self) -> "_DecomposedConvNd":
        """Deployment form: sum-pool + small conv with ``alpha = A^+ W`` (exact for the projected W)."""
        dec_cls = _DECOMPOSED_CONV[self._nd]
        w = self.weight
        dec = dec_cls(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation,
            self.groups, self.bias is not None, self.padding_mode, device=w.device, dtype=w.dtype, c=self.c, n=self.n,
        )  # fmt: skip
        with torch.no_grad():
            dec.conv.weight.copy_(self.coefficients())
            if self.bias is not None:
                dec.conv.bias.copy_(self.bias)
        dec.train(self.training)
        return dec

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, c={self.c}, n={self.n}"


class StructuredConv1d(_StructuredConvNd, nn.Conv1d):
    """``nn.Conv1d`` whose kernels are trained toward the structure ``(c, n)`` (Def. 3)."""

    _nd = 1

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None, *, c: int, n) -> None:  # fmt: skip
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)  # fmt: skip
        self._init_structure(c, n)


class StructuredConv2d(_StructuredConvNd, nn.Conv2d):
    """``nn.Conv2d`` whose kernels are trained toward the structure ``(c, n)`` (Def. 3).

    Same constructor and state_dict as ``nn.Conv2d`` plus ``c`` (channels of the small kernel,
    per group) and ``n`` (its spatial size, int or tuple).  Forward is the ordinary dense
    convolution; :meth:`decompose` gives the sum-pool + small-conv form.
    """

    _nd = 2

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None, *, c: int, n) -> None:  # fmt: skip
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)  # fmt: skip
        self._init_structure(c, n)


class StructuredConv3d(_StructuredConvNd, nn.Conv3d):
    """``nn.Conv3d`` whose kernels are trained toward the structure ``(c, n)`` (Def. 3)."""

    _nd = 3

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None, *, c: int, n) -> None:  # fmt: skip
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)  # fmt: skip
        self._init_structure(c, n)


# ------------------------------------------------------------------------------------------
# Decomposed convolutions (deployment / direct-training form)
# ------------------------------------------------------------------------------------------
class _DecomposedConvNd(DecomposedLayer, nn.Module):
    _nd: int

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None,
                 *, c: int, n) -> None:  # fmt: skip
        super().__init__()
        nd, owner = self._nd, type(self).__name__
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"{owner}: in_channels={in_channels} and out_channels={out_channels} must be divisible by groups={groups}"
            )
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(f"{owner}: padding_mode={padding_mode!r} must be zeros, reflect, replicate or circular")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _tuple(kernel_size, nd, "kernel_size", owner)
        self.stride = _tuple(stride, nd, "stride", owner)
        self.dilation = _tuple(dilation, nd, "dilation", owner)
        self.padding = padding if isinstance(padding, str) else _tuple(padding, nd, "padding", owner)
        self.padding_mode = padding_mode
        self.basis = _basis_for(owner, in_channels // groups, self.kernel_size, c, n)
        try:
            geo = DecompositionGeometry.from_conv(
                self.kernel_size, self.basis.n, self.stride, self.padding, self.dilation, padding_mode
            )
        except ValueError as err:
            raise ValueError(f"{owner}: {err}") from None
        self.pool = SumPool(
            self.basis.pool_window[0], geo.pool_window, groups=groups, dilation=geo.pool_dilation,
            stride=geo.pool_stride, pad=geo.pad, padding_mode=padding_mode,
        ).prepare(in_channels, device=device, dtype=dtype)  # fmt: skip
        self.conv = _CONV_CLASSES[nd](
            groups * self.basis.c, out_channels, self.basis.n, stride=geo.conv_stride, padding=geo.conv_padding,
            dilation=geo.conv_dilation, groups=groups, bias=bias, device=device, dtype=dtype,
        )  # fmt: skip
        _init_as_projected_dense(self.conv, self.basis)

    @property
    def c(self) -> int:
        return self.basis.c

    @property
    def n(self) -> tuple[int, ...]:
        return self.basis.n

    @property
    def weight(self) -> Tensor:
        """The coefficients alpha, shape ``(C_out, c, n1, ..., nd)``."""
        return self.conv.weight

    @property
    def bias(self) -> Tensor | None:
        return self.conv.bias

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.pool(x))

    def recompose(self) -> nn.Module:
        """Dense ``nn.ConvNd`` with the kernel ``A alpha`` and the original options."""
        w = self.conv.weight
        dense = _CONV_CLASSES[self._nd](
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation,
            self.groups, self.conv.bias is not None, self.padding_mode, device=w.device, dtype=w.dtype,
        )  # fmt: skip
        with torch.no_grad():
            dense.weight.copy_(self.basis.compose(w))
            if self.conv.bias is not None:
                dense.bias.copy_(self.conv.bias)
        dense.train(self.training)
        return dense

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, c={self.c}, n={self.n}"
        if any(v != 1 for v in self.stride):
            s += f", stride={self.stride}"
        if self.padding not in ((0,) * self._nd, "valid"):
            s += f", padding={self.padding}"
        if any(v != 1 for v in self.dilation):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s


class DecomposedConv1d(_DecomposedConvNd):
    """1-D structured conv in deployment form: :class:`SumPool` then ``Conv1d(groups*c, out, n)``."""

    _nd = 1


class DecomposedConv2d(_DecomposedConvNd):
    """2-D structured conv in deployment form: :class:`SumPool` then ``Conv2d(groups*c, out, n)``.

    Constructed directly, it is the direct-training form of Sec. 6.4 (``alpha`` are the
    parameters); :meth:`StructuredConv2d.decompose` builds it from a trained dense weight.
    """

    _nd = 2


class DecomposedConv3d(_DecomposedConvNd):
    """3-D structured conv in deployment form: :class:`SumPool` then ``Conv3d(groups*c, out, n)``."""

    _nd = 3


_DECOMPOSED_CONV = {1: DecomposedConv1d, 2: DecomposedConv2d, 3: DecomposedConv3d}


# ------------------------------------------------------------------------------------------
# Linear (Sec. 4.3)
# ------------------------------------------------------------------------------------------
class StructuredLinear(StructuredLayer, nn.Linear):
    """``nn.Linear`` whose rows are structured 1-D kernels with ``r`` degrees of freedom (Sec. 4.3)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 *, r: int) -> None:  # fmt: skip
        super().__init__(in_features, out_features, bias, device, dtype)
        self.basis = _basis_for(type(self).__name__, in_features, (), r, ())

    @property
    def r(self) -> int:
        return self.basis.c

    @classmethod
    def from_dense(cls, linear: nn.Linear, *, r: int) -> "StructuredLinear":
        """Wrap an existing ``nn.Linear`` (sharing its Parameters) in the structured form."""
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"StructuredLinear.from_dense expects an nn.Linear, got {type(linear).__name__}")
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta", r=r)
        new.weight = linear.weight
        new.bias = linear.bias
        new.train(linear.training)
        return new

    def decompose(self) -> "DecomposedLinear":
        w = self.weight
        dec = DecomposedLinear(self.in_features, self.out_features, self.bias is not None,
                               device=w.device, dtype=w.dtype, r=self.r)  # fmt: skip
        with torch.no_grad():
            dec.linear.weight.copy_(self.coefficients())
            if self.bias is not None:
                dec.linear.bias.copy_(self.bias)
        dec.train(self.training)
        return dec

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}"


class DecomposedLinear(DecomposedLayer, nn.Module):
    """Structured Linear in deployment form: sum-pool the last axis (window ``Q-r+1``), then ``Linear(r, P)``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 *, r: int) -> None:  # fmt: skip
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.basis = _basis_for(type(self).__name__, in_features, (), r, ())
        self.window = in_features - r + 1
        self.linear = nn.Linear(r, out_features, bias, device=device, dtype=dtype)
        _init_as_projected_dense(self.linear, self.basis)

    @property
    def r(self) -> int:
        return self.basis.c

    @property
    def weight(self) -> Tensor:
        return self.linear.weight

    @property
    def bias(self) -> Tensor | None:
        return self.linear.bias

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(box_sum(x, -1, self.window))

    def recompose(self) -> nn.Linear:
        w = self.linear.weight
        dense = nn.Linear(self.in_features, self.out_features, self.linear.bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.basis.compose(w))
            if self.linear.bias is not None:
                dense.bias.copy_(self.linear.bias)
        dense.train(self.training)
        return dense

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}"


# ------------------------------------------------------------------------------------------
# Composite kernels with an arbitrary basis (Sec. 3, Eq. 1)
# ------------------------------------------------------------------------------------------
class _CompositeConvNd(StructuredLayer):
    _nd: int

    def _init_basis(self, basis) -> None:
        owner = type(self).__name__
        try:
            basis = basis if isinstance(basis, CompositeBasis) else CompositeBasis(basis)
        except ValueError as err:
            raise ValueError(f"{owner}: {err}") from None
        expected = (self.in_channels // self.groups, *self.kernel_size)
        if basis.full_shape != expected:
            raise ValueError(
                f"{owner}: basis masks have shape {basis.full_shape} but kernels have shape {expected} "
                f"(in_channels/groups, *kernel_size)"
            )
        self.basis = basis

    @classmethod
    def from_dense(cls, conv: nn.Module, *, basis) -> "_CompositeConvNd":
        new = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            conv.groups, conv.bias is not None, conv.padding_mode, device="meta", basis=basis,
        )  # fmt: skip
        new.weight, new.bias = conv.weight, conv.bias
        new.train(conv.training)
        return new

    def decompose(self) -> "DecomposedCompositeConv":
        dec = DecomposedCompositeConv(
            self.basis, self.out_channels, stride=self.stride, padding=self.padding, dilation=self.dilation,
            groups=self.groups, bias=self.bias is not None, padding_mode=self.padding_mode,
            device=self.weight.device, dtype=self.weight.dtype,
        )  # fmt: skip
        with torch.no_grad():
            alpha = self.coefficients()  # (C_out, M)
            dec.conv.weight.copy_(alpha.reshape(dec.conv.weight.shape))
            if self.bias is not None:
                dec.conv.bias.copy_(self.bias)
        dec.train(self.training)
        return dec

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, basis_elements={self.basis.num_elements}"


def _make_composite(nd: int):
    dense = _CONV_CLASSES[nd]

    class CompositeConv(_CompositeConvNd, dense):
        _nd = nd

        def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                     bias=True, padding_mode="zeros", device=None, dtype=None, *, basis) -> None:  # fmt: skip
            super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                             padding_mode, device, dtype)  # fmt: skip
            self._init_basis(basis)

    CompositeConv.__name__ = CompositeConv.__qualname__ = f"CompositeConv{nd}d"
    CompositeConv.__doc__ = (
        f"``nn.Conv{nd}d`` whose kernels are trained toward an arbitrary composite basis (Def. 1-2).\n\n"
        f"``basis``: a :class:`~structconv.basis.CompositeBasis` or binary masks of shape\n"
        f"``(M, in_channels // groups, *kernel_size)``."
    )
    return CompositeConv


CompositeConv1d = _make_composite(1)
CompositeConv2d = _make_composite(2)
CompositeConv3d = _make_composite(3)


class DecomposedCompositeConv(DecomposedLayer, nn.Module):
    """Eq. (1): ``E_m = sum(X . beta_m)`` for every mask (a conv with fixed 0/1 weights), then
    ``Y = sum_m alpha_m E_m`` (a grouped 1x1 conv)."""

    def __init__(self, basis: CompositeBasis, out_channels: int, *, stride, padding, dilation, groups: int = 1,
                 bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None) -> None:  # fmt: skip
        super().__init__()
        self.basis = basis
        shape = basis.full_shape
        nd = len(shape) - 1
        self._nd = nd
        self.kernel_size = tuple(shape[1:])
        self.in_channels, self.out_channels, self.groups = shape[0] * groups, out_channels, groups
        self.stride = _tuple(stride, nd, "stride", "DecomposedCompositeConv")
        self.dilation = _tuple(dilation, nd, "dilation", "DecomposedCompositeConv")
        self.padding, self.padding_mode = padding, padding_mode
        pads = conv_padding(padding, self.kernel_size, self.dilation, self.stride)
        symmetric = all(a == b for a, b in pads)
        if padding_mode == "zeros" and symmetric:
            self.pad, self.mask_padding = (), tuple(a for a, _ in pads)
        else:
            self.pad, self.mask_padding = tuple(p for pair in reversed(pads) for p in pair), (0,) * nd
        masks = basis.masks.to(device=device, dtype=dtype or torch.get_default_dtype())
        self.register_buffer("masks", masks.repeat(groups, *([1] * (nd + 1))))
        m = basis.num_elements
        self.conv = _CONV_CLASSES[nd](groups * m, out_channels, 1, groups=groups, bias=bias, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        x = pad_input(x, self.pad, self.padding_mode)
        conv = (F.conv1d, F.conv2d, F.conv3d)[self._nd - 1]
        sums = conv(x, self.masks, None, self.stride, self.mask_padding, self.dilation, self.groups)
        return self.conv(sums)

    def recompose(self) -> nn.Module:
        w = self.conv.weight
        dense = _CONV_CLASSES[self._nd](
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation,
            self.groups, self.conv.bias is not None, self.padding_mode, device=w.device, dtype=w.dtype,
        )  # fmt: skip
        with torch.no_grad():
            dense.weight.copy_(self.basis.compose(w.reshape(self.out_channels, -1)))
            if self.conv.bias is not None:
                dense.bias.copy_(self.conv.bias)
        return dense

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"basis_elements={self.basis.num_elements}, groups={self.groups}"
        )
