"""Structural Regularization (Sec. 5.1, Eq. 3)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .basis import StructuredBasis
from .layers import StructuredLayer

__all__ = ["structural_regularization", "structure_errors"]


def structural_regularization(model: nn.Module) -> Tensor:
    """``sum_l ||(I - A_l A_l^+) W_l||_F / ||W_l||_F`` over every structured layer (Eq. 3).

    A differentiable scalar to add to the task loss as ``loss + lam * reg``.  Each term is
    computed separably (small per-axis matmuls on the weight, identity axes skipped, operators
    cached per device and dtype), and layers that share a basis and weight shape -- the
    repeated blocks of a ResNet stage -- are stacked and projected in one batched call, so the
    cost is a handful of small kernels whatever the depth, and independent of the batch size.
    A layer whose weight is all zeros contributes 0.  Raises ``ValueError`` if the model has
    no structured layer, since a regularizer that is silently 0 hides a missed ``structurize``.
    """
    groups: dict[tuple, tuple[object, list[Tensor]]] = {}
    for module in model.modules():
        if isinstance(module, StructuredLayer):
            basis, w = module.basis, module.weight
            # StructuredBasis compares by value; a CompositeBasis only shares with itself
            key = (basis if isinstance(basis, StructuredBasis) else id(basis), w.shape, w.dtype, w.device)
            groups.setdefault(key, (basis, []))[1].append(w)
    if not groups:
        raise ValueError(
            f"structural_regularization: {type(model).__name__} has no structured layers; "
            "call structconv.structurize(model, ...) first"
        )
    terms = []
    for basis, weights in groups.values():
        w = torch.stack(weights) if len(weights) > 1 else weights[0].unsqueeze(0)
        flat_residual = basis.residual(w).flatten(1)
        norms = torch.linalg.vector_norm(w.flatten(1), dim=1).clamp_min(torch.finfo(w.dtype).tiny)
        terms.append((torch.linalg.vector_norm(flat_residual, dim=1) / norms).sum())
    return torch.stack(terms).sum()


def structure_errors(model: nn.Module) -> dict[str, float]:
    """Relative structure error of every structured layer, by qualified name."""
    return {name: m.structure_error() for name, m in model.named_modules() if isinstance(m, StructuredLayer)}
