"""Composite kernels with an arbitrary binary basis (Sec. 3, Def. 1-2, Eq. 1).

``CompositeConv{1,2,3}d`` is the training form; its decomposition :class:`DecomposedCompositeConv`
sums the input under each mask, then combines the sums with ``alpha``.  Same pattern as
:mod:`.conv`: a generic base and three classes that name their dimension.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..basis import CompositeBasis
from ..functional import conv_padding, pad_input
from ._common import DENSE_CONV, DecomposedLayer, StructuredLayer, as_tuple

__all__ = ["CompositeConv1d", "CompositeConv2d", "CompositeConv3d", "DecomposedCompositeConv"]

_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class _CompositeConvNd(StructuredLayer):
    """``nn.ConvNd`` whose kernels are trained toward an arbitrary composite basis (Def. 1-2).

    ``basis``: a :class:`~structconv.basis.CompositeBasis` or binary masks of shape
    ``(M, in_channels // groups, *kernel_size)``.
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
        basis,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype
        )
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
            basis=basis,
        )
        new.weight, new.bias = conv.weight, conv.bias
        new.train(conv.training)
        return new

    def decompose(self) -> "DecomposedCompositeConv":
        dec = DecomposedCompositeConv(
            self.basis,
            self.out_channels,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.bias is not None,
            padding_mode=self.padding_mode,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        with torch.no_grad():
            alpha = self.coefficients()  # (C_out, M)
            dec.conv.weight.copy_(alpha.reshape(dec.conv.weight.shape))
            if self.bias is not None:
                dec.conv.bias.copy_(self.bias)
        dec.train(self.training)
        return dec

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, basis_elements={self.basis.num_elements}"


class CompositeConv1d(_CompositeConvNd, nn.Conv1d):
    __doc__ = _CompositeConvNd.__doc__
    _nd = 1


class CompositeConv2d(_CompositeConvNd, nn.Conv2d):
    __doc__ = _CompositeConvNd.__doc__
    _nd = 2


class CompositeConv3d(_CompositeConvNd, nn.Conv3d):
    __doc__ = _CompositeConvNd.__doc__
    _nd = 3


COMPOSITE_CONV = {1: CompositeConv1d, 2: CompositeConv2d, 3: CompositeConv3d}


class DecomposedCompositeConv(DecomposedLayer, nn.Module):
    """Eq. (1): ``E_m = sum(X . beta_m)`` for every mask (a conv with fixed 0/1 weights), then
    ``Y = sum_m alpha_m E_m`` (a grouped 1x1 conv)."""

    def __init__(
        self,
        basis: CompositeBasis,
        out_channels: int,
        *,
        stride,
        padding,
        dilation,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.basis = basis
        shape = basis.full_shape
        nd = len(shape) - 1
        self._nd = nd
        self.kernel_size = tuple(shape[1:])
        self.in_channels, self.out_channels, self.groups = shape[0] * groups, out_channels, groups
        self.stride = as_tuple(stride, nd, "stride", "DecomposedCompositeConv")
        self.dilation = as_tuple(dilation, nd, "dilation", "DecomposedCompositeConv")
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
        self.conv = DENSE_CONV[nd](groups * m, out_channels, 1, groups=groups, bias=bias, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        x = pad_input(x, self.pad, self.padding_mode)
        sums = _CONV_FN[self._nd](x, self.masks, None, self.stride, self.mask_padding, self.dilation, self.groups)
        return self.conv(sums)

    def recompose(self) -> nn.Module:
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
            dense.weight.copy_(self.basis.compose(w.reshape(self.out_channels, -1)))
            if self.conv.bias is not None:
                dense.bias.copy_(self.conv.bias)
        return dense

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"basis_elements={self.basis.num_elements}, groups={self.groups}"
        )
