"""Deployment for one runtime and precision, chosen by measuring there (``structconv export --runtime``).

:func:`deploy` takes a structured or decomposed model and a runtime target from
:mod:`structconv.runtimes` and decides, per decomposed layer, how it runs *in that runtime at
that precision*: decomposed, in each applicable sum-pool lowering
(:data:`structconv.pooling.BACKENDS`: 1x1 binary conv, GEMM or cumulative sum on the channel
axis; depthwise ones-conv, avg-pool with divisor 1 or shifted adds on the spatial axes), or
as its recomposed dense kernel.  Every form computes the same function, so in float the choice
changes speed only; at int8 the decomposed form also requantizes its pooled sums, which the
optional accuracy guard (``max_accuracy_drop``) measures and trades back.  This is
:func:`structconv.autotune.optimize` measured where the model will run:
eager-PyTorch timings do not predict OpenVINO's, whose blocked layouts make a MatMul on the
channel axis cost more than the convolutions it saves (BENCHMARKS.md, "Per runtime").

Layers with the same shape, options and input are measured once.  A layer timed alone can win
by a little and still lose inside the whole graph (layout conversions, fused epilogues), so the
deployed model is finally timed against the all-dense model in the same runtime and precision,
interleaved, and becomes all-dense unless it is faster: it is never slower than dense within
the noise of that measurement.  :meth:`Deployment.save` writes the artifact, its decisions
(JSON) and the printable report beside it.
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from . import validation as v
from ._io import atomic_write, atomic_write_json
from ._timing import capture_inputs, fixed_threads, interleaved_times, median_ms, paired_ratio
from .autotune import dense_like, describe_layer, layer_key, tunable
from .convert import set_submodule
from .export import prepare_for_export
from .pooling import backend_names, select_backend
from .reporting import format_table, relative_error
from .runtimes import check_target, cpu_flags, cpu_name, default_precision

__all__ = ["LayerDecision", "Deployment", "deploy", "TOLERANCE"]

#: relative Frobenius error of the runtime's output against PyTorch float32 that counts as
#: "the same function" at each precision (int8 changes the function: its accuracy is measured)
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2, "int8": None}


@dataclass
class LayerDecision:
    """How one decomposed layer runs in the target, with the times that decided it."""

    name: str
    layer: str
    input_shape: tuple[int, ...]
    choice: str  # "decomposed" or "dense"
    pool: str  # the sum-pool lowering kept ('-' when dense)
    # {"dense_over_decomposed": whole-model time with this layer's group dense / decomposed}
    times_ms: dict[str, float]
    measured_as: str | None = None  # the first layer of its group of identical layers
    reason: str | None = None  # "accuracy": recomposed by the accuracy guard (``max_accuracy_drop``)


@dataclass
class Deployment:
    """The model as deployed in ``runtime`` at ``precision``, with every decision; ``print()`` it."""

    model: nn.Module
    runtime: str
    precision: str
    threads: int
    input_shape: tuple[int, ...]
    layers: list[LayerDecision] = field(default_factory=list)
    whole_model: dict | None = None
    rel_error: float | None = None  # runtime output vs PyTorch float32, on a fresh input
    seconds: float = 0.0
    lowering: dict | None = None  # {"channel", "spatial"}: the sum-pool backends pinned
    failed: dict = field(default_factory=dict)  # lowering candidates the runtime refused, and why
    calibration: list[Tensor] | None = field(default=None, repr=False)
    # with ``validation``: top-1 of PyTorch float32 and of the artifact, and the guard's steps
    accuracy: dict | None = None

    @property
    def dense_layers(self) -> list[str]:
        return [d.name for d in self.layers if d.choice == "dense"]

    def dense_model(self, inputs: dict | None = None) -> nn.Module:
        """The same function with every layer recomposed dense: the reference to time against.
        ``inputs``: each layer's input (``capture_inputs``), captured here when not given."""
        names = [n for n, m in self.model.named_modules() if tunable(m) and n]
        if inputs is None:
            with torch.no_grad():
                inputs = capture_inputs(self.model, torch.randn(*self.input_shape), names)
        return _with(self.model, inputs, set(names), (None, None))

    def to_dict(self) -> dict:
        return {
            "runtime": self.runtime,
            "precision": self.precision,
            "threads": self.threads,
            "input_shape": list(self.input_shape),
            "cpu": cpu_name(),
            "cpu_flags": sorted(f for f in cpu_flags() if f.startswith(("amx", "avx512", "avx_vnni"))),
            "torch": torch.__version__,
            "rel_error_vs_torch_fp32": self.rel_error,
            "tolerance": TOLERANCE[self.precision],
            "whole_model": self.whole_model,
            "lowering": self.lowering,
            "failed": self.failed,
            "accuracy": self.accuracy,
            "seconds": self.seconds,
            "layers": [asdict(d) for d in self.layers],
        }

    def __str__(self) -> str:
        rows = [("layer", "shape", "input", "model time, group dense / decomposed", "runs as")]
        for d in self.layers:
            runs = "dense" if d.choice == "dense" else f"decomposed ({d.pool})"
            runs += " for accuracy" if d.reason == "accuracy" else ""
            ratio = d.times_ms.get("dense_over_decomposed")
            measured = f"{ratio:.3f}" if ratio is not None else "-"
            if d.measured_as:
                measured = f"(with {d.measured_as})"
            rows.append((d.name, d.layer, "x".join(map(str, d.input_shape)), measured, runs))
        n_dense = len(self.dense_layers)
        head = (
            f"Deployment for {self.runtime} at {self.precision} ({self.threads} thread(s), input "
            f"{'x'.join(map(str, self.input_shape))}, {cpu_name()}): {len(self.layers) - n_dense} layers "
            f"decomposed, {n_dense} run as recomposed dense kernels"
        )
        tail = []
        if self.whole_model:
            w = self.whole_model
            tail.append(
                f"whole model in {self.runtime} ({w['rounds']} interleaved rounds): "
                f"deployed {w['deployed_ms']:.3f} ms, dense {w['dense_ms']:.3f} ms, "
                f"speed-up {w['speedup']:.2f}x (median per-round ratio)"
                + (
                    " -> ships as decided per layer"
                    if w["choice"] == "per_layer"
                    else " -> ships every layer dense"
                    + (
                        f" (the per-layer result ran at {w['per_layer_speedup']:.2f}x)"
                        if w["per_layer_speedup"]
                        else ""
                    )
                )
            )
            before = w.get("before_guard") or {}
            if before.get("guard") == "skipped":
                tail.append(
                    f"the accuracy guard was skipped: before it, the per-layer result ran at "
                    f"{before['per_layer_speedup']:.2f}x the all-dense model, and recomposing only moves it toward that"
                )
        if self.rel_error is not None:
            tail.append(f"output vs PyTorch float32: relative error {self.rel_error:.2e}")
        if self.accuracy:
            a = self.accuracy
            allowed = (
                "" if a["max_drop"] is None else f", allowed {a['max_drop']:g}" + ("" if a["met"] else " (MISSED)")
            )
            tail.append(
                f"top-1 on {a['images']} validation images: PyTorch float32 {a['reference']:.2f} %, "
                f"{self.runtime} {self.precision} {a['deployed']:.2f} % (drop {a['drop']:.2f}{allowed})"
            )
        return "\n".join([head, format_table(rows), *tail])

    def save(
        self, directory, name: str, *, overwrite: bool = False, reference: bool = True
    ) -> dict[str, list[str] | str]:
        """Write ``name<suffix>`` (the runtime's artifact), ``name.decisions.json`` and
        ``name.report.txt`` into ``directory``, and with ``reference`` ``name.dense<suffix>``: the
        same model recomposed dense, built the same way, so the speed-up can be timed outside
        structconv.  Existing files are kept unless ``overwrite``."""
        rt = check_target(self.runtime, self.precision)
        out = v.path(directory, "output_dir")
        v.text(name, "name")
        artifact = out / f"{name}{rt.suffix}"
        dense_artifact = out / f"{name}.dense{rt.suffix}"
        decisions, report = out / f"{name}.decisions.json", out / f"{name}.report.txt"
        planned = (artifact, decisions, report) + ((dense_artifact,) if reference else ())
        taken = [str(p) for p in planned if p.exists()]
        if taken and not overwrite:
            raise v.ArgumentError(
                "{files} already exist(s); pass {overwrite} to replace, or choose another {output_dir} or {name}",
                files=", ".join(taken),
            )
        out.mkdir(parents=True, exist_ok=True)
        example = torch.randn(*self.input_shape)
        files = rt.save(self.model, example, self.precision, artifact, self.calibration)
        saved = {"artifact": files}
        if reference:
            saved["dense"] = rt.save(self.dense_model(), example, self.precision, dense_artifact, self.calibration)
        atomic_write_json(dict(self.to_dict(), files=saved), decisions, indent=1)
        text = str(self)
        atomic_write(report, lambda f: f.write(text + "\n"), "w")
        return dict(saved, decisions=str(decisions), report=str(report))


def _timed(rt, models: dict[str, nn.Module], x, precision, threads, calibration, rounds):
    """Per-round ms of each model built in the runtime, interleaved."""
    fns = {k: rt.build(m, x, precision, threads, calibration) for k, m in models.items()}
    return interleaved_times({k: (lambda f=f: f(x)) for k, f in fns.items()}, warmup=3, repeats=rounds, min_time_s=0.3)


def _with(model: nn.Module, inputs, dense: set[str], lowering: tuple[str | None, str | None]) -> nn.Module:
    """A copy of ``model`` with the layers in ``dense`` recomposed and the sum-pools pinned."""
    from .layers import set_sum_pool_backends

    out = copy.deepcopy(model)
    for name in dense:
        set_submodule(out, name, dense_like(out.get_submodule(name), inputs[name]))
    set_sum_pool_backends(out, channel=lowering[0], spatial=lowering[1])
    return out


def deploy(
    model: nn.Module,
    example_input: Tensor,
    *,
    runtime: str = "openvino",
    precision: str | None = None,
    threads: int | None = None,
    calibration: Sequence[Tensor] | None = None,
    rounds: int = 9,
    whole_model_rounds: int = 15,
    search: bool | None = None,
    validation: Iterable | None = None,
    max_accuracy_drop: float | None = None,
    verbose: bool = False,
) -> Deployment:
    """Choose, by measuring in ``runtime`` at ``precision``, how each decomposed layer runs.

    ``model`` may be structured (it is decomposed) or decomposed; BatchNorm is folded.
    ``example_input`` fixes the deployed input shape.  ``precision``: fp32, bf16 or int8; None
    is the runtime's own default on this CPU (:func:`~structconv.runtimes.default_precision`:
    bf16 for OpenVINO on AMX CPUs, the precision a plain ``compile_model`` runs it in).
    ``calibration``: input batches for int8 (post-training quantization statistics;
    ``[example_input]`` when omitted, which is fit for timing, not for accuracy).

    Every measurement is of the whole model in the runtime, since a layer timed alone misses
    the layout conversions around it (OpenVINO: a channel-axis MatMul that wins alone costs
    the model 1.6x in Reorders).  The search, in that order:

    1. the channel sum-pool lowering, then the spatial one, each tried for all pools at once;
    2. per group of identical layers (same shape, options and input), decomposed against
       recomposed dense, the group switched only where the model gets faster (median of
       per-round ratios, candidate and current interleaved);
    3. the result against the all-dense model; it ships all-dense unless faster.

    ``search=None`` runs steps 1-2 where the runtime builds a model in about a second
    (``Runtime.lowerings == "all"``), and only step 3 for ``compile`` (an Inductor compile per
    candidate); ``True``/``False`` force it.

    ``validation``: labelled batches ``(inputs, targets)`` (a classification ``DataLoader``);
    the top-1 accuracy of the artifact in the runtime and of the PyTorch float32 model are then
    recorded (``Deployment.accuracy``).  With ``max_accuracy_drop`` (top-1 *percentage points*,
    0.5 = half a point; NNCF's ``max_drop`` is on the metric's own scale), an accuracy guard
    runs between steps 2 and 3, as NNCF's ``quantize_with_accuracy_control`` does for
    quantizers: while the artifact loses more than that, the group of decomposed layers whose
    recomposition recovers most (each measured in the runtime) runs recomposed.  When the
    artifact misses the budget, the guard first times it against the all-dense model, and is
    skipped (all-dense ships) unless it is faster: recomposing only moves it toward that model.
    It exists for int8: a decomposed layer requantizes its pooled sums, a sum of k inputs on a per-tensor
    int8 grid about k times coarser, while its recomposed form quantizes only the input
    (BENCHMARKS.md, "int8").  Keep the validation images apart from the calibration ones.

    Returns a :class:`Deployment` whose ``model`` is the PyTorch form of what was chosen.
    """
    if precision is None:
        precision = default_precision(runtime)
    rt = check_target(runtime, precision)
    if not isinstance(example_input, Tensor) or example_input.dim() < 2:
        raise v.ArgumentError(
            "{example_input} must be a batched tensor, got {value}", value=type(example_input).__name__
        )
    v.integer(rounds, "rounds", low=1)
    v.integer(whole_model_rounds, "whole_model_rounds", low=1)
    calibration = list(calibration) if calibration is not None else None
    if calibration is not None and not calibration:
        raise v.ArgumentError("{calibration} is empty; give at least one input batch or None")
    if max_accuracy_drop is not None:
        v.number(max_accuracy_drop, "max_accuracy_drop", low=0)
        if validation is None:
            raise v.ArgumentError("{max_accuracy_drop} needs {validation}: labelled batches to measure the drop on")
    if search is None:
        search = rt.lowerings == "all"
    start = time.perf_counter()
    model = prepare_for_export(copy.deepcopy(model).eval())
    names = [n for n, m in model.named_modules() if tunable(m) and n]
    if not names:
        raise v.ArgumentError("{model} has no decomposed or structured layers to deploy; structurize it first")
    x = example_input.detach().float().cpu()
    log = (lambda msg: print(f"[deploy] {msg}", flush=True)) if verbose else (lambda msg: None)
    with fixed_threads(threads) as n_threads, torch.no_grad():
        try:
            model(x)
        except (RuntimeError, ValueError) as err:
            raise v.ArgumentError(
                "the model cannot run on {example_input} of shape {shape} ({why})",
                shape=tuple(x.shape),
                why=(str(err).strip().splitlines() or [type(err).__name__])[0],
            ) from None
        labelled = _labelled(validation, x) if validation is not None else None
        inputs = capture_inputs(model, x, names)
        names = [n for n in names if n in inputs]
        groups: dict[str, list[str]] = {}
        for name in names:
            groups.setdefault(layer_key(model.get_submodule(name), inputs[name], n_threads), []).append(name)
        dense: set[str] = set()
        lowering: tuple[str | None, str | None] = (None, None)
        group_times: dict[str, dict[str, float]] = {}
        failed: dict[str, str] = {}

        # the current form and the last candidate, built: the current one is compared again and
        # again until a candidate replaces it, and a build costs seconds (an Inductor compile)
        builds: dict = {}

        def try_build(dense_set, lowering_pair):
            """The model built in the runtime, or None (the reason kept) when the runtime refuses it."""
            try:
                fn = rt.build(_with(model, inputs, dense_set, lowering_pair), x, precision, n_threads, calibration)
                fn(x)  # some runtimes build a graph they then fail to run (XNNPACK: error 0x10)
                return fn
            except Exception as err:  # noqa: BLE001 - a form the runtime cannot take is skipped
                why = (str(err).strip().splitlines() or [type(err).__name__])[-1][:160]
                failed[f"lowering={lowering_pair}, dense layers={len(dense_set)}"] = f"{type(err).__name__}: {why}"
                return None

        def build(dense_set, lowering_pair):
            key = (frozenset(dense_set), lowering_pair)
            if key not in builds:
                builds[key] = try_build(dense_set, lowering_pair)
            return builds[key]

        def compare(candidate_dense, candidate_lowering) -> float | None:
            """Per-round median ratio candidate / current; None when the runtime refuses the
            candidate, 0 when it refuses only the current form (any working form beats it)."""
            current_key = (frozenset(dense), lowering)
            for key in [k for k in builds if k != current_key]:
                del builds[key]  # a candidate that was not adopted
            candidate = build(candidate_dense, candidate_lowering)
            if candidate is None:
                return None
            current = build(dense, lowering)
            if current is None:
                return 0.0
            t = interleaved_times(
                {"current": lambda: current(x), "candidate": lambda: candidate(x)},
                warmup=3,
                repeats=rounds,
                min_time_s=0.3,
            )
            return paired_ratio(t["candidate"], t["current"])

        if search:
            for axis in ("channel", "spatial"):
                for method in backend_names(axis):
                    candidate = (method, lowering[1]) if axis == "channel" else (lowering[0], method)
                    ratio = compare(dense, candidate)
                    log(f"{axis} pools as {method!r}: {ratio if ratio is None else round(ratio, 3)} x current")
                    if ratio is not None and ratio < 1.0:
                        lowering = candidate
            for key, members in groups.items():
                ratio = compare(dense | set(members), lowering)
                if ratio is None:
                    continue
                group_times[key] = {"dense_over_decomposed": ratio}
                log(f"{members[0]} (+{len(members) - 1} alike) dense: {ratio:.3f} x decomposed")
                if ratio < 1.0:
                    dense |= set(members)
        builds.clear()
        reverted: set[str] = set()
        accuracy = None
        before_guard: dict = {}  # the speed check the guard runs first, when it has to act
        if labelled is not None:
            accuracy = {"images": len(labelled[1]), "reference": _top1(model, *labelled, x.shape[0])}
            accuracy.update(max_drop=max_accuracy_drop, steps=[])
            if max_accuracy_drop is not None:

                def faster_than_dense() -> bool:
                    every = set(names)
                    models = {
                        "deployed": _with(model, inputs, dense, lowering),
                        "dense": _with(model, inputs, every, (None, None)),
                    }
                    t = _timed(rt, models, x, precision, n_threads, calibration, whole_model_rounds)
                    ratio = paired_ratio(t["deployed"], t["dense"])
                    before_guard.update(
                        per_layer_ms=median_ms(t["deployed"]), dense_ms=median_ms(t["dense"]),
                        per_layer_speedup=1.0 / ratio, rounds=len(t["deployed"]),
                    )  # fmt: skip
                    log(f"before the accuracy guard: {1.0 / ratio:.3f} x the all-dense model")
                    return ratio < 1.0

                guarded = _guard_accuracy(
                    lambda d: _top1(try_build(d, lowering), *labelled, x.shape[0]),
                    groups, dense, accuracy, max_accuracy_drop, log, faster_than_dense,
                )  # fmt: skip
                if guarded is None:  # skipped: not faster than all-dense, so all-dense ships
                    dense = set(names)
                    before_guard["guard"] = "skipped"
                else:
                    reverted = guarded
                    dense |= reverted
                    if before_guard:  # the speed check ran: the artifact missed the budget
                        before_guard["guard"] = "ran"
        deployed = _with(model, inputs, dense, lowering)
        result = Deployment(deployed, runtime, precision, n_threads, tuple(x.shape), calibration=calibration)
        result.lowering = {"channel": lowering[0] or "auto", "spatial": lowering[1] or "auto"}
        result.failed = failed
        for key, members in groups.items():
            for name in members:
                layer = model.get_submodule(name)
                choice = "dense" if name in dense else "decomposed"
                pool = "-" if choice == "dense" else _pool_of(deployed.get_submodule(name), inputs[name])
                result.layers.append(
                    LayerDecision(
                        name,
                        describe_layer(layer),
                        tuple(inputs[name].shape),
                        choice,
                        pool,
                        group_times.get(key, {}),
                        members[0] if name != members[0] else None,
                        "accuracy" if name in reverted else None,
                    )
                )
        _check_whole_model(rt, result, inputs, x, calibration, n_threads, whole_model_rounds)
        if before_guard:
            result.whole_model["before_guard"] = before_guard
        check = torch.randn_like(x)
        shipped = rt.build(result.model, x, precision, n_threads, calibration)
        result.rel_error = relative_error(shipped(check).float(), result.model(check).float())
        if accuracy is not None:  # of what ships: the whole-model check may have made it all-dense
            accuracy["deployed"] = _top1(shipped, *labelled, x.shape[0])
            accuracy["drop"] = accuracy["reference"] - accuracy["deployed"]
            met = (
                None
                if max_accuracy_drop is None
                else _within(accuracy["reference"], accuracy["deployed"], max_accuracy_drop)
            )
            accuracy["met"] = met
            result.accuracy = accuracy
            if met is False:
                warnings.warn(
                    f"deploy: the {runtime} {precision} artifact loses {accuracy['drop']:.2f} top-1 points "
                    f"(max_accuracy_drop={max_accuracy_drop:g}) even with every helpful layer recomposed",
                    stacklevel=2,
                )
    tol = TOLERANCE[precision]
    if tol is not None and not result.rel_error <= tol:
        raise ValueError(
            f"{runtime} at {precision}: output differs from PyTorch by relative error {result.rel_error:.2e} > {tol:g}"
        )
    result.seconds = time.perf_counter() - start
    return result


def _labelled(validation: Iterable, x: Tensor) -> tuple[Tensor, Tensor]:
    """Every ``(inputs, targets)`` batch of ``validation``, concatenated and checked against the
    deployed input ``x`` (per-sample shape) before any measurement."""
    images, labels = [], []
    for i, batch in enumerate(validation):
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2 and all(isinstance(t, Tensor) for t in batch[:2])):
            raise v.ArgumentError("{validation} batch {i} is not an (inputs, targets) pair of tensors", i=i)
        inp, tgt = batch[0], batch[1]
        if tuple(inp.shape[1:]) != tuple(x.shape[1:]) or tgt.dim() != 1 or len(tgt) != len(inp):
            raise v.ArgumentError(
                "{validation} batch {i} has inputs {got} and targets {t}; the deployed input is (N, {want}) "
                "with one class index per input",
                i=i, got=tuple(inp.shape), t=tuple(tgt.shape), want=", ".join(map(str, x.shape[1:])),
            )  # fmt: skip
        images.append(inp.detach().float().cpu())
        labels.append(tgt.detach().cpu().long())
    if not images:
        raise v.ArgumentError("{validation} is empty; give labelled batches or None")
    return torch.cat(images), torch.cat(labels)


def _top1(fn, images: Tensor, labels: Tensor, batch: int) -> float | None:
    """Top-1 accuracy (%) of ``fn`` (a built runtime model, or a module), in chunks of the
    deployed batch size, the last one zero-padded: a built runtime takes one input shape.
    None when ``fn`` is None (the runtime refused that form)."""
    if fn is None:
        return None
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch):
            chunk = images[i : i + batch]
            n = len(chunk)
            if n < batch:
                chunk = torch.cat([chunk, chunk.new_zeros(batch - n, *chunk.shape[1:])])
            correct += int((fn(chunk)[:n].float().argmax(1) == labels[i : i + n]).sum())
    return 100.0 * correct / len(images)


def _guard_accuracy(
    top1, groups: dict[str, list[str]], dense: set[str], accuracy: dict, max_drop, log, faster_than_dense
) -> set[str] | None:
    """The layers to recompose so that the artifact loses at most ``max_drop`` points; None
    when the guard is skipped because ``faster_than_dense()`` says the artifact does not beat
    the all-dense model: recomposing only moves it toward that model, which then ships anyway
    (the whole-model check), so its 2 G builds would be thrown away.

    ``top1(dense_set)`` measures the artifact with ``dense_set`` recomposed.  Each decomposed
    group is measured recomposed alone (one build each); those that help alone are recomposed in
    the order of the accuracy that gave, re-measured after each (a step that lowers accuracy is
    undone), until the drop is within bounds; ``accuracy["steps"]`` records every measurement.
    Greedy, as NNCF's accuracy control is: 2 G builds at most for G groups, where the best
    subset would take 2^G."""
    reference = accuracy["reference"]
    current = top1(dense)
    accuracy["steps"].append({"recomposed_groups": [], "accuracy": current})
    log(f"accuracy guard: PyTorch float32 {reference:.2f} %, artifact {current} %")
    if current is None or _within(reference, current, max_drop):
        return set()
    if not faster_than_dense():
        accuracy["steps"].append({"skipped": "not faster than the all-dense model, which ships"})
        log("accuracy guard: skipped, the artifact is not faster than the all-dense model")
        return None
    alone = {}
    for key, members in groups.items():
        if not set(members) <= dense:
            alone[key] = top1(dense | set(members))
            accuracy["steps"].append({"recomposed_alone": members[0], "accuracy": alone[key]})
    # only groups that help on their own, best first; a step that lowers accuracy is undone
    order = sorted((k for k in alone if alone[k] is not None and alone[k] > current), key=lambda k: -alone[k])
    reverted: set[str] = set()
    kept: list[str] = []
    for key in order:
        candidate = reverted | set(groups[key])
        acc = alone[key] if not reverted else top1(dense | candidate)
        log(f"accuracy guard: {groups[key][0]} (+{len(groups[key]) - 1} alike) recomposed -> {acc} %")
        if acc is None or acc <= current:
            accuracy["steps"].append({"undone": groups[key][0], "accuracy": acc})
            continue
        reverted, current = candidate, acc
        kept.append(groups[key][0])
        accuracy["steps"].append({"recomposed_groups": list(kept), "accuracy": current})
        if _within(reference, current, max_drop):
            break
    return reverted


def _within(reference: float, accuracy: float, max_drop: float) -> bool:
    """``reference - accuracy <= max_drop``, up to float rounding (a drop of exactly the budget
    on 2,000 images computes as 0.4000000000000057)."""
    return reference - accuracy <= max_drop + 1e-9


def _pool_of(layer: nn.Module, x: Tensor) -> str:
    """The sum-pool backends ``layer`` runs on ``x``: ``'<channel>+<spatial>'``."""
    from .layers import DecomposedConvNd

    if not isinstance(layer, DecomposedConvNd):
        return "-"
    spec = layer.pool.spec
    channel = select_backend("channel", spec, x, layer.pool.channel_method).name if spec.channel_window > 1 else "-"
    return f"{channel}+{select_backend('spatial', spec, x, layer.pool.spatial_method).name}"


def _check_whole_model(rt, result: Deployment, inputs, x, calibration, threads, rounds) -> None:
    """Time the deployed model against the all-dense one in the runtime, interleaved; ship
    all-dense unless the deployed one is faster (median per-round ratio below 1)."""
    decomposed = [d for d in result.layers if d.choice == "decomposed"]
    dense = result.dense_model(inputs)
    if not decomposed:  # every group was slower decomposed: ships the dense model, timed for the record
        times = _timed(rt, {"dense": dense}, x, result.precision, threads, calibration, rounds)
        ms = median_ms(times["dense"])
        result.whole_model = {
            "deployed_ms": ms,
            "dense_ms": ms,
            "speedup": 1.0,
            "per_layer_ms": None,
            "per_layer_speedup": None,
            "rounds": len(times["dense"]),
            "choice": "all_dense",
        }
        return
    times = _timed(rt, {"deployed": result.model, "dense": dense}, x, result.precision, threads, calibration, rounds)
    ratio = paired_ratio(times["deployed"], times["dense"])
    # ties go to dense: the deployed model must never be slower than the dense one
    choice = "per_layer" if ratio < 1.0 else "all_dense"
    candidate_ms, dense_ms = median_ms(times["deployed"]), median_ms(times["dense"])
    result.whole_model = {
        # what ships: the per-layer result, or the dense model itself (speed-up 1 by construction)
        "deployed_ms": candidate_ms if choice == "per_layer" else dense_ms,
        "dense_ms": dense_ms,
        "speedup": 1.0 / ratio if choice == "per_layer" else 1.0,
        "per_layer_ms": candidate_ms,
        "per_layer_speedup": 1.0 / ratio,
        "rounds": len(times["deployed"]),
        "choice": choice,
    }
    if choice == "all_dense":
        result.model = dense
        for d in decomposed:
            d.choice, d.pool = "dense", "-"
        for d in result.layers:
            d.reason = None  # dense for speed now, whatever the accuracy guard had decided


def load_decisions(path) -> dict:
    """The decisions file :meth:`Deployment.save` wrote (a dict), for reports and checks."""
    return json.loads(Path(path).read_text())
