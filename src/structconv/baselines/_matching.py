"""Shared pieces of the mults matching: the count, the tolerance check, per-layer rounding order."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..complexity import count_ops

#: the study compares methods at matched multiplications: within this relative distance of the target
TOLERANCE = 0.03


def input_size(example_input: torch.Tensor) -> tuple[int, ...]:
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 2:
        raise ValueError(f"example_input must be a batched tensor such as (1, C, H, W), got {example_input!r:.80}")
    return tuple(example_input.shape)


def eval_forward(model: nn.Module, example_input: torch.Tensor, hooks=()) -> torch.Tensor:
    """One no-grad forward of ``model`` in eval mode (BatchNorm statistics untouched), with the
    forward hooks ``(module, fn)`` of ``hooks`` attached for it; restores the training flag and
    removes the hooks whatever happens.  Returns the output."""
    handles = [module.register_forward_hook(fn) for module, fn in hooks]
    was_training = model.training
    try:
        with torch.no_grad():
            return model.eval()(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()


def mults_of(model: nn.Module, size: tuple[int, ...]) -> int:
    """The paper's multiplication count (:func:`structconv.count_ops`) of ``model`` on ``size``."""
    return count_ops(model, size).mults


def check_target(target_mults, dense_mults: int, tolerance: float, who: str) -> int:
    """Validate ``target_mults`` against the dense model: positive and not above what it already costs."""
    if not isinstance(target_mults, (int, float)) or isinstance(target_mults, bool) or not math.isfinite(target_mults):
        raise ValueError(f"{who}: target_mults={target_mults!r} must be a finite number")
    if target_mults <= 0:
        raise ValueError(f"{who}: target_mults={target_mults!r} must be positive")
    if not 0 <= tolerance < 1:
        raise ValueError(f"{who}: tolerance={tolerance!r} must be in [0, 1)")
    if target_mults > dense_mults * (1 + tolerance):
        raise ValueError(
            f"{who}: target_mults={target_mults:,.0f} is above the dense model's {dense_mults:,} mults; "
            "these methods only remove computation"
        )
    return target_mults


def within(mults: int, target: float, tolerance: float) -> bool:
    return abs(mults - target) <= tolerance * target


def miss(who: str, target: float, reached: int, tolerance: float, why: str) -> ValueError:
    return ValueError(
        f"{who}: cannot match target_mults={target:,.0f} within ±{tolerance:.0%}: reached {reached:,} "
        f"({reached / target - 1:+.1%}); {why}"
    )


def rounding_order(full_sizes: list[int], *, min_size: int = 1) -> list[int]:
    """Order in which a uniformly shrinking ratio takes one unit (rank, channel) off each item.

    With one ratio ``rho`` for all items, item ``i`` keeps ``round(rho * full_sizes[i])`` units,
    so it drops from ``n`` to ``n - 1`` units when ``rho`` passes ``(n - 0.5) / full_sizes[i]``.
    Items of the same size cross their thresholds at the same ``rho`` and the total then moves
    in one large jump (every 16-channel layer of a CIFAR ResNet at once); applying the
    decrements one at a time in this order gives every total in between, while each item stays
    within one unit of ``round(rho * full)`` for the ``rho`` of the last decrement.  Returns the
    item index of each decrement, largest ``rho`` first; ties go to the larger item (the smaller
    relative change), then to the earlier one.
    """
    events = [((n - 0.5) / full, -full, i, n) for i, full in enumerate(full_sizes) for n in range(full, min_size, -1)]
    events.sort(key=lambda e: (-e[0], e[1], e[2]))
    return [i for _, _, i, _ in events]


def sizes_after(full_sizes: list[int], order: list[int], steps: int) -> list[int]:
    """Item sizes after the first ``steps`` decrements of ``order``."""
    sizes = list(full_sizes)
    for i in order[:steps]:
        sizes[i] -= 1
    return sizes


def closest_step(cost, n_steps: int, target: float, *, close_enough: float = 0.0) -> tuple[int, int]:
    """``(step, cost(step))`` closest to ``target`` for a ``cost`` non-increasing in ``step`` (0..n_steps).

    A bracketing search: the first step at or below the target, or the one before it, is the
    closest.  ``cost`` may be expensive (a model build and count), so probes interpolate
    linearly inside the bracket (costs fall about linearly in the step), with a plain
    bisection whenever an interpolated probe did not halve the bracket; the search stops early
    at a step within ``close_enough * target`` of the target.
    """
    cache: dict[int, int] = {}

    def c(step: int) -> int:
        if step not in cache:
            cache[step] = cost(step)
        return cache[step]

    lo, hi = 0, n_steps  # c(lo) > target >= c(hi) once both ends are checked
    if c(hi) > target:
        return hi, c(hi)
    if c(lo) <= target:
        return lo, c(lo)
    interpolate = True
    while hi - lo > 1:
        if interpolate:
            guess = lo + (c(lo) - target) / max(c(lo) - c(hi), 1) * (hi - lo)
            mid = min(hi - 1, max(lo + 1, round(guess)))
        else:
            mid = (lo + hi) // 2
        width = hi - lo
        if c(mid) <= target:
            hi = mid
        else:
            lo = mid
        if abs(c(mid) - target) <= close_enough * target:
            return mid, c(mid)
        interpolate = hi - lo <= width // 2
    best = lo if abs(c(lo) - target) < abs(c(hi) - target) else hi
    return best, c(best)
