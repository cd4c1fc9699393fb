"""Structural Regularization (Sec. 5.1, Eq. 3)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import StructuredLayer

__all__ = ["structural_regularization", "structure_errors"]


def structural_regularization(model: nn.Module) -> Tensor:
    """``sum_l ||(I - A_l A_l^+) W_l||_F / ||W_l||_F`` over every structured layer (Eq. 3).

    A differentiable scalar to add to the task loss as ``loss + lam * reg``.  Each term is
    computed separably (a few small per-axis matmuls on the weight, operators cached per
    device and dtype), so its cost does not depend on the batch size.  A layer whose weight is
    all zeros contributes 0.  Raises ``ValueError`` if the model has no structured layer, since
    a regularizer that is silently 0 hides a missed ``structurize`` call.
    """
    terms = []
    for module in model.modules():
        if isinstance(module, StructuredLayer):
            w = module.weight
            norm = torch.linalg.vector_norm(w).clamp_min(torch.finfo(w.dtype).tiny)
            terms.append(torch.linalg.vector_norm(module.basis.residual(w)) / norm)
    if not terms:
        raise ValueError(
            f"structural_regularization: {type(model).__name__} has no structured layers; "
            "call structconv.structurize(model, ...) first"
        )
    return torch.stack(terms).sum()


def structure_errors(model: nn.Module) -> dict[str, float]:
    """Relative structure error of every structured layer, by qualified name."""
    return {name: m.structure_error() for name, m in model.named_modules() if isinstance(m, StructuredLayer)}
