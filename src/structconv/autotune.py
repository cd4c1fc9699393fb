"""Measured per-layer choices for deployment: decomposed or recomposed dense, and speed-aware plans.

A decomposed layer (sum-pool + small conv) does fewer multiplications than its dense form, but
whether it *runs* faster depends on the layer's shape, the memory layout, the library (oneDNN,
cuDNN) and the machine.  :func:`optimize` measures every decomposed layer of a model on the
inputs it actually sees, against its exact dense equivalent (:meth:`recompose`), keeps the
faster, and caches the decision; both forms compute the same function, so the choice changes
speed only.  :func:`speed_plan` goes one step earlier: for a target ratio it measures the
``(c, n)`` choices that reach the ratio and returns the fastest per layer as ``overrides`` for
:func:`structconv.structurize`.

Measurement follows :mod:`structconv._timing`: same process, interleaved, warm-up, medians,
fixed thread count, ``torch.inference_mode()``.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor, nn

from ._timing import fixed_threads, interleaved_times, median_ms, paired_ratio
from .convert import StructurePlan, StructureSpec, _all_sizes, _check_ratio, _describe, _set_submodule, plan
from .layers import DecomposedLinear, _DecomposedConvNd
from .serialization import atomic_write_json

__all__ = ["LayerChoice", "TuneReport", "optimize", "default_cache_path", "speed_plan", "SpeedPlan"]

_CHOICES = ("decomposed", "dense")


def default_cache_path() -> Path:
    """``$STRUCTCONV_CACHE_DIR/autotune.json``, else ``$XDG_CACHE_HOME/structconv/...``,
    else ``~/.cache/structconv/autotune.json``."""
    root = os.environ.get("STRUCTCONV_CACHE_DIR")
    if root:
        return Path(root) / "autotune.json"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "structconv" / "autotune.json"


@dataclass
class LayerChoice:
    """The measured decision for one decomposed layer."""

    name: str
    layer: str  # short description of the layer's shape and options
    input_shape: tuple[int, ...]
    choice: str  # "decomposed" or "dense"
    pool: str  # sum-pool variant kept when decomposed: channel method ("matmul", "sum", "-"), "+pool"/"+conv" spatial
    decomposed_ms: float
    dense_ms: float
    cached: bool = False

    @property
    def speedup(self) -> float:
        """dense / decomposed time of this layer (> 1: the decomposed form is faster)."""
        return self.dense_ms / self.decomposed_ms if self.decomposed_ms > 0 else float("nan")


@dataclass
class TuneReport:
    """What :func:`optimize` decided for every decomposed layer; ``print()`` it."""

    layers: list[LayerChoice] = field(default_factory=list)
    threads: int = 1
    device: str = "cpu"
    memory_format: str = "contiguous"
    cache_path: str | None = None
    # whole-model check: {"tuned_ms", "all_dense_ms" (medians), "tuned_over_dense" (median per-round
    # ratio), "rounds", "choice": "tuned" | "all_dense"}
    whole_model: dict | None = None

    @property
    def dense_layers(self) -> list[str]:
        return [c.name for c in self.layers if c.choice == "dense"]

    def to_dict(self) -> dict:
        return {
            "threads": self.threads,
            "device": self.device,
            "memory_format": self.memory_format,
            "cache_path": self.cache_path,
            "whole_model": self.whole_model,
            "layers": [dict(asdict(c), speedup=c.speedup) for c in self.layers],
        }

    def __str__(self) -> str:
        rows = [("layer", "shape", "input", "decomposed ms", "dense ms", "speedup", "runs as")]
        for c in self.layers:
            runs = c.choice if c.choice == "dense" else f"decomposed ({c.pool})"
            if c.cached:
                runs += " [cached]"
            rows.append((c.name, c.layer, "x".join(map(str, c.input_shape)), f"{c.decomposed_ms:.3f}",
                         f"{c.dense_ms:.3f}", f"{c.speedup:.2f}x", runs))  # fmt: skip
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        n_dense = len(self.dense_layers)
        head = (
            f"Autotune ({self.device}, {self.threads} thread(s), {self.memory_format}): "
            f"{len(self.layers) - n_dense} layers decomposed, {n_dense} run as recomposed dense kernels"
        )
        tail = []
        if self.whole_model:
            w = self.whole_model
            tail.append(f"whole model ({w['rounds']} rounds): as tuned {w['tuned_ms']:.3f} ms, every layer dense "
                        f"{w['all_dense_ms']:.3f} ms, per-round ratio {w['tuned_over_dense']:.2f}"
                        f" -> runs {'as tuned' if w['choice'] == 'tuned' else 'every layer dense'}")  # fmt: skip
        return "\n".join([head, *lines, *tail])


# ------------------------------------------------------------------------------------------
# cache
# ------------------------------------------------------------------------------------------
def _load_cache(path: Path | None) -> dict:
    if path is None or not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_cache(path: Path | None, entries: dict) -> None:
    if path is None:
        return
    merged = _load_cache(path)
    merged.update(entries)
    atomic_write_json(merged, path, indent=1, sort_keys=True)


def _layout(x: Tensor) -> str:
    if x.is_contiguous():
        return "contiguous"
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return "channels_last_3d"
    return "strided"


def _describe_layer(m: nn.Module) -> str:
    if isinstance(m, _DecomposedConvNd):
        k = "x".join(map(str, m.kernel_size))
        n = "x".join(map(str, m.n))
        s = f"Conv{m._nd}d {m.in_channels}->{m.out_channels} k{k} c{m.c} n{n}"
        if any(v != 1 for v in m.stride):
            s += f" s{'x'.join(map(str, m.stride))}"
        if any(v != 1 for v in m.dilation):
            s += f" d{'x'.join(map(str, m.dilation))}"
        if m.groups != 1:
            s += f" g{m.groups}"
        if m.padding_mode != "zeros":
            s += f" {m.padding_mode}"
        return s
    return f"Linear {m.in_features}->{m.out_features} r{m.r}"


def _cache_key(m: nn.Module, x: Tensor, threads: int) -> str:
    extra = ""
    if isinstance(m, _DecomposedConvNd):
        extra = f"p{m.padding}b{m.bias is not None}"
    return "|".join([
        _describe_layer(m), extra, "x".join(map(str, x.shape)), _layout(x), str(x.dtype).replace("torch.", ""),
        x.device.type, f"t{threads}", f"torch{torch.__version__}",
    ])  # fmt: skip


# ------------------------------------------------------------------------------------------
# optimize
# ------------------------------------------------------------------------------------------
def _tunable(m: nn.Module) -> bool:
    return isinstance(m, (_DecomposedConvNd, DecomposedLinear))


def _call(model: nn.Module, example_input):
    return model(*example_input) if isinstance(example_input, (tuple, list)) else model(example_input)


def _capture_inputs(model: nn.Module, example_input, names: Iterable[str]) -> dict[str, Tensor]:
    inputs: dict[str, Tensor] = {}
    handles = []
    for name in names:
        module = model.get_submodule(name)

        def hook(mod, args, name=name):
            if name not in inputs and args and isinstance(args[0], Tensor):
                inputs[name] = args[0].detach().clone(memory_format=torch.preserve_format)

        handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            _call(model, example_input)
    finally:
        for h in handles:
            h.remove()
    return inputs


def _dense_like(layer: nn.Module, x: Tensor) -> nn.Module:
    dense = layer.recompose()
    if isinstance(layer, _DecomposedConvNd) and x.dim() in (4, 5) and _layout(x).startswith("channels_last"):
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        dense = dense.to(memory_format=fmt)
    return dense.eval()


def _pool_variants(layer: nn.Module) -> list[str]:
    """Sum-pool implementations to time: ``'<channel method>'`` (``'-'`` when there is no
    channel pool), followed by ``'+pool'`` / ``'+conv'`` where the spatial pool can run as one
    kernel (see ``SumPool.spatial_method``)."""
    if not isinstance(layer, _DecomposedConvNd):
        return ["-"]
    channel = ["matmul", "sum"] if layer.pool.channel_window > 1 else ["-"]
    if layer.pool.kernel_padding is None:
        return channel
    return [f"{c}+{s}" for c in channel for s in ("pool", "conv")]


def _set_pool(layer: nn.Module, method: str) -> None:
    if not isinstance(layer, _DecomposedConvNd):
        return
    channel, _, spatial = method.partition("+")
    if channel != "-":
        layer.pool.channel_method = channel
    if spatial:
        layer.pool.spatial_method = spatial


def optimize(
    model: nn.Module,
    example_input,
    *,
    threads: int | None = None,
    cache: bool | str | os.PathLike = True,
    repeats: int = 15,
    warmup: int = 3,
    min_time_s: float = 0.2,
    margin: float = 1.0,
    inplace: bool = False,
    retune: bool = False,
    whole_model: bool = True,
) -> tuple[nn.Module, TuneReport]:
    """Run every decomposed layer in its measured-faster form; exact either way.

    Each ``DecomposedConv{1,2,3}d`` / ``DecomposedLinear`` of ``model`` is timed on the input it
    receives when ``model(example_input)`` runs (same dtype, device and memory layout) against
    its recomposed dense layer, interleaved, and replaced by the dense layer when that is
    faster (``dense_ms * margin < decomposed_ms``); for a decomposed conv the faster channel
    pool (``'matmul'`` or ``'sum'``) is kept.  Both forms compute the same function.

    Args:
        threads: fix ``torch.set_num_threads`` while measuring (the count to deploy with).
        cache: ``True`` for :func:`default_cache_path`, a path, or ``False``.  Decisions are
            keyed by layer shape/options, input shape/layout, dtype, device, threads and torch
            version; cached layers are not re-measured unless ``retune``.
        margin: a dense layer must be this many times faster than the decomposed one to win.
        whole_model: finally time the tuned model against the same model with *every* layer
            dense (interleaved, on ``example_input``) and run every layer dense unless the
            tuned model is faster (median of per-round ratios, times ``margin``).  Layers timed one by
            one can each win by a little and still lose together (per-call overhead, caches);
            at batch 1 on CIFAR-sized layers this check is what keeps the deployed model from
            being slower than the dense one.  Not cached: it measures this model as a whole.

    Measure under the allocator settings you deploy with: with glibc's defaults a young
    process may page-fault its activations on every call, which once timed a CIFAR ResNet56
    at 66.6 ms tuned vs 57.4 ms all-dense, where it later ran 35.3 vs 44.1 ms (BENCHMARKS.md;
    see :mod:`structconv.allocator`).

    Returns ``(model, report)``: the model (a copy unless ``inplace``) and a :class:`TuneReport`.
    """
    if not inplace:
        model = copy.deepcopy(model)
    names = [name for name, m in model.named_modules() if _tunable(m) and name]
    if isinstance(model, (_DecomposedConvNd, DecomposedLinear)):
        raise ValueError("optimize: pass a model containing decomposed layers, not a single layer")
    if not names:
        raise ValueError(
            f"optimize: {type(model).__name__} has no decomposed layers; call structconv.decompose() first"
        )
    if cache is True:
        cache_path: Path | None = default_cache_path()
    elif cache is False or cache is None:
        cache_path = None
    else:
        cache_path = Path(cache)
    entries = {} if retune else _load_cache(cache_path)
    new_entries: dict[str, dict] = {}
    was_training = model.training
    model.eval()
    report = TuneReport()
    with fixed_threads(threads) as n_threads:
        report.threads = n_threads
        inputs = _capture_inputs(model, example_input, names)
        first = next(iter(inputs.values()), None)
        if first is not None:
            report.device = str(first.device)
            report.memory_format = _layout(first)
        with torch.inference_mode():
            for name in names:
                layer = model.get_submodule(name)
                if name not in inputs:  # not reached by this input
                    continue
                x = inputs[name]
                key = _cache_key(layer, x, n_threads)
                hit = entries.get(key)
                if hit is not None and hit.get("choice") in _CHOICES:
                    choice, pool = hit["choice"], hit.get("pool", "-")
                    dec_ms, dense_ms, cached = float(hit["decomposed_ms"]), float(hit["dense_ms"]), True
                else:
                    dense = _dense_like(layer, x)
                    fns = {"dense": lambda d=dense: d(x)}
                    pools = _pool_variants(layer)
                    variants = {}
                    for method in pools:
                        variant = copy.deepcopy(layer)
                        _set_pool(variant, method)
                        variants[method] = variant
                        fns[f"dec:{method}"] = lambda v=variant: v(x)
                    times = interleaved_times(fns, warmup=warmup, repeats=repeats, min_time_s=min_time_s,
                                              device=x.device)  # fmt: skip
                    medians = {k: median_ms(v) for k, v in times.items()}
                    pool = min(pools, key=lambda p: medians[f"dec:{p}"])
                    dec_ms, dense_ms = medians[f"dec:{pool}"], medians["dense"]
                    choice = "dense" if dense_ms * margin < dec_ms else "decomposed"
                    cached = False
                    new_entries[key] = {"choice": choice, "pool": pool, "decomposed_ms": dec_ms, "dense_ms": dense_ms}
                if choice == "dense":
                    _set_submodule(model, name, _dense_like(layer, x))
                else:
                    _set_pool(layer, pool)
                report.layers.append(LayerChoice(name, _describe_layer(layer), tuple(x.shape), choice,
                                                 pool if choice == "decomposed" else "-", dec_ms, dense_ms, cached))  # fmt: skip
            if whole_model and any(c.choice == "decomposed" for c in report.layers):
                _check_whole_model(model, example_input, inputs, report, warmup=warmup, repeats=repeats,
                                   min_time_s=min_time_s, margin=margin)  # fmt: skip
    if new_entries:
        try:
            _save_cache(cache_path, new_entries)
        except OSError:
            pass  # a read-only cache location must not break deployment
    report.cache_path = str(cache_path) if cache_path is not None else None
    model.train(was_training)
    return model, report


def _check_whole_model(model, example_input, inputs, report: TuneReport, *, warmup, repeats, min_time_s, margin):
    """Time ``model`` as tuned against it with every decomposed layer dense, interleaved; switch
    to the latter (in place) unless the median per-round ratio tuned / dense is below ``margin``.
    Records ``report.whole_model``."""
    decomposed = [c for c in report.layers if c.choice == "decomposed"]
    all_dense = copy.deepcopy(model)
    dense_layers = {c.name: _dense_like(all_dense.get_submodule(c.name), inputs[c.name]) for c in decomposed}
    for name, layer in dense_layers.items():
        _set_submodule(all_dense, name, layer)
    device = inputs[decomposed[0].name].device
    times = interleaved_times({"tuned": lambda: _call(model, example_input), "dense": lambda: _call(all_dense, example_input)},
                              warmup=warmup, repeats=repeats, min_time_s=max(min_time_s, 1.0), device=device)  # fmt: skip
    # Decide on the median of the per-round ratios: both models run back to back in every
    # round, so a slow phase of a shared machine (harder on the memory-bound decomposed
    # model) hits both and cancels in the ratio.
    ratio = paired_ratio(times["tuned"], times["dense"])
    # Ties go to dense, the reference: a deployed model must never be slower than it.  With a
    # 5 % allowance CIFAR ResNet56 at batch 1 kept a tuned model measured 0.95x.
    choice = "all_dense" if ratio >= margin else "tuned"
    report.whole_model = {"tuned_ms": median_ms(times["tuned"]), "all_dense_ms": median_ms(times["dense"]),
                          "tuned_over_dense": ratio, "rounds": len(times["tuned"]), "choice": choice}  # fmt: skip
    if choice == "all_dense":
        for c in decomposed:
            _set_submodule(model, c.name, dense_layers[c.name])
            c.choice, c.pool = "dense", "-"


# ------------------------------------------------------------------------------------------
# speed-aware plan
# ------------------------------------------------------------------------------------------
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
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join([f"SpeedPlan ({self.threads} thread(s)): {len(self.overrides)} layers", *lines])


def candidate_structures(channels: int, kernel_size: tuple[int, ...], ratio: float, *, slack: float = 1.15):
    """The Pareto-largest ``(c, n)`` per kernel size ``n`` that reach ``ratio``: for each ``n``
    the largest ``c`` with ``C prod(k) / (c prod(n)) >= ratio``, keeping those within ``slack``
    of the most degrees of freedom (so a fast but much smaller choice is not preferred)."""
    ratio = _check_ratio(ratio, "candidate_structures")
    full = channels * math.prod(kernel_size)
    budget = full / ratio * (1 + 1e-9)
    found = []
    for n in _all_sizes(kernel_size):
        c = min(channels, int(budget // math.prod(n)))
        if c >= 1 and c * math.prod(n) < full:
            found.append(StructureSpec(c, n))
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
    from .convert import _structured_from_dense

    if isinstance(ratio, StructurePlan):
        if filter_fn is not None:
            raise ValueError("speed_plan: pass filter_fn to plan() when giving a reference StructurePlan")
        base = ratio
    else:
        base = plan(model, _check_ratio(ratio, "speed_plan"), filter_fn=filter_fn)
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
        inputs = _capture_inputs(model, example_input, names)
        with torch.inference_mode():
            for entry in base.structured:
                name = entry.name
                if name not in inputs:
                    continue
                module = model.get_submodule(name)
                _, channels, kernel = _describe(module)
                cands = candidate_structures(channels, kernel, entry.ratio, slack=slack)
                own = entry.spec
                if isinstance(own.n, int):
                    own = StructureSpec(own.c, (own.n,) * len(kernel))
                if own not in cands:  # the reference's own choice always competes
                    cands.append(own)
                if len(cands) <= 1:
                    continue
                x = inputs[name]
                fns = {}
                for spec in cands:
                    dec = _structured_from_dense(module, spec).decompose().eval()
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

