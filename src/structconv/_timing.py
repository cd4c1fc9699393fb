"""Interleaved timing: the one measurement procedure behind ``bench`` and ``autotune``.

Variants are timed in the same process, round-robin (A B A B ...), after warm-up, and
summarised by medians, so slow drifts of a shared machine hit every variant alike.  CUDA
work is timed with CUDA events; CPU work with ``time.perf_counter``.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from typing import Callable, Mapping

import torch

__all__ = [
    "interleaved_times",
    "median_ms",
    "paired_ratio",
    "fixed_threads",
    "page_faults_per_call",
    "call",
    "capture_inputs",
]


@contextmanager
def fixed_threads(threads: int | None):
    """Set ``torch.set_num_threads(threads)`` for the block (no-op when ``None``)."""
    if threads is None:
        yield torch.get_num_threads()
        return
    if threads < 1:
        raise ValueError(f"threads={threads} must be >= 1")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(old)


def _time_once(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def interleaved_times(
    fns: Mapping[str, Callable[[], object]],
    *,
    warmup: int = 3,
    repeats: int = 15,
    min_time_s: float = 0.0,
    max_repeats: int | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, list[float]]:
    """Milliseconds per call of every variant, timed round-robin after ``warmup`` rounds.

    At least ``repeats`` rounds run, more while the total stays under ``min_time_s`` (up to
    ``max_repeats``).  The order within a round alternates, so no variant always runs first.
    """
    device = torch.device(device)
    names = list(fns)
    if not names:
        return {}
    for _ in range(max(warmup, 0)):
        for name in names:
            fns[name]()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    rounds = 0
    cap = max_repeats if max_repeats is not None else max(repeats, 1) * 20
    while rounds < repeats or (time.perf_counter() - start < min_time_s and rounds < cap):
        order = names if rounds % 2 == 0 else names[::-1]
        for name in order:
            times[name].append(_time_once(fns[name], device))
        rounds += 1
    return times


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median of the per-round ratios of two variants from :func:`interleaved_times`: both ran
    back to back in every round, so a slow phase of a shared machine hits both and cancels."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def page_faults_per_call(fn: Callable[[], object], calls: int = 5) -> float | None:
    """Minor page faults of this process per call of ``fn`` (after one untimed call), or
    ``None`` where ``resource`` is unavailable.  Each is a page the kernel zero-filled because
    the allocator had returned it: see :mod:`structconv.allocator`."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return None
    fn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def call(model, example_input):
    """``model(*example_input)`` for a tuple/list of inputs, else ``model(example_input)``."""
    return model(*example_input) if isinstance(example_input, (tuple, list)) else model(example_input)


def capture_inputs(model, example_input, names) -> dict:
    """``{name: the first tensor input of submodule name}`` during one ``model(example_input)``
    under ``torch.inference_mode()`` (cloned, memory layout kept): what each layer really sees."""
    inputs: dict = {}
    handles = []
    for name in names:
        module = model.get_submodule(name)

        def hook(mod, args, name=name):
            if name not in inputs and args and isinstance(args[0], torch.Tensor):
                inputs[name] = args[0].detach().clone(memory_format=torch.preserve_format)

        handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            call(model, example_input)
    finally:
        for h in handles:
            h.remove()
    return inputs
