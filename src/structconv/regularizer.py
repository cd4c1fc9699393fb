"""Structural Regularization (Sec. 5.1, Eq. 3)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .basis import StructuredBasis
from .layers import StructuredLayer

__all__ = [
    "structural_regularization",
    "structure_errors",
    "add_normalized_regularization_grad_",
    "project_gradients_",
    "project_weights_",
]


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
    terms = []
    for basis, weights in _groups(model, "structural_regularization"):
        w = torch.stack(weights) if len(weights) > 1 else weights[0].unsqueeze(0)
        terms.append(_RelativeResiduals.apply(w, basis).sum())
    return torch.stack(terms).sum()


def _groups(model: nn.Module, who: str) -> list[tuple[object, list[Tensor]]]:
    """The structured layers' weights, grouped by basis, shape, dtype and device (stacked and
    projected together); ``ValueError`` when there is none."""
    groups: dict[tuple, tuple[object, list[Tensor]]] = {}
    for module in model.modules():
        if isinstance(module, StructuredLayer):
            basis, w = module.basis, module.weight
            # StructuredBasis compares by value; a CompositeBasis only shares with itself
            key = (basis if isinstance(basis, StructuredBasis) else id(basis), w.shape, w.dtype, w.device)
            groups.setdefault(key, (basis, []))[1].append(w)
    if not groups:
        raise ValueError(
            f"{who}: {type(model).__name__} has no structured layers; call structconv.structurize(model, ...) first"
        )
    return list(groups.values())


def _stack(ts: list[Tensor]) -> Tensor:
    return torch.stack(ts) if len(ts) > 1 else ts[0].unsqueeze(0)


def _per_layer_norm(t: Tensor) -> Tensor:
    return torch.linalg.vector_norm(t.flatten(1).float(), dim=1)


@torch.no_grad()
def add_normalized_regularization_grad_(model: nn.Module, *, lam: float, kappa: float) -> float:
    """Add the gradient of every structured layer's Eq. 3 term to its ``.grad``, each scaled so
    that it outweighs the task: call after ``loss.backward()``, before ``optimizer.step()``.

    Eq. 3's term of layer ``l`` pushes ``W_l`` toward the structured subspace with a gradient of
    fixed size, ``sqrt(1 - e_l^2) / ||W_l||`` (``e_l`` its structure error); the task gradient's
    off-subspace part ``||(I - P_l) g_l||`` pushes it away.  Eq. 3 reaches ``e_l = 0`` only where
    ``lam`` beats their ratio, and that ratio grows with the layer's width and, for a layer
    without BatchNorm after it (a classifier head), with its weight norm: wide 1x1 convs and
    heads stall at errors of 0.1-0.7 (RESULTS.md).  Here layer ``l``'s term is weighted by
    ``max(lam, kappa * ||(I - P_l) g_l|| * ||W_l|| / sqrt(1 - e_l^2))``, so its push is at least
    ``kappa`` times the task's away from the subspace, whatever its width.  Returns the largest
    structure error before the step.  Layers without a gradient are skipped.
    """
    worst = 0.0
    for basis, weights in _groups(model, "add_normalized_regularization_grad_"):
        weights = [w for w in weights if w.grad is not None]
        if not weights:
            continue
        w, g = _stack(weights), _stack([w.grad for w in weights])
        r = basis.residual(w)
        wn, rn = _per_layer_norm(w), _per_layer_norm(r)
        task = _per_layer_norm(basis.residual(g))
        ok = (wn > 0) & (rn > 0)
        wn1, rn1 = torch.where(ok, wn, 1.0), torch.where(ok, rn, 1.0)
        e = rn1 / wn1
        push = torch.sqrt((1 - e * e).clamp_min(1e-12)) / wn1  # the size of Eq. 3's gradient per unit weight
        scale = torch.where(ok, torch.clamp(kappa * task / push, min=lam), 0.0)
        shape = (-1,) + (1,) * (w.dim() - 1)
        a = (scale / (rn1 * wn1)).view(shape).to(w.dtype)
        b = (scale * rn1 / wn1**3).view(shape).to(w.dtype)
        update = r * a - w * b  # scale * d/dW (|r| / |W|)
        for i, weight in enumerate(weights):
            weight.grad.add_(update[i])
        worst = max(worst, float(torch.where(ok, e, 0.0).max()))
    return worst


@torch.no_grad()
def project_gradients_(model: nn.Module) -> None:
    """Replace every structured layer's ``.grad`` by its projection ``P g``: with weights already
    projected, SGD (momentum and weight decay included) then stays in the structured subspace
    (projected SGD, the same steps as the orthonormal parametrization of direct training)."""
    for basis, weights in _groups(model, "project_gradients_"):
        weights = [w for w in weights if w.grad is not None]
        if weights:
            projected = basis.project(_stack([w.grad for w in weights]))
            for i, weight in enumerate(weights):
                weight.grad.copy_(projected[i])


@torch.no_grad()
def project_weights_(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """``W <- P W`` for every structured layer, and the same for the optimizer's momentum buffers
    of those weights (so the first projected step stays in the subspace)."""
    for basis, weights in _groups(model, "project_weights_"):
        tensors = [weights]
        if optimizer is not None:
            buffers = [optimizer.state.get(w, {}).get("momentum_buffer") for w in weights]
            if all(b is not None for b in buffers):
                tensors.append(buffers)
        for ts in tensors:
            projected = basis.project(_stack(ts))
            for i, t in enumerate(ts):
                t.copy_(projected[i])


def structure_errors(model: nn.Module) -> dict[str, float]:
    """Relative structure error of every structured layer, by qualified name."""
    return {name: m.structure_error() for name, m in model.named_modules() if isinstance(m, StructuredLayer)}
