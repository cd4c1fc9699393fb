"""Real latency of a dense model against its decomposed structured form (``structconv bench``).

For each batch size, in one process and under ``torch.inference_mode()``:

1. both models are built (dense original; Struct-A/B or ``--ratio`` decomposed), optionally
   with BatchNorm folded into the convolutions of *both* (``--fold-bn``, the default: it is
   what every deployment runtime does, and it keeps the comparison about the convolutions);
2. each model is tried in NCHW and channels_last, interleaved, and runs in its faster layout;
3. the decomposed model is autotuned (:func:`structconv.autotune.optimize`): a layer whose
   decomposed form is slower than its recomposed dense kernel on this machine runs dense
   (exact either way); the per-layer medians are reported;
4. dense and deployed-decomposed are timed interleaved (A B A B ...) after warm-up; medians
   and ``speedup = dense / decomposed`` are printed, with the thread count fixed;
5. optionally (``--compile``) both are compiled with ``torch.compile`` (Inductor, frozen
   parameters) and timed the same way;
6. optionally (default when ``onnxruntime`` is installed) both are exported to ONNX and timed
   in ONNX Runtime the same way.

Unless ``--malloc system``, glibc is first told to keep freed memory
(:func:`structconv.allocator.retain_freed_memory`), for both models alike: otherwise every
call may page-fault its activations back (22 % of a CIFAR ResNet56 call in a fresh process).

Timing is measured, never asserted: the machines are shared, so compare ratios from one run.
:func:`run_benchmark` takes a :class:`BenchmarkConfig`; ``structconv bench`` is a thin wrapper.
:func:`time_models` times any set of deployed models the same way (``structconv compare``'s
latency tables).
"""

from __future__ import annotations

import copy
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import validation as v
from ._timing import fixed_threads, interleaved_times, median_ms, page_faults_per_call, paired_ratio
from .allocator import retain_freed_memory
from .autotune import optimize
from .complexity import count_ops
from .convert import decompose, plan, structurize
from .deploy import fold_batchnorm
from .distributed import parse_device
from .export import export_onnx
from .layers import DecomposedLayer, StructuredLayer
from .models import create_model, default_input_size
from .models.presets import preset_overrides
from .reporting import relative_error
from .speed_plan import speed_plan

__all__ = [
    "BenchmarkConfig",
    "build_models",
    "preset_plan",
    "input_size_for",
    "run_benchmark",
    "time_models",
    "format_row",
]


# ------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------
def input_size_for(arch: str, image_size: int | None) -> tuple[int, int, int]:
    """``(C, H, W)`` of ``arch``'s registered input size, with ``image_size`` as H = W if given."""
    chans, h, w = default_input_size(arch)
    if image_size is not None:
        h = w = image_size
    return (chans, h, w)


def build_models(
    arch: str,
    *,
    struct: str | None = None,
    ratio: float | None = None,
    num_classes: int | None = None,
    overrides=None,
    seed: int = 0,
) -> tuple[nn.Module, nn.Module]:
    """``(dense, structured)`` in eval mode: the dense original and its structured training form.

    Uses :func:`structconv.models.create_model`.  The structured model gets the dense model's
    weights (projected onto the structure), so both compute comparable functions; random
    weights are fine for timing.  ``overrides`` (e.g. from a speed plan) apply with ``ratio``.
    """
    if struct is None and ratio is None:
        raise v.ArgumentError("give {struct} A|B or {ratio} R")
    torch.manual_seed(seed)
    dense = create_model(arch, num_classes=num_classes)
    if struct is not None and overrides is None:
        structured = create_model(arch, num_classes=num_classes, struct=struct)
    elif struct is not None:  # a speed plan over the Struct-A/B plan
        base, struct_over = preset_overrides(arch, struct, dense)
        structured = structurize(dense, base, overrides={**struct_over, **overrides})
    else:
        structured = structurize(dense, ratio or 2.0, overrides=overrides)
    _randomize_bn(dense, seed)
    structured.load_state_dict(dense.state_dict())
    for m in structured.modules():
        if isinstance(m, StructuredLayer):
            m.project_()
    return dense.eval(), structured.eval()


def preset_plan(arch: str, struct: str, dense: nn.Module):
    """The :class:`~structconv.convert.StructurePlan` of the Struct-``struct`` preset of ``dense``
    (architecture ``arch``): the per-layer ratios a speed plan for that preset keeps."""
    base, overrides = preset_overrides(arch, struct, dense)
    return plan(dense, base, overrides=overrides)


@torch.no_grad()
def _randomize_bn(model: nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics, so folding them is really exercised."""
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 0.5 + 0.75)


def _with_layout(model: nn.Module, x: torch.Tensor, layout: str) -> tuple[nn.Module, torch.Tensor]:
    if layout == "channels_last" and x.dim() == 4:
        return copy.deepcopy(model).to(memory_format=torch.channels_last), x.contiguous(
            memory_format=torch.channels_last
        )
    return model, x.contiguous()


# ------------------------------------------------------------------------------------------
# ONNX Runtime
# ------------------------------------------------------------------------------------------
def _ort_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _ort_times(dense: nn.Module, deployed: nn.Module, x: torch.Tensor, threads: int, args) -> dict:
    import onnxruntime as ort

    feeds = {}
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in (("dense", dense), ("decomposed", deployed)):
            path = Path(tmp) / f"{name}.onnx"
            export_onnx(model.float(), x.contiguous(), path, dynamic_batch=False)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            sessions[name] = sess
            feeds[name] = {sess.get_inputs()[0].name: x.contiguous().cpu().numpy()}
    fns = {k: (lambda k=k: sessions[k].run(None, feeds[k])) for k in sessions}
    outs = {k: torch.from_numpy(fns[k]()[0]) for k in fns}
    times = interleaved_times(fns, warmup=args.warmup, repeats=args.repeats, min_time_s=args.min_time)
    d, m = median_ms(times["dense"]), median_ms(times["decomposed"])
    return {
        "dense_ms": d,
        "decomposed_ms": m,
        "speedup": d / m,
        "rounds": len(times["dense"]),
        "rel_err_vs_torch": relative_error(outs["decomposed"], deployed(x).float().cpu()),
    }


# ------------------------------------------------------------------------------------------
# the benchmark
# ------------------------------------------------------------------------------------------
@dataclass
class BenchmarkConfig:
    """What ``structconv bench`` times; :meth:`validate` checks it before any work.

    ``plan_by='speed'`` picks each layer's ``(c, n)`` by measured speed at the compression of the
    Struct preset (or ``ratio``) (:func:`structconv.speed_plan.speed_plan`); ``'preset'`` uses the
    preset's own.  For every batch size in ``batches``, both models run in each ``layout``
    (``'auto'``: contiguous and channels_last, each model keeping its faster one), interleaved,
    after ``warmup`` rounds, for at least ``repeats`` rounds and ``min_time`` seconds, with
    ``threads`` fixed.  ``autotune`` runs :func:`~structconv.autotune.optimize` (decisions cached
    in ``cache``, default ``~/.cache/structconv/autotune.json``); ``compile`` and ``onnx`` add
    ``torch.compile`` and ONNX Runtime timings (``onnx=None``: when onnxruntime is installed);
    ``malloc='retain'`` first calls :func:`structconv.allocator.retain_freed_memory`.
    """

    arch: str = v.option("cifar_resnet20", v.Text())
    struct: str | None = v.option(None, v.Choice(("A", "B"), optional=True))
    ratio: float | None = v.option(None, v.Number(low=1.0, optional=True))
    plan_by: str = v.option("preset", v.Choice(("preset", "speed")))
    batches: tuple = v.option((1, 8), v.Items(v.Integer(low=1)))
    image_size: int | None = v.option(None, v.Integer(low=1, optional=True))
    num_classes: int | None = v.option(None, v.Integer(low=1, optional=True))
    threads: int | None = v.option(None, v.Integer(low=1, optional=True))
    device: str = "cpu"
    warmup: int = v.option(3, v.Integer(low=0))
    repeats: int = v.option(15, v.Integer(low=1))
    min_time: float = v.option(2.0, v.Number(low=0.0))
    layout: str = v.option("auto", v.Choice(("auto", "contiguous", "channels_last")))
    fold_bn: bool = True
    autotune: bool = True
    cache: str | None = v.option(None, v.PathArg(optional=True))
    onnx: bool | None = None
    compile: bool = False
    malloc: str = v.option("retain", v.Choice(("retain", "system")))
    seed: int = v.option(0, v.Integer(low=0))
    command: str | None = None  # the command line that asked for it, recorded in the result

    def validate(self) -> None:
        v.check_fields(self)
        v.exclusive({"struct": self.struct, "ratio": self.ratio}, required=True)
        parse_device(self.device)
        if self.onnx and not _ort_available():
            raise v.ArgumentError("{onnx}=True needs onnxruntime: pip install 'structconv[export]'")


def run_benchmark(config: BenchmarkConfig, *, on_row=None) -> dict:
    """Time ``config.arch`` dense against its decomposed Struct (or uniform ``ratio``) form
    (see :class:`BenchmarkConfig`).  ``on_row(result, row, tune_report)`` is called after each
    batch size (for printing).  Returns the JSON-ready result."""
    config.validate()
    args = config
    batches = tuple(config.batches)
    device = parse_device(args.device)
    chans, h, w = input_size_for(args.arch, args.image_size)
    threads = args.threads or torch.get_num_threads()
    want_onnx = _ort_available() if args.onnx is None else args.onnx
    malloc = args.malloc
    if malloc == "retain" and not retain_freed_memory():
        malloc = "system (glibc mallopt unavailable)"

    overrides = None
    plan_report = None
    if args.plan_by == "speed":
        dense0, _ = build_models(
            args.arch, struct=args.struct, ratio=args.ratio, num_classes=args.num_classes, seed=args.seed
        )
        target = preset_plan(args.arch, args.struct, dense0) if args.struct else args.ratio
        sp = speed_plan(dense0, torch.randn(max(batches), chans, h, w), target, threads=threads)
        overrides, plan_report = sp.overrides, str(sp)
    dense, structured = build_models(
        args.arch,
        struct=args.struct,
        ratio=args.ratio,
        num_classes=args.num_classes,
        overrides=overrides,
        seed=args.seed,
    )
    decomposed = decompose(structured)
    ops_dense = count_ops(dense, (1, chans, h, w))
    ops_dec = count_ops(decomposed, (1, chans, h, w))
    if args.fold_bn:
        dense, decomposed = fold_batchnorm(dense), fold_batchnorm(decomposed)
    dense, decomposed, structured = dense.to(device), decomposed.to(device), structured.to(device)

    result = {
        "arch": args.arch,
        "struct": args.struct,
        "ratio": args.ratio,
        "plan_by": args.plan_by,
        "input_size": [chans, h, w],
        "threads": threads,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "torch": torch.__version__,
        "malloc": malloc,
        "fold_bn": args.fold_bn,
        "autotune": args.autotune,
        "paper_mults_ratio": ops_dense.mults / ops_dec.mults,
        "paper_adds_ratio": ops_dense.adds / ops_dec.adds,
        "params_ratio": ops_dense.params / ops_dec.params,
        "command": args.command,
        "results": [],
    }
    if plan_report:
        result["speed_plan"] = plan_report
    with fixed_threads(threads), torch.inference_mode():
        for batch in batches:
            torch.manual_seed(args.seed)
            x = torch.randn(batch, chans, h, w, device=device)
            ref = structured(x)
            layouts = ["contiguous", "channels_last"] if args.layout == "auto" else [args.layout]
            # Every model in every layout goes into ONE interleaved timing loop (tuned first, so
            # the decomposed model is judged as deployed); each model then reports its faster
            # layout (a short separate probe picks layouts from noise).
            fns, inputs, deployed_by_layout, tunes, untuned = {}, {}, {}, {}, {}
            for layout in layouts:
                dense_m, dense_x = _with_layout(dense, x, layout)
                dec_m, dec_x = _with_layout(decomposed, x, layout)
                inputs[layout] = dec_x
                deployed_l = dec_m
                if args.autotune:
                    cache = args.cache if args.cache else True
                    deployed_l, tunes[layout] = optimize(dec_m, dec_x, threads=threads, cache=cache, inplace=False)
                    if tunes[layout].dense_layers:
                        untuned[layout] = dec_m
                fns[("dense", layout)] = lambda m=dense_m, xi=dense_x: m(xi)
                deployed_by_layout[layout] = deployed_l
                fns[("decomposed", layout)] = lambda m=deployed_l, xi=dec_x: m(xi)
                if layout in untuned:
                    fns[("untuned", layout)] = lambda m=dec_m, xi=dec_x: m(xi)
            times = interleaved_times(
                fns, warmup=args.warmup, repeats=args.repeats, min_time_s=args.min_time, device=device
            )
            best = _best_layouts(times, layouts)
            times = {n: times[(n, best[n])] for n in ("dense", "decomposed")} | (
                {"untuned": times[("untuned", best["decomposed"])]} if best["decomposed"] in untuned else {}
            )
            med = {k: median_ms(v) for k, v in times.items()}
            tune = tunes.get(best["decomposed"])
            dec_x = inputs[best["decomposed"]]
            deployed = deployed_by_layout[best["decomposed"]]
            row = {
                "batch": batch,
                "dense_ms": med["dense"],
                "decomposed_ms": med["decomposed"],
                "speedup": med["dense"] / med["decomposed"],
                "rounds": len(times["dense"]),
                # both ran back to back in every round: the median per-round ratio is robust
                # to the machine drifting between rounds
                "speedup_paired": paired_ratio(times["dense"], times["decomposed"]),
                "dense_layout": best["dense"],
                "decomposed_layout": best["decomposed"],
                "decomposed_untuned_ms": med.get(
                    "untuned", med["decomposed"] if tune is None or not tune.dense_layers else None
                ),
                "dense_ms_min": min(times["dense"]),
                "decomposed_ms_min": min(times["decomposed"]),
                "max_rel_err": relative_error(deployed(dec_x), ref),
                # pages the kernel zero-filled per call: allocator churn, not arithmetic
                "dense_page_faults": page_faults_per_call(fns[("dense", best["dense"])]),
                "decomposed_page_faults": page_faults_per_call(fns[("decomposed", best["decomposed"])]),
                "layers_run_dense": tune.dense_layers if tune else [],
            }
            if tune is not None:
                row["layers"] = tune.to_dict()["layers"]
                row["whole_model_check"] = tune.whole_model
            if args.compile:
                row["compiled"] = _compiled_times(dense, decomposed, x, ref, layouts, args, device)
            if want_onnx and device.type == "cpu":
                row["onnxruntime"] = _ort_times(dense, deployed, x, threads, args)
            result["results"].append(row)
            if on_row is not None:
                on_row(result, row, tune)
    return result


def _best_layouts(times: dict, layouts: list[str]) -> dict[str, str]:
    """For ``times`` keyed ``(model, layout)``: each model's layout with the lower median."""
    meds = {k: median_ms(v) for k, v in times.items()}
    return {n: min(layouts, key=lambda lay, n=n: meds[(n, lay)]) for n in ("dense", "decomposed")}


def _compiled_times(dense: nn.Module, decomposed: nn.Module, x, ref, layouts: list[str], args, device) -> dict:
    """Both models through ``torch.compile`` (Inductor, parameters frozen as constants, as for
    deployment), each in each layout, timed in one interleaved loop; each model reports its
    faster layout.  The decomposed model is the untuned one: autotune's choices are eager
    measurements, and under Inductor the sum-pools compile to fused loops instead."""
    torch._dynamo.reset()  # one batch size's models only: stay far below the recompile limit
    fns, outs, compile_s = {}, {}, {}
    for name, model in (("dense", dense), ("decomposed", decomposed)):
        for layout in layouts:
            # a copy: frozen parameters belong to the compiled graph, not to the eager models
            m, xi = _with_layout(copy.deepcopy(model), x, layout)
            compiled = torch.compile(m, options={"freezing": True})
            start = time.perf_counter()
            outs[(name, layout)] = compiled(xi)
            compile_s[f"{name}/{layout}"] = time.perf_counter() - start
            fns[(name, layout)] = lambda c=compiled, xi=xi: c(xi)
    times = interleaved_times(fns, warmup=args.warmup, repeats=args.repeats, min_time_s=args.min_time, device=device)
    best = _best_layouts(times, layouts)
    d, m = times[("dense", best["dense"])], times[("decomposed", best["decomposed"])]
    return {
        "dense_ms": median_ms(d),
        "decomposed_ms": median_ms(m),
        "speedup": median_ms(d) / median_ms(m),
        "speedup_paired": paired_ratio(d, m),
        "rounds": len(d),
        "dense_layout": best["dense"],
        "decomposed_layout": best["decomposed"],
        "max_rel_err": relative_error(outs[("decomposed", best["decomposed"])], ref),
        "compile_s": compile_s,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def format_row(result: dict, row: dict, tune=None, *, layers: bool = True) -> str:
    """The text ``structconv bench`` prints for one batch size (the header with the first row)."""
    lines: list[str] = []
    add = lines.append
    if row is result["results"][0]:
        add(
            f"structconv bench: {result['arch']} struct={result['struct'] or '-'} ratio={result['ratio'] or '-'} "
            f"plan={result['plan_by']} input={'x'.join(map(str, result['input_size']))}"
        )
        add(
            f"device: {result['device']} ({result['device_name']}), threads: {result['threads']} "
            f"(torch.set_num_threads), torch {result['torch']}, BN folded: {result['fold_bn']}, "
            f"malloc: {result['malloc']}"
        )
        add(
            f"paper's accounting: mults ratio {result['paper_mults_ratio']:.2f}x, adds ratio "
            f"{result['paper_adds_ratio']:.2f}x, params ratio {result['params_ratio']:.2f}x"
        )
    if tune is not None and layers:
        add("")
        add(f"[batch {row['batch']}] per layer (interleaved medians, decomposed vs its recomposed dense kernel):")
        add(str(tune))
    add("")
    add(f"[batch {row['batch']}] whole model, {row['rounds']} interleaved rounds, medians:")
    add(f"  dense      ({row['dense_layout']:>13}): {row['dense_ms']:9.3f} ms")
    add(
        f"  decomposed ({row['decomposed_layout']:>13}): {row['decomposed_ms']:9.3f} ms"
        + (f"   (without autotune: {row['decomposed_untuned_ms']:.3f} ms)" if row.get("decomposed_untuned_ms") else "")
    )
    add(
        f"  speedup (dense / decomposed): {row['speedup']:.2f}x (median of per-round ratios: "
        f"{row['speedup_paired']:.2f}x)   max rel. error vs projected model: {row['max_rel_err']:.1e}"
    )
    if row["dense_page_faults"] is not None:
        add(
            f"  page faults per call: dense {row['dense_page_faults']:.0f}, "
            f"decomposed {row['decomposed_page_faults']:.0f}"
        )
    if row["layers_run_dense"]:
        add(f"  layers run as recomposed dense kernels: {', '.join(row['layers_run_dense'])}")
    if "compiled" in row:
        c = row["compiled"]
        add(
            f"  torch.compile (Inductor, frozen), {c['rounds']} rounds: dense {c['dense_ms']:.3f} ms "
            f"({c['dense_layout']}), decomposed {c['decomposed_ms']:.3f} ms ({c['decomposed_layout']}), "
            f"speedup {c['speedup']:.2f}x (per-round {c['speedup_paired']:.2f}x), rel. error {c['max_rel_err']:.1e}"
        )
    if "onnxruntime" in row:
        o = row["onnxruntime"]
        add(
            f"  ONNX Runtime: dense {o['dense_ms']:.3f} ms, decomposed {o['decomposed_ms']:.3f} ms, "
            f"speedup {o['speedup']:.2f}x (rel. error vs PyTorch {o['rel_err_vs_torch']:.1e})"
        )
    return "\n".join(lines)


def time_models(
    models: dict[str, nn.Module],
    input_size,
    *,
    batches=(1, 32),
    threads: int | None = None,
    compile: bool = True,
    warmup: int = 3,
    repeats: int = 15,
    min_time: float = 2.0,
    say=print,
) -> dict:
    """Median CPU latency of each model of ``models`` (eval mode, deployed: BatchNorm folded by
    the caller) at each batch size, channels_last, threads fixed, in one interleaved loop per
    table, eager and (``compile``) through ``torch.compile``.  In eager mode a model with
    decomposed layers runs as :func:`structconv.autotune.optimize` deploys it (each layer
    decomposed or recomposed dense, whichever measured faster), and the untuned model is timed
    beside it as ``"<name> untuned"``; compiled models run as given."""
    threads = threads or torch.get_num_threads()
    result = {"threads": threads, "torch": torch.__version__, "models": list(models), "tables": []}
    modes = ("eager", "compiled") if compile else ("eager",)
    with fixed_threads(threads), torch.inference_mode():
        for mode in modes:
            if mode == "compiled":
                torch._dynamo.reset()
            for batch in batches:
                x = torch.randn(batch, *input_size).contiguous(memory_format=torch.channels_last)
                fns = {}
                for label, model in models.items():
                    m = copy.deepcopy(model).to(memory_format=torch.channels_last)
                    if mode == "compiled":
                        m = torch.compile(m, options={"freezing": True})
                    elif any(isinstance(layer, DecomposedLayer) for layer in m.modules()):
                        fns[f"{label} untuned"] = lambda m=m: m(x)
                        m, _ = optimize(m, x, threads=threads, cache=False)
                    m(x)
                    fns[label] = lambda m=m: m(x)
                times = interleaved_times(fns, warmup=warmup, repeats=repeats, min_time_s=min_time)
                table = {
                    "mode": mode,
                    "batch": batch,
                    "rounds": len(next(iter(times.values()))),
                    "median_ms": {k: median_ms(t) for k, t in times.items()},
                }
                result["tables"].append(table)
                say(
                    f"latency ({mode}, batch {batch}, {threads} threads): "
                    + ", ".join(f"{k} {t:.2f} ms" for k, t in table["median_ms"].items())
                )
    return result
