"""What every layer form shares: the two mixins and argument checks naming the layer."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..basis import CompositeBasis, StructuredBasis

__all__ = ["StructuredLayer", "DecomposedLayer", "DENSE_CONV"]

DENSE_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def as_int(value, name: str, owner: str) -> int:
    """``value`` as an int if it is integer-like (int, numpy integer, 0-d integer tensor), else a
    ``ValueError`` naming ``owner`` and ``name``; bools and floats are refused."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise ValueError(f"{owner}: {name}={value!r} must be an int")
    return int(value.__index__())


def as_tuple(value, nd: int, name: str, owner: str) -> tuple[int, ...]:
    """An int or a sequence of ``nd`` integer-like values, as a tuple of ints."""
    if isinstance(value, (str, bytes)) or isinstance(value, bool):
        raise ValueError(f"{owner}: {name}={value!r} must be an int or a tuple of {nd} ints")
    if hasattr(value, "__index__"):
        return (as_int(value, name, owner),) * nd
    try:
        items = tuple(value)
    except TypeError:
        raise ValueError(f"{owner}: {name}={value!r} must be an int or a tuple of {nd} ints") from None
    if len(items) != nd:
        raise ValueError(f"{owner}: {name}={value!r} must have {nd} entries")
    return tuple(as_int(v, name, owner) for v in items)


def basis_for(owner: str, channels_per_group: int, kernel_size, c, n) -> StructuredBasis:
    nd = len(kernel_size)
    c = as_int(c, "c", owner)
    try:
        return StructuredBasis(channels_per_group, tuple(kernel_size), c, as_tuple(n, nd, "n", owner))
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
def init_as_projected_dense(small: nn.Module, basis: StructuredBasis) -> None:
    """Direct-training init (Sec. 6.4): ``alpha = A^+ W0`` for ``W0`` drawn like the dense layer's
    default init, i.e. the function a freshly structurized-and-decomposed layer starts with.

    Scaling alpha's own default init cannot do this: a sum of ``window`` correlated,
    non-negative activations grows like ``window``, not ``sqrt(window)``, and the first steps
    diverge (ResNet20 on Fashion-MNIST stayed at chance).
    """
    w = small.weight
    if w.is_meta:  # built only to receive weights (decompose): nothing to draw
        return
    dense = torch.empty(w.shape[0], *basis.full_shape, device=w.device, dtype=w.dtype)
    nn.init.kaiming_uniform_(dense, a=math.sqrt(5))  # nn.ConvNd / nn.Linear default
    w.copy_(basis.coefficients(dense))
    if small.bias is not None:
        bound = 1 / math.sqrt(math.prod(basis.full_shape))
        nn.init.uniform_(small.bias, -bound, bound)
