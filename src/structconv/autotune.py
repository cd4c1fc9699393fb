"""Deploy-time choice, measured: each decomposed layer runs decomposed (in its fastest sum-pool
backends) or as its recomposed dense kernel.

A decomposed layer (sum-pool + small conv) does fewer multiplications than its dense form, but
whether it *runs* faster depends on the layer's shape, the memory layout, the library (oneDNN,
cuDNN) and the machine.  :func:`optimize` measures every decomposed layer of a model on the
inputs it actually sees, in every applicable combination of sum-pool backends
(:data:`structconv.pooling.BACKENDS`), against its exact dense equivalent (:meth:`recompose`),
keeps the fastest, and caches the decision; every form computes the same function, so the
choice changes speed only.  The plan-time counterpart, which picks ``(c, n)`` by speed before
training, is :func:`structconv.speed_plan.speed_plan`.

Measurement follows :mod:`structconv._timing`: same process, interleaved, warm-up, medians,
fixed thread count, ``torch.inference_mode()``.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from . import pooling as _sp
from ._io import atomic_write_json
from ._timing import call, capture_inputs, fixed_threads, interleaved_times, median_ms, paired_ratio
from .convert import set_submodule
from .layers import DecomposedConvNd, DecomposedLinear
from .reporting import format_table
from .speed_plan import SpeedPlan, candidate_structures, speed_plan  # noqa: F401 - their former home

__all__ = [
    "LayerChoice",
    "TuneReport",
    "optimize",
    "default_cache_path",
    "describe_layer",
    "layer_key",
    "tunable",
    "dense_like",
    "pool_variants",
    "set_pool",
]

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
            rows.append(
                (
                    c.name,
                    c.layer,
                    "x".join(map(str, c.input_shape)),
                    f"{c.decomposed_ms:.3f}",
                    f"{c.dense_ms:.3f}",
                    f"{c.speedup:.2f}x",
                    runs,
                )
            )
        n_dense = len(self.dense_layers)
        head = (
            f"Autotune ({self.device}, {self.threads} thread(s), {self.memory_format}): "
            f"{len(self.layers) - n_dense} layers decomposed, {n_dense} run as recomposed dense kernels"
        )
        tail = []
        if self.whole_model:
            w = self.whole_model
            tail.append(
                f"whole model ({w['rounds']} rounds): as tuned {w['tuned_ms']:.3f} ms, every layer dense "
                f"{w['all_dense_ms']:.3f} ms, per-round ratio {w['tuned_over_dense']:.2f}"
                f" -> runs {'as tuned' if w['choice'] == 'tuned' else 'every layer dense'}"
            )
        return "\n".join([head, format_table(rows), *tail])


# ------------------------------------------------------------------------------------------
# cache
# ------------------------------------------------------------------------------------------
_ENTRY_FIELDS = {"choice": str, "pool": str, "decomposed_ms": (int, float), "dense_ms": (int, float)}


def _valid_pool(pool: str) -> bool:
    """A recorded variant (``'<channel>'`` or ``'<channel>+<spatial>'``) names known backends."""
    channel, _, spatial = pool.partition("+")
    return (channel == "-" or channel in _sp.BACKENDS["channel"]) and (
        not spatial or spatial in _sp.BACKENDS["spatial"]
    )


def _valid_entry(entry) -> bool:
    return (
        isinstance(entry, dict)
        and all(isinstance(entry.get(k), t) for k, t in _ENTRY_FIELDS.items())
        and entry["choice"] in _CHOICES
        and _valid_pool(entry["pool"])
    )


def _load_cache(path: Path | None) -> dict:
    """The cached decisions at ``path``; a cache that cannot be read, or entries that are not
    decisions this version understands, are ignored with a warning (and re-measured)."""
    if path is None or not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        warnings.warn(
            f"autotune cache {str(path)!r} is unreadable ({type(err).__name__}); ignoring it, it will be rebuilt",
            RuntimeWarning,
            stacklevel=3,
        )
        return {}
    if not isinstance(data, dict):
        warnings.warn(
            f"autotune cache {str(path)!r} is not a JSON object; ignoring it, it will be rebuilt",
            RuntimeWarning,
            stacklevel=3,
        )
        return {}
    good = {k: v for k, v in data.items() if _valid_entry(v)}
    if len(good) < len(data):
        warnings.warn(
            f"autotune cache {str(path)!r}: ignoring {len(data) - len(good)} malformed entries "
            "(they will be re-measured)",
            RuntimeWarning,
            stacklevel=3,
        )
    return good


def _save_cache(path: Path | None, entries: dict) -> None:
    if path is None:
        return
    with warnings.catch_warnings():  # already reported when the cache was read
        warnings.simplefilter("ignore", RuntimeWarning)
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


def describe_layer(m: nn.Module) -> str:
    """One line: a decomposed layer's type, channels, kernel, structure and options."""
    if isinstance(m, DecomposedConvNd):
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


def layer_key(m: nn.Module, x: Tensor, threads: int) -> str:
    """What a timing of ``m`` on ``x`` depends on (shape, options, input layout, dtype, threads, torch)."""
    extra = ""
    if isinstance(m, DecomposedConvNd):
        extra = f"p{m.padding}b{m.bias is not None}"
    return "|".join(
        [
            describe_layer(m),
            extra,
            "x".join(map(str, x.shape)),
            _layout(x),
            str(x.dtype).replace("torch.", ""),
            x.device.type,
            f"t{threads}",
            f"torch{torch.__version__}",
        ]
    )


# ------------------------------------------------------------------------------------------
# optimize
# ------------------------------------------------------------------------------------------
def tunable(m: nn.Module) -> bool:
    """Whether ``m`` is a decomposed layer that can run decomposed or recomposed."""
    return isinstance(m, (DecomposedConvNd, DecomposedLinear))


def dense_like(layer: nn.Module, x: Tensor) -> nn.Module:
    """The recomposed dense layer of ``layer``, in the memory layout of ``x`` (same function)."""
    dense = layer.recompose()
    if isinstance(layer, DecomposedConvNd) and x.dim() in (4, 5) and _layout(x).startswith("channels_last"):
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        dense = dense.to(memory_format=fmt)
    return dense.eval()


def pool_variants(layer: nn.Module, x: Tensor) -> list[str]:
    """Sum-pool variants to time for ``layer`` on input ``x``: every applicable combination of
    backends from :data:`structconv.pooling.BACKENDS`, written ``'<channel>+<spatial>'``
    (``'-'`` when there is no channel pool; the spatial part only where several backends apply)."""
    if not isinstance(layer, DecomposedConvNd):
        return ["-"]
    spec = layer.pool.spec
    channel = _sp.applicable_backends("channel", spec, x) if spec.channel_window > 1 else ["-"]
    spatial = _sp.applicable_backends("spatial", spec, x)
    if len(spatial) <= 1:
        return channel
    return [f"{c}+{s}" for c in channel for s in spatial]


def set_pool(layer: nn.Module, method: str) -> None:
    """Pin ``layer``'s sum-pool to a variant from :func:`pool_variants`."""
    if not isinstance(layer, DecomposedConvNd):
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
    process may page-fault its activations on every call, which has misled this check
    (BENCHMARKS.md; see :mod:`structconv.allocator`).

    Returns ``(model, report)``: the model (a copy unless ``inplace``) and a :class:`TuneReport`.
    """
    if not inplace:
        model = copy.deepcopy(model)
    names = [name for name, m in model.named_modules() if tunable(m) and name]
    if isinstance(model, (DecomposedConvNd, DecomposedLinear)):
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
        inputs = capture_inputs(model, example_input, names)
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
                key = layer_key(layer, x, n_threads)
                hit = entries.get(key)
                if hit is not None and hit.get("choice") in _CHOICES:
                    choice, pool = hit["choice"], hit.get("pool", "-")
                    dec_ms, dense_ms, cached = float(hit["decomposed_ms"]), float(hit["dense_ms"]), True
                else:
                    dense = dense_like(layer, x)
                    fns = {"dense": lambda d=dense: d(x)}
                    pools = pool_variants(layer, x)
                    variants = {}
                    for method in pools:
                        variant = copy.deepcopy(layer)
                        set_pool(variant, method)
                        variants[method] = variant
                        fns[f"dec:{method}"] = lambda v=variant: v(x)
                    times = interleaved_times(
                        fns, warmup=warmup, repeats=repeats, min_time_s=min_time_s, device=x.device
                    )
                    medians = {k: median_ms(v) for k, v in times.items()}
                    pool = min(pools, key=lambda p: medians[f"dec:{p}"])
                    dec_ms, dense_ms = medians[f"dec:{pool}"], medians["dense"]
                    choice = "dense" if dense_ms * margin < dec_ms else "decomposed"
                    cached = False
                    new_entries[key] = {"choice": choice, "pool": pool, "decomposed_ms": dec_ms, "dense_ms": dense_ms}
                if choice == "dense":
                    set_submodule(model, name, dense_like(layer, x))
                else:
                    set_pool(layer, pool)
                report.layers.append(
                    LayerChoice(
                        name,
                        describe_layer(layer),
                        tuple(x.shape),
                        choice,
                        pool if choice == "decomposed" else "-",
                        dec_ms,
                        dense_ms,
                        cached,
                    )
                )
            if whole_model and any(c.choice == "decomposed" for c in report.layers):
                _check_whole_model(
                    model,
                    example_input,
                    inputs,
                    report,
                    warmup=warmup,
                    repeats=repeats,
                    min_time_s=min_time_s,
                    margin=margin,
                )
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
    dense_layers = {c.name: dense_like(all_dense.get_submodule(c.name), inputs[c.name]) for c in decomposed}
    for name, layer in dense_layers.items():
        set_submodule(all_dense, name, layer)
    device = inputs[decomposed[0].name].device
    times = interleaved_times(
        {"tuned": lambda: call(model, example_input), "dense": lambda: call(all_dense, example_input)},
        warmup=warmup,
        repeats=repeats,
        min_time_s=max(min_time_s, 1.0),
        device=device,
    )
    # Decide on the median of the per-round ratios: both models run back to back in every
    # round, so a slow phase of a shared machine (harder on the memory-bound decomposed
    # model) hits both and cancels in the ratio.
    ratio = paired_ratio(times["tuned"], times["dense"])
    # Ties go to dense, the reference: a deployed model must never be slower than it (an
    # allowance kept measurably slower tuned models).
    choice = "all_dense" if ratio >= margin else "tuned"
    report.whole_model = {
        "tuned_ms": median_ms(times["tuned"]),
        "all_dense_ms": median_ms(times["dense"]),
        "tuned_over_dense": ratio,
        "rounds": len(times["tuned"]),
        "choice": choice,
    }
    if choice == "all_dense":
        for c in decomposed:
            set_submodule(model, c.name, dense_layers[c.name])
            c.choice, c.pool = "dense", "-"
