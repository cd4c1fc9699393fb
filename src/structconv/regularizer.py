"""Structural Regularization (Sec. 5.1, Eq. 3)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .basis import StructuredBasis
from .layers import StructuredLayer

__all__ = ["structural_regularization", "structure_errors"]


class _RelativeResiduals(torch.autograd.Function):
    """``||(I - P) W_g||_F / ||W_g||_F`` for every ``W_g`` stacked along dim 0 (0 where ``W_g = 0``).

    ``P = A A^+`` is an orthogonal projector, so with ``r = (I - P) W`` the gradient is
    ``r / (|r| |W|) - |r| W / |W|^3``: the backward is one elementwise pass, with no second
    projection and no norm backward.  Half types are computed in float32: a 16-bit norm of
    tiny weights underflows (clamping it at ``finfo(float16).tiny`` made a 0.94 structure
    error read 0.07), so their ratios come back in float32.
    """

    @staticmethod
    def forward(ctx, w: Tensor, basis) -> Tensor:
        x = w.float() if w.dtype in (torch.float16, torch.bfloat16) else w
        r = basis.residual(x)
        rnorm = torch.linalg.vector_norm(r.flatten(1), dim=1)
        wnorm = torch.linalg.vector_norm(x.flatten(1), dim=1)
        ctx.save_for_backward(x, r, rnorm, wnorm)
        ctx.dtype = w.dtype
        return torch.where(wnorm > 0, rnorm / wnorm, 0.0)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, r, rnorm, wnorm = ctx.saved_tensors
        nonzero = (rnorm > 0) & (wnorm > 0)  # |r| is not differentiable at r = 0: take 0
        ones = torch.ones_like(wnorm)
        a = torch.where(nonzero, grad / torch.where(nonzero, rnorm * wnorm, ones), 0.0)
        b = torch.where(nonzero, grad * rnorm / torch.where(nonzero, wnorm, ones) ** 3, 0.0)
        shape = (-1,) + (1,) * (x.dim() - 1)
        # one new weight-sized tensor: each fresh one costs page faults as well as a pass
        return r.mul(a.view(shape)).addcmul_(x, b.view(shape), value=-1).to(ctx.dtype), None


def structural_regularization(model: nn.Module) -> Tensor:
    """``sum_l ||(I - A_l A_l^+) W_l||_F / ||W_l||_F`` over every structured layer (Eq. 3).

    A differentiable scalar to add to the task loss as ``loss + lam * reg``.  Each term is
    computed separably (small per-axis matmuls on the weight, identity axes skipped, operators
    cached per device and dtype), and layers that share a basis and weight shape -- the
    repeated blocks of a ResNet stage -- are stacked and projected in one batched call, so the
    cost is a handful of small kernels whatever the depth, and independent of the batch size;
    a wide axis costs time linear in its size (see :mod:`structconv.basis`), and the backward is
    one elementwise pass per group (it is not itself differentiable).  A layer whose weight is
    all zeros contributes 0; float16/bfloat16 layers are computed, and their terms returned, in
    float32.  Raises ``ValueError`` if the model has no structured layer, since a regularizer
    that is silently 0 hides a missed ``structurize``.
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
        terms.append(_RelativeResiduals.apply(w, basis).sum())
    return torch.stack(terms).sum()


def structure_errors(model: nn.Module) -> dict[str, float]:
    """Relative structure error of every structured layer, by qualified name."""
    return {name: m.structure_error() for name, m in model.named_modules() if isinstance(m, StructuredLayer)}
