"""Structured convolutions: the training form (``StructuredConv{1,2,3}d``) and the deployment /
direct-training form (``DecomposedConv{1,2,3}d``).

One pattern for every dimension: a generic ``_...ConvNd`` base holds all the code, and each
public class only names its dimension (``_nd``) and the ``nn.ConvNd`` it subclasses.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..functional import DecompositionGeometry
from ._common import DENSE_CONV, DecomposedLayer, StructuredLayer, as_int, as_tuple, basis_for, init_as_projected_dense
from .sum_pool import SumPool

__all__ = [
    "StructuredConvNd",
    "StructuredConv1d",
    "StructuredConv2d",
    "StructuredConv3d",
    "DecomposedConvNd",
    "DecomposedConv1d",
    "DecomposedConv2d",
    "DecomposedConv3d",
    "STRUCTURED_CONV",
    "DECOMPOSED_CONV",
]

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


# ------------------------------------------------------------------------------------------
# Training form
# ------------------------------------------------------------------------------------------
class StructuredConvNd(StructuredLayer):
    """``nn.ConvNd`` whose kernels are trained toward the structure ``(c, n)`` (Def. 3).

    Same constructor and state_dict as the ``nn.ConvNd`` it subclasses, plus ``c`` (channels of
    the small kernel, per group) and ``n`` (its spatial size, int or tuple).  Forward is the
    ordinary dense convolution; :meth:`decompose` gives the sum-pool + small-conv form.
    """

    _nd: int

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=True,
        padding_mode="zeros",
        device=None,
        dtype=None,
        *,
        c: int,
        n,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype
        )
        self.basis = basis_for(type(self).__name__, self.in_channels // self.groups, self.kernel_size, c, n)

    @property
    def c(self) -> int:
        return self.basis.c

    @property
    def n(self) -> tuple[int, ...]:
        return self.basis.n

    @classmethod
    def from_dense(cls, conv: nn.Module, *, c: int, n) -> "StructuredConvNd":
        """Wrap an existing ``nn.ConvNd`` (sharing its Parameters) in the structured form."""
        dense = DENSE_CONV[cls._nd]
        if type(conv) is not dense and not isinstance(conv, StructuredConvNd):
            raise ValueError(f"{cls.__name__}.from_dense expects an {dense.__name__}, got {type(conv).__name__}")
        new = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            device="meta",
            c=c,
            n=n,
        )
        new.weight = conv.weight
        new.bias = conv.bias
        new.train(conv.training)
        return new

    def decomposed_form(self, *, init: bool) -> "DecomposedConvNd":
        """A decomposed layer with this layer's options, on its device and dtype: with ``init``
        freshly initialized for direct training (Sec. 6.4), else empty, to receive ``alpha``."""
        w = self.weight
        return DECOMPOSED_CONV[self._nd](
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.bias is not None,
            self.padding_mode,
            device=w.device,
            dtype=w.dtype,
            c=self.c,
            n=self.n,
            _init=init,
        )

    def decompose(self) -> "DecomposedConvNd":
        """Deployment form: sum-pool + small conv with ``alpha = A^+ W`` (exact for the projected W)."""
        dec = self.decomposed_form(init=False)
        with torch.no_grad():
            dec.conv.weight.copy_(self.coefficients())
            if self.bias is not None:
                dec.conv.bias.copy_(self.bias)
        dec.train(self.training)
        return dec

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, c={self.c}, n={self.n}"


class StructuredConv1d(StructuredConvNd, nn.Conv1d):
    __doc__ = StructuredConvNd.__doc__
    _nd = 1


class StructuredConv2d(StructuredConvNd, nn.Conv2d):
    __doc__ = StructuredConvNd.__doc__
    _nd = 2


class StructuredConv3d(StructuredConvNd, nn.Conv3d):
    __doc__ = StructuredConvNd.__doc__
    _nd = 3


# ------------------------------------------------------------------------------------------
# Deployment / direct-training form
# ------------------------------------------------------------------------------------------
class DecomposedConvNd(DecomposedLayer, nn.Module):
    """A structured conv in deployment form: :class:`SumPool`, then ``ConvNd(groups*c, out, n)``.

    Constructed directly, it is the direct-training form of Sec. 6.4 (``alpha`` are the
    parameters, initialised as the projection of a default dense init);
    ``StructuredConvNd.decompose`` builds it from a trained dense weight.
    """

    _nd: int

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        c: int,
        n,
        _init: bool = True,
    ) -> None:
        super().__init__()
        nd, owner = self._nd, type(self).__name__
        in_channels, out_channels = (
            as_int(in_channels, "in_channels", owner),
            as_int(out_channels, "out_channels", owner),
        )
        groups = as_int(groups, "groups", owner)
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"{owner}: in_channels={in_channels} and out_channels={out_channels} "
                f"must be divisible by groups={groups}"
            )
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"{owner}: padding_mode={padding_mode!r} must be one of {', '.join(_PADDING_MODES)}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = as_tuple(kernel_size, nd, "kernel_size", owner)
        self.stride = as_tuple(stride, nd, "stride", owner)
        self.dilation = as_tuple(dilation, nd, "dilation", owner)
        self.padding = padding if isinstance(padding, str) else as_tuple(padding, nd, "padding", owner)
        self.padding_mode = padding_mode
        self.basis = basis_for(owner, in_channels // groups, self.kernel_size, c, n)
        try:
            geo = DecompositionGeometry.from_conv(
                self.kernel_size, self.basis.n, self.stride, self.padding, self.dilation, padding_mode
            )
        except ValueError as err:
            raise ValueError(f"{owner}: {err}") from None
        self.pool = SumPool(
            self.basis.pool_window[0],
            geo.pool_window,
            groups=groups,
            dilation=geo.pool_dilation,
            stride=geo.pool_stride,
            pad=geo.pad,
            padding_mode=padding_mode,
            in_channels=in_channels,
            owner=owner,
        ).prepare(in_channels, device=device, dtype=dtype)
        self.conv = DENSE_CONV[nd](
            groups * self.basis.c,
            out_channels,
            self.basis.n,
            stride=geo.conv_stride,
            padding=geo.conv_padding,
            dilation=geo.conv_dilation,
            groups=groups,
            bias=bias,
            device=device if _init else "meta",
            dtype=dtype,
        )
        if _init:
            init_as_projected_dense(self.conv, self.basis)
        else:  # built to receive alpha (decompose): skip drawing an init that is overwritten at once
            self.conv.to_empty(device=device if device is not None else "cpu")

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
        dense = DENSE_CONV[self._nd](
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.conv.bias is not None,
            self.padding_mode,
            device=w.device,
            dtype=w.dtype,
        )
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


class DecomposedConv1d(DecomposedConvNd):
    __doc__ = DecomposedConvNd.__doc__
    _nd = 1


class DecomposedConv2d(DecomposedConvNd):
    __doc__ = DecomposedConvNd.__doc__
    _nd = 2


class DecomposedConv3d(DecomposedConvNd):
    __doc__ = DecomposedConvNd.__doc__
    _nd = 3


DECOMPOSED_CONV = {1: DecomposedConv1d, 2: DecomposedConv2d, 3: DecomposedConv3d}
STRUCTURED_CONV = {1: StructuredConv1d, 2: StructuredConv2d, 3: StructuredConv3d}
