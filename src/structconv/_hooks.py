"""Reading calibration data and watching a model's forward through hooks: what the data-aware
steps (:mod:`structconv.calibration`, :mod:`structconv.reconstruction`) share."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor, nn

from . import validation as v

__all__ = ["model_inputs", "read_batches", "forward_order", "capture", "capture_call", "default_device"]


class _Captured(Exception):
    """Raised by a hook once it has what it needs, so the rest of the forward is skipped."""


def model_inputs(batch: Any, owner: str = "calibrate_") -> Tensor:
    """The model input of a batch: a tensor, or the first item of a (images, targets) pair."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise v.ArgumentError(
        "{data} must yield tensors or (inputs, targets) pairs, got a {value}",
        value=type(batch).__name__,
        owner=owner,
    )


def read_batches(data: Iterable, max_batches: int, held_out: float, device, owner: str) -> tuple[list, list]:
    """The first ``max_batches`` input batches of ``data`` on ``device``, split into
    ``(fit, held out)``; at least 2 are needed (one is held out)."""
    batches = []
    for batch in data:
        batches.append(model_inputs(batch, owner).to(device))
        if len(batches) == max_batches:
            break
    if len(batches) < 2:
        raise v.ArgumentError(
            "{data} gave {value} batch(es); calibration needs at least 2", value=len(batches), owner=owner
        )
    n_held = min(len(batches) - 1, max(1, round(held_out * len(batches))))
    return batches[: len(batches) - n_held], batches[len(batches) - n_held :]


def forward_order(model: nn.Module, layers: dict[str, nn.Module], x: Tensor) -> list[str]:
    """The names of ``layers`` in the order ``model``'s forward on ``x`` first calls them."""
    order: list[str] = []
    handles = [
        m.register_forward_pre_hook(lambda mod, args, name=name: order.append(name) if name not in order else None)
        for name, m in layers.items()
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return order


def capture(model: nn.Module, module: nn.Module, x: Tensor, *, output: bool) -> Tensor:
    """The input (or output) of ``module`` when ``model`` runs on ``x``; the forward stops there."""
    seen: list[Tensor] = []

    def pre_hook(mod, args):
        seen.append(args[0].detach())
        raise _Captured

    def hook(mod, args, out):
        seen.append(out.detach())
        raise _Captured

    handle = module.register_forward_hook(hook) if output else module.register_forward_pre_hook(pre_hook)
    return _run_until_captured(model, x, handle, seen)


def _run_until_captured(model: nn.Module, x: Tensor, handle, seen: list):
    """Run ``model`` on ``x`` until the hook behind ``handle`` has filled ``seen``; remove it."""
    try:
        with torch.no_grad():
            model(x)
    except _Captured:
        pass
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError("the module did not run")  # callers check the order first
    return seen[0]


def default_device(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters are (the CPU for a model without any)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def capture_call(model: nn.Module, module: nn.Module, x: Tensor) -> tuple[tuple, dict]:
    """The positional and keyword arguments ``module`` is called with when ``model`` runs on
    ``x`` (tensors detached); the forward stops there."""
    seen: list[tuple[tuple, dict]] = []

    def pre_hook(mod, args, kwargs):
        detach = lambda a: a.detach() if isinstance(a, Tensor) else a  # noqa: E731
        seen.append((tuple(detach(a) for a in args), {k: detach(a) for k, a in kwargs.items()}))
        raise _Captured

    handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    return _run_until_captured(model, x, handle, seen)
