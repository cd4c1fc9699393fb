"""The orthonormal parametrization of ``alpha`` used by direct training (Sec. 6.4)."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..basis import StructuredBasis
from ._common import DecomposedLayer

__all__ = ["OrthonormalCoefficients", "orthonormalize_", "deorthonormalize_", "small_layer"]


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


def small_layer(module: nn.Module) -> nn.Module | None:
    """The small conv / linear holding ``alpha`` of a structured decomposed layer, else ``None``."""
    if isinstance(module, DecomposedLayer) and isinstance(getattr(module, "basis", None), StructuredBasis):
        small = getattr(module, "linear", None)
        return small if small is not None else getattr(module, "conv", None)
    return None


def orthonormalize_(model: nn.Module) -> nn.Module:
    """Train every decomposed layer of ``model`` through :class:`OrthonormalCoefficients` (in place).

    The layers compute the same function before and after; only the trained parameters change
    (``conv.parametrizations.weight.original`` holds ``beta``).  Checkpoints written with
    :func:`structconv.save` record this and :func:`structconv.load` restores it.  Call
    :func:`deorthonormalize_` before deployment to store plain ``alpha`` again.
    """
    for module in model.modules():
        small = small_layer(module)
        if small is not None and not parametrize.is_parametrized(small, "weight"):
            parametrize.register_parametrization(small, "weight", OrthonormalCoefficients(module.basis))
    return model


def deorthonormalize_(model: nn.Module) -> nn.Module:
    """Undo :func:`orthonormalize_` in place, keeping the current ``alpha`` as plain weights."""
    for module in list(model.modules()):
        small = small_layer(module)
        if small is not None and parametrize.is_parametrized(small, "weight"):
            parametrize.remove_parametrizations(small, "weight", leave_parametrized=True)
    return model
