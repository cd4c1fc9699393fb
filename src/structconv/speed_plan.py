"""The speed-aware plan: per layer, the fastest *measured* ``(c, n)`` with a plan's compression.

It sits beside :func:`structconv.plan` and draws its candidates from the same enumeration
(:func:`structconv.convert.structure_candidates`); where :func:`~structconv.plan` keeps the most
degrees of freedom, :func:`speed_plan` times the decomposed layer of every candidate on the
input it really sees (interleaved, medians, fixed threads: :mod:`structconv._timing`) and keeps
the fastest.  The deploy-time choice for an already decomposed model is
:func:`structconv.autotune.optimize`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ._timing import capture_inputs, fixed_threads, interleaved_times, median_ms
from .convert import (
    StructurePlan,
    StructureSpec,
    check_ratio,
    describe_layer,
    plan,
    structure_candidates,
    structured_from_dense,
)
from .reporting import format_table

__all__ = ["SpeedPlan", "candidate_structures", "speed_plan"]


@dataclass
class SpeedPlan:
    """Per-layer ``(c, n)`` chosen by measured speed among those reaching the ratio."""

    overrides: dict[str, StructureSpec] = field(default_factory=dict)
    rows: list[tuple[str, str, str, float, float]] = field(default_factory=list)  # name, shape, spec, ms, ratio
    candidates: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> {spec: ms}
    threads: int = 1

    def __str__(self) -> str:
        rows = [("layer", "C/g x kernel", "fastest c x n", "ms", "ratio", "others (ms)")]
        for name, shape, spec, ms, ratio in self.rows:
            others = ", ".join(f"{k}:{v:.3f}" for k, v in self.candidates.get(name, {}).items() if k != spec)
            rows.append((name, shape, spec, f"{ms:.3f}", f"{ratio:.2f}", others))
        return "\n".join([f"SpeedPlan ({self.threads} thread(s)): {len(self.overrides)} layers", format_table(rows)])


def candidate_structures(channels: int, kernel_size: tuple[int, ...], ratio: float, *, slack: float = 1.15):
    """The candidates of :func:`~structconv.convert.structure_candidates` that compress (fewer
    degrees of freedom than the dense kernel) and stay within ``slack`` of the one with the most
    degrees of freedom, so a fast but much smaller choice is not preferred."""
    ratio = check_ratio(ratio, "candidate_structures")
    full = channels * math.prod(kernel_size)
    found = [s for s in structure_candidates(channels, kernel_size, ratio) if s.c * math.prod(s.n) < full]
    if not found:
        return []
    best = max(s.c * math.prod(s.n) for s in found)
    return [s for s in found if s.c * math.prod(s.n) * slack >= best]


def speed_plan(
    model: nn.Module,
    example_input,
    ratio: float | StructurePlan = 2.0,
    *,
    threads: int | None = None,
    memory_format: torch.memory_format = torch.channels_last,
    filter_fn=None,
    slack: float = 1.15,
    repeats: int = 9,
    warmup: int = 2,
) -> SpeedPlan:
    """Per layer, the fastest measured ``(c, n)`` among the choices that reach ``ratio``.

    ``ratio`` is one target for every layer, or a reference :class:`StructurePlan` of
    ``model`` (e.g. the paper's Struct-A plan): then each of its structured conv layers keeps
    its own ratio and its own ``(c, n)`` is among the candidates.  Every Conv layer selected
    by ``filter_fn`` (default: all convertible convs with more than one choice) is decomposed
    with each candidate of :func:`candidate_structures` and timed on the input it sees in
    ``model(example_input)``, interleaved.  ``slack`` bounds how much more a candidate may
    compress than the ratio asks (1.15: at most 15 % fewer weights than the largest choice),
    so the plan keeps the compression, and the accuracy, it was asked for.  Returns a
    :class:`SpeedPlan` whose ``overrides`` go straight into ``structconv.structurize(model,
    ratio, overrides=plan.overrides)`` (merged over the reference plan's own overrides).
    Linear layers keep the default (or reference) plan.
    """
    if isinstance(ratio, StructurePlan):
        if filter_fn is not None:
            raise ValueError("speed_plan: pass filter_fn to plan() when giving a reference StructurePlan")
        base = ratio
    else:
        base = plan(model, check_ratio(ratio, "speed_plan"), filter_fn=filter_fn)
    if not slack >= 1.0:
        raise ValueError(f"speed_plan: slack={slack} must be >= 1")
    names = [p.name for p in base.structured if p.layer_type.startswith("Conv")]
    model = copy.deepcopy(model).eval()
    if memory_format is not None:
        model = model.to(memory_format=memory_format)
        if isinstance(example_input, Tensor) and example_input.dim() == 4:
            example_input = example_input.contiguous(memory_format=memory_format)
    result = SpeedPlan()
    with fixed_threads(threads) as n_threads:
        result.threads = n_threads
        inputs = capture_inputs(model, example_input, names)
        with torch.inference_mode():
            for entry in base.structured:
                name = entry.name
                if name not in inputs:
                    continue
                module = model.get_submodule(name)
                _, channels, kernel = describe_layer(module)
                cands = candidate_structures(channels, kernel, entry.ratio, slack=slack)
                own = entry.spec.resolved(kernel)
                if own not in cands:  # the reference's own choice always competes
                    cands.append(own)
                if len(cands) <= 1:
                    continue
                x = inputs[name]
                fns = {}
                for spec in cands:
                    dec = structured_from_dense(module, spec).decompose().eval()
                    if x.dim() == 4 and memory_format is not None:
                        dec = dec.to(memory_format=memory_format)
                    fns[f"{spec.c}x{'x'.join(map(str, spec.n))}"] = lambda d=dec: d(x)
                times = interleaved_times(fns, warmup=warmup, repeats=repeats, device=x.device)
                medians = {k: median_ms(v) for k, v in times.items()}
                best_key = min(medians, key=medians.get)
                spec = cands[list(fns).index(best_key)]
                result.overrides[name] = spec
                result.candidates[name] = medians
                shape = "x".join(str(v) for v in (channels, *kernel))
                r = channels * math.prod(kernel) / (spec.c * math.prod(spec.n))
                result.rows.append((name, shape, best_key, medians[best_key], r))
    return result
