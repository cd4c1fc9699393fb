"""The fine-tune recipe for a model you trained yourself, as one call on your own ``nn.Module``
and ``DataLoader`` (issue 16): structurize, calibrate (:func:`~structconv.calibrate_`, structures
searched at equal mults), then projected SGD distilled from the dense model.

``structconv train --mode finetune`` runs the same recipe on the datasets and architectures it
knows by name, with checkpoints and resume; this is the loop without them, for models and data
it cannot name (why it is our own loop: no maintained library trains in a structured subspace).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import validation as v
from ._hooks import default_device
from .calibration import CalibrationReport, calibrate_
from .convert import StructurePlan, structurize
from .layers import StructuredLayer
from .reconstruction import reconstruct_blocks_
from .regularizer import project_gradients_, project_weights_

__all__ = ["distillation_loss", "finetune_from_dense"]

OWNER = "finetune_from_dense"


def distillation_loss(logits: Tensor, target_logits: Tensor, temperature: float) -> Tensor:
    """Hinton et al.'s term ``T^2 KL(softmax(teacher / T) || softmax(student / T))``."""
    t = temperature
    return F.kl_div(
        F.log_softmax(logits / t, 1), F.log_softmax(target_logits / t, 1), log_target=True, reduction="batchmean"
    ) * (t * t)


def _pairs(data: Iterable) -> Iterable[tuple[Tensor, Tensor]]:
    for batch in data:
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2 and all(isinstance(b, Tensor) for b in batch[:2])):
            raise v.ArgumentError(
                "{data} must yield (inputs, targets) pairs of tensors, got a {value}",
                value=type(batch).__name__,
                owner=OWNER,
            )
        yield batch[0], batch[1]


def _check_first_batch(dense: nn.Module, data: Iterable, device) -> None:
    """One clear line for data that does not fit the model, or that it turns into inf/NaN."""
    first = next(iter(_pairs(data)), None)
    if first is None:
        raise v.ArgumentError("{data} is empty", owner=OWNER)
    x, y = first[0].to(device), first[1]
    try:
        with torch.no_grad():
            logits = dense(x)
    except (RuntimeError, ValueError) as err:
        raise v.ArgumentError(
            "{data}: a batch of shape {shape} does not fit the model: {why}",
            shape=tuple(x.shape),
            why=str(err).splitlines()[0],
            owner=OWNER,
        ) from None
    if not bool(torch.isfinite(logits).all()):
        raise v.ArgumentError("{data}: the dense model's output on the first batch is not finite", owner=OWNER)
    if logits.dim() != 2 or y.dim() != 1 or y.shape[0] != logits.shape[0]:
        raise v.ArgumentError(
            "{data}: targets of shape {targets} do not match class scores of shape {scores}",
            targets=tuple(y.shape),
            scores=tuple(logits.shape),
            owner=OWNER,
        )


def finetune_from_dense(
    dense: nn.Module,
    data: Iterable,
    *,
    ratio: float | StructurePlan = 2.0,
    steps: int,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    distill: float = 0.9,
    temperature: float = 4.0,
    calibration_batches: int = 8,
    search_structure: bool = True,
    reconstruction_steps: int = 200,
    device: torch.device | str | None = None,
    progress: bool = True,
    **structurize_options: Any,
) -> tuple[nn.Module, CalibrationReport | None]:
    """Compress a trained ``dense`` classifier at ``ratio`` and fine-tune it on ``data``.

    1. :func:`~structconv.structurize` a copy of ``dense`` (``ratio``: a compression ratio or a
       ready :class:`~structconv.StructurePlan`; ``structurize_options`` go to it, e.g.
       ``filter_fn`` or ``example_inputs``);
    2. :func:`~structconv.calibrate_` it on ``calibration_batches`` batches of ``data``, with each
       layer's ``(c, n)`` chosen from the data at equal mults (``search_structure``), then
       :func:`~structconv.reconstruction.reconstruct_blocks_` on the same batches
       (``reconstruction_steps`` Adam steps per block; 0: skip); with ``calibration_batches=0``
       the weight-space projection ``A A^+ W`` instead;
    3. ``steps`` steps of SGD (cosine learning rate from ``lr``) on
       ``(1 - distill) * cross-entropy + distill * distillation_loss`` from ``dense`` at
       ``temperature``, with projected gradients, so the model stays exactly structured.

    Args:
        dense: the trained model (not changed); its output is class scores ``(N, classes)``.
        data: an iterable of ``(inputs, targets)`` batches (a ``DataLoader``), read again from
            the start whenever it runs out.
    Returns ``(model, report)``: the structured model in eval mode -- ``structconv.decompose``
    turns it into the deployed one, exactly -- and the calibration report (``None`` without
    calibration).  The recipe and its defaults are those of ``structconv train --mode finetune``
    (BENCHMARKS.md, "Calibration: from a trained model").
    """
    steps = v.integer(steps, "steps", low=1, owner=OWNER)
    lr = v.number(lr, "lr", low=0.0, low_open=True, owner=OWNER)
    momentum = v.number(momentum, "momentum", low=0.0, high=1.0, high_open=True, owner=OWNER)
    weight_decay = v.number(weight_decay, "weight_decay", low=0.0, owner=OWNER)
    distill = v.number(distill, "distill", low=0.0, high=1.0, owner=OWNER)
    temperature = v.number(temperature, "temperature", low=0.0, low_open=True, owner=OWNER)
    calibration_batches = v.integer(calibration_batches, "calibration_batches", low=0, owner=OWNER)
    reconstruction_steps = v.integer(reconstruction_steps, "reconstruction_steps", low=0, owner=OWNER)
    if calibration_batches == 1:
        raise v.ArgumentError(
            "{calibration_batches}=1: calibration needs at least 2 batches (one is held out)", owner=OWNER
        )
    if not isinstance(dense, nn.Module):
        raise v.ArgumentError("{dense} must be an nn.Module, got a {value}", value=type(dense).__name__, owner=OWNER)
    device = torch.device(default_device(dense) if device is None else device)
    teacher = copy.deepcopy(dense).to(device).eval().requires_grad_(False)
    _check_first_batch(teacher, data, device)

    model = structurize(teacher, ratio, **structurize_options).requires_grad_(True)
    if not any(isinstance(m, StructuredLayer) for m in model.modules()):
        raise v.ArgumentError(
            "{dense} has no layer structurize can convert at {ratio}={value}", value=ratio, owner=OWNER
        )
    report = None
    if calibration_batches:
        report = calibrate_(
            model, teacher, (x for x, _ in _pairs(data)), max_batches=calibration_batches,
            search_structure=search_structure, device=device,
        )  # fmt: skip
        if reconstruction_steps:
            reconstruct_blocks_(
                model, teacher, (x for x, _ in _pairs(data)), steps=reconstruction_steps,
                max_batches=calibration_batches, device=device,
            )  # fmt: skip
    else:
        project_weights_(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="fine-tune", unit="step", dynamic_ncols=True)
    model.train()
    step = 0
    try:
        while step < steps:
            seen = 0
            for x, y in _pairs(data):
                x, y = x.to(device), y.to(device)
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                if distill > 0:
                    with torch.no_grad():
                        target = teacher(x)
                    loss = (1 - distill) * loss + distill * distillation_loss(logits, target, temperature)
                if not bool(torch.isfinite(loss)):
                    raise v.ArgumentError(
                        "the loss became {value} at step {step}; lower {lr}", value=float(loss), step=step, owner=OWNER
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                project_gradients_(model)  # projected SGD: the weights stay in the structured subspace
                optimizer.step()
                schedule.step()
                step, seen = step + 1, seen + 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.3f}")
                if step == steps:
                    break
            if not seen:
                raise v.ArgumentError("{data} gave no batches on a second pass (an exhausted iterator?)", owner=OWNER)
    finally:
        if bar is not None:
            bar.close()
    project_weights_(model)  # float drift off the subspace
    return model.eval(), report
