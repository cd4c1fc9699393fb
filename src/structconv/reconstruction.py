"""Block-wise output reconstruction after :func:`~structconv.calibrate_` (issue 16): the step
that goes past linear least squares.

Calibration fits each structured layer's *linear* output; what the network needs is each
block's output after its BatchNorms, ReLUs and shortcut.  :func:`reconstruct_blocks_` takes
every block (a module holding up to ``max_layers`` structured layers, found by walking the
module tree: a torchvision/timm residual block, a stage of a plain CNN), in forward order, and
minimizes ``||block_dense(x) - block(x_hat)||^2`` over the structured weights of the block, on
the calibration images: ``x`` is the block's input in the dense model, ``x_hat`` in the already
reconstructed one (asymmetric, as calibration).  Adam steps, each followed by the projection
onto the structure, so the model stays exactly structured and ``decompose`` stays exact.  A
block keeps its calibrated weights where reconstruction does not lower its error on held-out
batches.  This is the post-training-quantization idea of BRECQ (Li et al., ICLR 2021), applied to
the structure instead of a quantization grid.  Memory: one block's inputs and outputs for the
calibration images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import validation as v
from ._hooks import capture, capture_call, default_device, forward_order, read_batches
from .layers import StructuredLayer
from .regularizer import project_gradients_, project_weights_

__all__ = ["BlockReconstruction", "reconstruct_blocks_", "find_blocks"]

OWNER = "reconstruct_blocks_"


@dataclass
class BlockReconstruction:
    """One block: relative output error on the held-out batches before and after; ``kept``:
    the reconstructed weights were better there (else the calibrated ones stay)."""

    name: str
    layers: int
    error_before: float
    error_after: float
    kept: bool


def _structured_count(module: nn.Module) -> int:
    return sum(isinstance(m, StructuredLayer) for m in module.modules())


def find_blocks(model: nn.Module, max_layers: int = 2) -> list[str]:
    """The qualified names of the blocks :func:`reconstruct_blocks_` works on: walking down from
    ``model``, the first modules that hold between 2 and ``max_layers`` structured layers, or one
    structured layer together with other modules (a lone structured layer is already optimal
    after least squares).  Modules with more are split into their children."""
    found: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            full = f"{prefix}.{name}" if prefix else name
            count = _structured_count(child)
            if count == 0 or isinstance(child, StructuredLayer):
                continue
            if count <= max_layers:
                found.append(full)
            else:
                visit(full, child)

    visit("", model)
    return found


def _relative_error(block: nn.Module, inputs, targets) -> float:
    num = den = 0.0
    with torch.no_grad():
        for (args, kwargs), y in zip(inputs, targets):
            num += float((block(*args, **kwargs) - y).double().square().sum())
            den += float(y.double().square().sum())
    return math.sqrt(num / max(den, torch.finfo(torch.float64).tiny))


def reconstruct_blocks_(
    structured: nn.Module,
    dense: nn.Module,
    data: Iterable,
    *,
    steps: int = 200,
    lr: float = 1e-3,
    max_layers: int = 2,
    max_batches: int = 8,
    held_out: float = 0.25,
    device: torch.device | str | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[BlockReconstruction]:
    """Reconstruct each block's output of ``dense`` with the structured weights of
    ``structured`` (calibrated by :func:`~structconv.calibrate_`, so exactly structured), in
    place, on the first ``max_batches`` batches of ``data`` (inputs, or ``(inputs, targets)``
    pairs; targets are not used), ``held_out`` of them kept to check each block.

    Each block (:func:`find_blocks`) gets ``steps`` Adam steps at ``lr``, one calibration batch
    each, each followed by the projection onto the structure.  Both models run in eval mode
    (BatchNorm uses its running statistics) and get their training flags back; only the
    structured layers' weights and biases change.  Returns one row per block, in forward order.
    """
    steps = v.integer(steps, "steps", low=1, owner=OWNER)
    lr = v.number(lr, "lr", low=0.0, low_open=True, owner=OWNER)
    max_layers = v.integer(max_layers, "max_layers", low=1, owner=OWNER)
    max_batches = v.integer(max_batches, "max_batches", low=2, owner=OWNER)
    held_out = v.number(held_out, "held_out", low=0.0, high=1.0, low_open=True, high_open=True, owner=OWNER)
    names = find_blocks(structured, max_layers)
    dense_modules = dict(dense.named_modules())
    missing = [n for n in names if n not in dense_modules]
    if missing:
        raise v.ArgumentError("{dense} has no module {block}", block=repr(missing[0]), owner=OWNER)
    if device is None:
        device = default_device(structured)
    fit, check = read_batches(data, max_batches, held_out, torch.device(device), OWNER)
    blocks = {n: structured.get_submodule(n) for n in names}
    modes = (structured.training, dense.training)
    structured.eval(), dense.eval()
    rows: list[BlockReconstruction] = []
    try:
        order = forward_order(structured, blocks, fit[0])
        for index, name in enumerate(order, 1):
            block = blocks[name]
            row = _reconstruct_block(structured, dense, name, block, dense_modules[name], fit, check, steps, lr)
            rows.append(row)
            if progress is not None:
                progress(
                    f"[{index}/{len(order)}] {name}: block output error {row.error_before:.3f} -> "
                    f"{row.error_after:.3f} ({'kept' if row.kept else 'calibrated weights kept'})"
                )
    finally:
        structured.train(modes[0]), dense.train(modes[1])
    return rows


def _reconstruct_block(structured, dense, name, block, dense_block, fit, check, steps, lr) -> BlockReconstruction:
    inputs = {split: [capture_call(structured, block, x) for x in xs] for split, xs in (("fit", fit), ("check", check))}
    targets = {
        split: [capture(dense, dense_block, x, output=True) for x in xs]
        for split, xs in (("fit", fit), ("check", check))
    }
    layers = [m for m in block.modules() if isinstance(m, StructuredLayer)]
    if not all(isinstance(y, Tensor) for y in targets["fit"] + targets["check"]):
        return BlockReconstruction(name, len(layers), float("nan"), float("nan"), False)  # a block of many outputs
    params = [p for m in layers for p in (m.weight, m.bias) if p is not None]
    saved = [p.detach().clone() for p in params]
    before = _relative_error(block, inputs["check"], targets["check"])
    flags = {p: p.requires_grad for p in block.parameters()}
    chosen = {id(p) for p in params}
    for p in block.parameters():
        p.requires_grad_(id(p) in chosen)
    optimizer = torch.optim.Adam(params, lr=lr)
    try:
        with torch.enable_grad():
            for step in range(steps):
                (args, kwargs), y = inputs["fit"][step % len(fit)], targets["fit"][step % len(fit)]
                loss = F.mse_loss(block(*args, **kwargs), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                project_gradients_(block)
                optimizer.step()
                project_weights_(block)  # Adam's per-coordinate step leaves the subspace: back onto it
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = None
    after = _relative_error(block, inputs["check"], targets["check"])
    kept = after < before
    if not kept:
        with torch.no_grad():
            for p, value in zip(params, saved):
                p.copy_(value)
    return BlockReconstruction(name, len(layers), before, after, kept)
