"""``structconv bench``: real latency of a dense model against its decomposed structured form.

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
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from ._timing import fixed_threads, interleaved_times, median_ms, page_faults_per_call, paired_ratio

__all__ = ["get_args_parser", "main", "build_models", "reference_plan", "run_benchmark"]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="time dense vs decomposed models (interleaved medians)", add_help=add_help)
    p.add_argument("--arch", required=True, help="model name (cifar_resnet56, resnet18, any torchvision/timm name)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--struct", choices=("A", "B"), help="the paper's Struct-A / Struct-B plan")
    g.add_argument("--ratio", type=float, help="uniform compression ratio instead of --struct")
    p.add_argument("--plan", choices=("default", "speed"), default="default",
                   help="'speed': per layer, the fastest measured (c, n) with the compression of --struct's "
                        "plan (or of --ratio): a speed-aware plan")
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--image-size", type=int, default=None, help="input height=width (default: the model's)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch.get_num_threads())")
    p.add_argument("--device", default="cpu", help="cpu or cuda (CUDA timed with CUDA events)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15, help="interleaved rounds (at least)")
    p.add_argument("--min-time", type=float, default=2.0, help="keep timing until this many seconds have passed")
    p.add_argument("--layout", choices=("auto", "contiguous", "channels_last"), default="auto",
                   help="memory layout; 'auto' measures both and keeps each model's faster one")
    p.add_argument("--fold-bn", action=argparse.BooleanOptionalAction, default=True,
                   help="fold BatchNorm into the preceding convs of both models (default on)")
    p.add_argument("--autotune", action=argparse.BooleanOptionalAction, default=True,
                   help="run each decomposed layer as its recomposed dense kernel where that is measured faster")
    p.add_argument("--cache", default=None, help="autotune cache file (default ~/.cache/structconv/autotune.json)")
    p.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=None,
                   help="also time both models in ONNX Runtime (default: when onnxruntime is installed)")
    p.add_argument("--compile", action="store_true",
                   help="also time both models compiled with torch.compile (Inductor, frozen parameters)")
    p.add_argument("--layers", action=argparse.BooleanOptionalAction, default=True, help="print the per-layer table")
    p.add_argument("--malloc", choices=("retain", "system"), default="retain",
                   help="'retain' (default): glibc keeps freed activations for the next call instead of "
                        "unmapping them (structconv.allocator.retain_freed_memory), for both models; "
                        "'system': glibc's defaults, under which a call may page-fault its activations back")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    return p


# ------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------
def _models_api():
    try:
        from . import models
    except ImportError:  # pragma: no cover - the registry ships with the package
        return None
    return models if hasattr(models, "create_model") else None


def input_size_for(arch: str, image_size: int | None) -> tuple[int, int, int]:
    api = _models_api()
    chans, h, w = api.default_input_size(arch) if api and hasattr(api, "default_input_size") else (3, 224, 224)
    if image_size is not None:
        h = w = image_size
    return (chans, h, w)


def build_models(arch: str, *, struct: str | None = None, ratio: float | None = None, num_classes: int | None = None,
                 overrides=None, seed: int = 0) -> tuple[nn.Module, nn.Module]:  # fmt: skip
    """``(dense, structured)`` in eval mode: the dense original and its structured training form.

    Uses :func:`structconv.models.create_model`.  The structured model gets the dense model's
    weights (projected onto the structure), so both compute comparable functions; random
    weights are fine for timing.  ``overrides`` (e.g. from a speed plan) apply with ``ratio``.
    """
    from .convert import structurize
    from .layers import StructuredLayer

    if struct is None and ratio is None:
        raise ValueError("give --struct A|B or --ratio R")
    api = _models_api()
    torch.manual_seed(seed)
    if api is not None:
        dense = api.create_model(arch, num_classes=num_classes)
        if struct is not None and overrides is None:
            structured = api.create_model(arch, num_classes=num_classes, struct=struct)
        elif struct is not None:  # a speed plan over the Struct-A/B plan
            from .models.plans import struct_overrides

            base, struct_over = struct_overrides(arch, struct, dense)
            structured = structurize(dense, base, overrides={**struct_over, **overrides})
        else:
            structured = structurize(dense, ratio or 2.0, overrides=overrides)
    else:  # pragma: no cover - fallback without the registry
        import torchvision

        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        dense = torchvision.models.get_model(arch, **kwargs)
        structured = structurize(dense, ratio or 2.0, overrides=overrides)
    _randomize_bn(dense, seed)
    structured.load_state_dict(dense.state_dict())
    for m in structured.modules():
        if isinstance(m, StructuredLayer):
            m.project_()
    return dense.eval(), structured.eval()


def reference_plan(arch: str, struct: str, dense: nn.Module):
    """The Struct-``struct`` :class:`~structconv.convert.StructurePlan` of ``dense`` (architecture
    ``arch``): the per-layer ratios a speed plan for that struct keeps."""
    from .convert import plan
    from .models.plans import struct_overrides

    base, overrides = struct_overrides(arch, struct, dense)
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
        return copy.deepcopy(model).to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    return model, x.contiguous()


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


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

    from .export import export_onnx

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
    return {"dense_ms": d, "decomposed_ms": m, "speedup": d / m, "rounds": len(times["dense"]),
            "rel_err_vs_torch": _rel_err(outs["decomposed"], deployed(x).float().cpu())}  # fmt: skip


# ------------------------------------------------------------------------------------------
# the benchmark
# ------------------------------------------------------------------------------------------
def run_benchmark(args) -> dict:
    """Run the benchmark described by parsed ``args``; returns the JSON-ready result."""
    from .allocator import retain_freed_memory
    from .autotune import optimize, speed_plan
    from .complexity import count_ops
    from .convert import decompose
    from .deploy import fold_batchnorm

    batches = [int(b) for b in str(args.batch).split(",") if b.strip()]
    if not batches or any(b < 1 for b in batches):
        raise ValueError(f"--batch={args.batch!r} must list positive batch sizes, e.g. 1,8,32")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here")
    chans, h, w = input_size_for(args.arch, args.image_size)
    threads = args.threads or torch.get_num_threads()
    want_onnx = _ort_available() if args.onnx is None else args.onnx
    if want_onnx and not _ort_available():
        raise ValueError("--onnx needs onnxruntime: pip install onnxruntime")
    malloc = args.malloc
    if malloc == "retain" and not retain_freed_memory():
        malloc = "system (glibc mallopt unavailable)"

    overrides = None
    plan_report = None
    if args.plan == "speed":
        dense0, _ = build_models(args.arch, struct=args.struct, ratio=args.ratio, num_classes=args.num_classes,
                                 seed=args.seed)  # fmt: skip
        target = reference_plan(args.arch, args.struct, dense0) if args.struct else args.ratio
        sp = speed_plan(dense0, torch.randn(max(batches), chans, h, w), target, threads=threads)
        overrides, plan_report = sp.overrides, str(sp)
    dense, structured = build_models(args.arch, struct=args.struct, ratio=args.ratio, num_classes=args.num_classes,
                                     overrides=overrides, seed=args.seed)  # fmt: skip
    decomposed = decompose(structured)
    ops_dense = count_ops(dense, (1, chans, h, w))
    ops_dec = count_ops(decomposed, (1, chans, h, w))
    if args.fold_bn:
        dense, decomposed = fold_batchnorm(dense), fold_batchnorm(decomposed)
    dense, decomposed, structured = dense.to(device), decomposed.to(device), structured.to(device)

    result = {
        "arch": args.arch, "struct": args.struct, "ratio": args.ratio, "plan": args.plan,
        "input_size": [chans, h, w], "threads": threads, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "torch": torch.__version__, "malloc": malloc, "fold_bn": args.fold_bn, "autotune": args.autotune,
        "paper_mults_ratio": ops_dense.mults / ops_dec.mults, "paper_adds_ratio": ops_dense.adds / ops_dec.adds,
        "params_ratio": ops_dense.params / ops_dec.params, "command": "structconv bench " + " ".join(sys.argv[2:])
        if sys.argv[1:2] == ["bench"] else None, "results": [],
    }  # fmt: skip
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
            # layout.  A short separate probe picked layouts from noise and once ran the
            # decomposed model in its slower layout (ResNet56 b1: 0.92x).
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
            times = interleaved_times(fns, warmup=args.warmup, repeats=args.repeats, min_time_s=args.min_time,
                                      device=device)  # fmt: skip
            best = _best_layouts(times, layouts)
            times = {n: times[(n, best[n])] for n in ("dense", "decomposed")} | (
                {"untuned": times[("untuned", best["decomposed"])]} if best["decomposed"] in untuned else {}
            )
            med = {k: median_ms(v) for k, v in times.items()}
            tune = tunes.get(best["decomposed"])
            dec_x = inputs[best["decomposed"]]
            deployed = deployed_by_layout[best["decomposed"]]
            row = {
                "batch": batch, "dense_ms": med["dense"], "decomposed_ms": med["decomposed"],
                "speedup": med["dense"] / med["decomposed"], "rounds": len(times["dense"]),
                # both ran back to back in every round: the median per-round ratio is robust
                # to the machine drifting between rounds
                "speedup_paired": paired_ratio(times["dense"], times["decomposed"]),
                "dense_layout": best["dense"], "decomposed_layout": best["decomposed"],
                "decomposed_untuned_ms": med.get("untuned", med["decomposed"] if tune is None or not tune.dense_layers else None),
                "dense_ms_min": min(times["dense"]), "decomposed_ms_min": min(times["decomposed"]),
                "max_rel_err": _rel_err(deployed(dec_x), ref),
                # pages the kernel zero-filled per call: allocator churn, not arithmetic
                "dense_page_faults": page_faults_per_call(fns[("dense", best["dense"])]),
                "decomposed_page_faults": page_faults_per_call(fns[("decomposed", best["decomposed"])]),
                "layers_run_dense": tune.dense_layers if tune else [],
            }  # fmt: skip
            if tune is not None:
                row["layers"] = tune.to_dict()["layers"]
                row["whole_model_check"] = tune.whole_model
            if args.compile:
                row["compiled"] = _compiled_times(dense, decomposed, x, ref, layouts, args, device)
            if want_onnx and device.type == "cpu":
                row["onnxruntime"] = _ort_times(dense, deployed, x, threads, args)
            result["results"].append(row)
            if not args.json:
                _print_row(result, row, tune, args)
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
        "dense_ms": median_ms(d), "decomposed_ms": median_ms(m), "speedup": median_ms(d) / median_ms(m),
        "speedup_paired": paired_ratio(d, m), "rounds": len(d),
        "dense_layout": best["dense"], "decomposed_layout": best["decomposed"],
        "max_rel_err": _rel_err(outs[("decomposed", best["decomposed"])], ref), "compile_s": compile_s,
    }  # fmt: skip


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _print_row(result: dict, row: dict, tune, args) -> None:
    if row is result["results"][0]:
        print(f"structconv bench: {result['arch']} struct={result['struct'] or '-'} ratio={result['ratio'] or '-'} "
              f"plan={result['plan']} input={'x'.join(map(str, result['input_size']))}")  # fmt: skip
        print(f"device: {result['device']} ({result['device_name']}), threads: {result['threads']} "
              f"(torch.set_num_threads), torch {result['torch']}, BN folded: {result['fold_bn']}, malloc: {result['malloc']}")  # fmt: skip
        print(f"paper's accounting: mults ratio {result['paper_mults_ratio']:.2f}x, adds ratio "
              f"{result['paper_adds_ratio']:.2f}x, params ratio {result['params_ratio']:.2f}x")  # fmt: skip
    if tune is not None and args.layers:
        print()
        print(f"[batch {row['batch']}] per layer (interleaved medians, decomposed vs its recomposed dense kernel):")
        print(tune)
    print()
    print(f"[batch {row['batch']}] whole model, {row['rounds']} interleaved rounds, medians:")
    print(f"  dense      ({row['dense_layout']:>13}): {row['dense_ms']:9.3f} ms")
    print(f"  decomposed ({row['decomposed_layout']:>13}): {row['decomposed_ms']:9.3f} ms"
          + (f"   (without autotune: {row['decomposed_untuned_ms']:.3f} ms)" if row.get("decomposed_untuned_ms") else ""))  # fmt: skip
    print(f"  speedup (dense / decomposed): {row['speedup']:.2f}x (median of per-round ratios: "
          f"{row['speedup_paired']:.2f}x)   max rel. error vs projected model: {row['max_rel_err']:.1e}")  # fmt: skip
    if row["dense_page_faults"] is not None:
        print(f"  page faults per call: dense {row['dense_page_faults']:.0f}, decomposed {row['decomposed_page_faults']:.0f}")
    if row["layers_run_dense"]:
        print(f"  layers run as recomposed dense kernels: {', '.join(row['layers_run_dense'])}")
    if "compiled" in row:
        c = row["compiled"]
        print(f"  torch.compile (Inductor, frozen), {c['rounds']} rounds: dense {c['dense_ms']:.3f} ms "
              f"({c['dense_layout']}), decomposed {c['decomposed_ms']:.3f} ms ({c['decomposed_layout']}), "
              f"speedup {c['speedup']:.2f}x (per-round {c['speedup_paired']:.2f}x), rel. error {c['max_rel_err']:.1e}")  # fmt: skip
    if "onnxruntime" in row:
        o = row["onnxruntime"]
        print(f"  ONNX Runtime: dense {o['dense_ms']:.3f} ms, decomposed {o['decomposed_ms']:.3f} ms, "
              f"speedup {o['speedup']:.2f}x (rel. error vs PyTorch {o['rel_err_vs_torch']:.1e})")  # fmt: skip
    sys.stdout.flush()


def main(args) -> int:
    result = run_benchmark(args)
    if args.json:
        print(json.dumps(result, indent=1, default=_json_default))
    return 0


def _json_default(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, tuple):
        return list(o)
    return str(o)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(get_args_parser().parse_args()))
