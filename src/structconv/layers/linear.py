"""Structured Linear layers (Sec. 4.3): each row is a structured 1-D kernel with ``r`` degrees
of freedom, so the layer is a sum-pool of the last axis (window ``Q - r + 1``) then ``Linear(r, P)``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..pooling import box_sum
from ._common import DecomposedLayer, StructuredLayer, as_int, basis_for, init_as_projected_dense

__all__ = ["StructuredLinear", "DecomposedLinear"]


class StructuredLinear(StructuredLayer, nn.Linear):
    """``nn.Linear`` whose rows are structured 1-D kernels with ``r`` degrees of freedom (Sec. 4.3)."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, *, r: int
    ) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self.basis = basis_for(type(self).__name__, in_features, (), r, ())

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

    def decomposed_form(self, *, init: bool) -> "DecomposedLinear":
        """A decomposed layer with this layer's options, on its device and dtype: with ``init``
        freshly initialized for direct training (Sec. 6.4), else empty, to receive ``alpha``."""
        w = self.weight
        return DecomposedLinear(
            self.in_features,
            self.out_features,
            self.bias is not None,
            device=w.device,
            dtype=w.dtype,
            r=self.r,
            _init=init,
        )

    def decompose(self) -> "DecomposedLinear":
        """Deployment form: sum-pool + small linear with ``alpha = A^+ W`` (exact for the projected W)."""
        dec = self.decomposed_form(init=False)
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

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        r: int,
        _init: bool = True,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.in_features = as_int(in_features, "in_features", owner)
        self.out_features = as_int(out_features, "out_features", owner)
        self.basis = basis_for(owner, self.in_features, (), r, ())
        self.window = self.in_features - self.r + 1
        if _init:
            self.linear = nn.Linear(self.r, self.out_features, bias, device=device, dtype=dtype)
            init_as_projected_dense(self.linear, self.basis)
        else:  # built to receive alpha (decompose): skip drawing an init that is overwritten at once
            self.linear = nn.Linear(self.r, self.out_features, bias, device="meta", dtype=dtype).to_empty(
                device=device if device is not None else "cpu"
            )

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
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"DecomposedLinear: expected {self.in_features} input features, got {x.shape[-1]} "
                f"(input shape {tuple(x.shape)})"
            )
        return self.linear(box_sum(x, -1, self.window))

    def recompose(self) -> nn.Linear:
        w = self.linear.weight
        dense = nn.Linear(
            self.in_features, self.out_features, self.linear.bias is not None, device=w.device, dtype=w.dtype
        )
        with torch.no_grad():
            dense.weight.copy_(self.basis.compose(w))
            if self.linear.bias is not None:
                dense.bias.copy_(self.linear.bias)
        dense.train(self.training)
        return dense

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}"
