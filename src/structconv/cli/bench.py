"""``structconv bench``: a thin wrapper over :func:`structconv.benchmark.run_benchmark`."""

from __future__ import annotations

import argparse
import json
import sys

from ..runtimes import RUNTIMES
from ._args import CommandError, finite_float, int_list, name_list, nonnegative_int, path_arg, positive_int

__all__ = ["get_args_parser", "main", "ARGUMENT_FLAGS"]

#: library arguments named differently from the options that set them
ARGUMENT_FLAGS = {"batches": "--batch"}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="time dense vs decomposed models (interleaved medians)", add_help=add_help)
    p.add_argument("--arch", required=True, help="model name (cifar_resnet56, resnet18, any torchvision/timm name)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--struct", choices=("A", "B"), help="the paper's Struct-A / Struct-B plan")
    g.add_argument("--ratio", type=finite_float, help="uniform compression ratio instead of --struct")
    p.add_argument(
        "--plan",
        dest="plan_by",
        choices=("preset", "speed"),
        default="preset",
        help="'speed': per layer, the fastest measured (c, n) with the compression of --struct's "
        "preset (or of --ratio): a speed-aware plan; 'preset': the preset's own (c, n)",
    )
    p.add_argument("--batch", type=int_list, default=(1, 8), help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--image-size", type=positive_int, default=None, help="input height=width (default: the model's)")
    p.add_argument("--num-classes", type=positive_int, default=None)
    p.add_argument(
        "--threads", type=positive_int, default=None, help="torch threads (default: torch.get_num_threads())"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (CUDA timed with CUDA events)")
    p.add_argument("--warmup", type=nonnegative_int, default=3)
    p.add_argument("--repeats", type=positive_int, default=15, help="interleaved rounds (at least)")
    p.add_argument("--min-time", type=finite_float, default=2.0, help="keep timing until this many seconds have passed")
    p.add_argument(
        "--layout",
        choices=("auto", "contiguous", "channels_last"),
        default="auto",
        help="memory layout; 'auto' measures both and keeps each model's faster one",
    )
    p.add_argument(
        "--fold-bn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fold BatchNorm into the preceding convs of both models (default on)",
    )
    p.add_argument(
        "--autotune",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run each decomposed layer as its recomposed dense kernel where that is measured faster",
    )
    p.add_argument(
        "--cache", type=path_arg, default=None, help="autotune cache file (default ~/.cache/structconv/autotune.json)"
    )
    p.add_argument(
        "--onnx",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time both models in ONNX Runtime (default: when onnxruntime is installed)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time both models compiled with torch.compile (Inductor, frozen parameters)",
    )
    p.add_argument(
        "--runtime",
        choices=tuple(RUNTIMES),
        help="instead: deploy in this runtime (structconv.deploy: each layer's form measured there) and "
        "time the deployed model against the dense model of the same runtime and precision",
    )
    p.add_argument(
        "--precision",
        type=name_list,
        default=None,
        help="with --runtime: comma-separated fp32, bf16, int8 (default: the runtime's own on this CPU); "
        "int8 calibrates on random inputs, fit for timing, not for accuracy",
    )
    p.add_argument("--layers", action=argparse.BooleanOptionalAction, default=True, help="print the per-layer table")
    p.add_argument(
        "--malloc",
        choices=("retain", "system"),
        default="retain",
        help="'retain' (default): glibc keeps freed activations for the next call instead of "
        "unmapping them (structconv.allocator.retain_freed_memory), for both models; "
        "'system': glibc's defaults, under which a call may page-fault its activations back",
    )
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    return p


def _bench_runtime(args: argparse.Namespace) -> int:
    """``--runtime``: one deployment per batch size and precision, each timed against the dense
    model in that runtime (the whole-model check of :func:`structconv.deploy`)."""
    from ..runtimes import check_target, default_precision

    if args.device != "cpu" or args.compile or args.onnx:
        raise CommandError("--runtime times on the CPU in that runtime alone; drop --device/--compile/--onnx")
    if args.plan_by != "preset" or args.layout != "auto" or args.cache is not None or not args.fold_bn:
        # deploy folds BatchNorm and chooses layers and lowerings itself: these would be ignored
        raise CommandError("--plan, --layout, --cache and --no-fold-bn apply to the eager bench, not to --runtime")
    precisions = list(args.precision or [default_precision(args.runtime)])
    for precision in precisions:
        check_target(args.runtime, precision)  # one line before any work
    import torch

    from .._io import json_safe
    from ..benchmark import build_models, input_size_for
    from ..deployment import deploy

    size = input_size_for(args.arch, args.image_size)
    _, structured = build_models(
        args.arch, struct=args.struct, ratio=args.ratio, num_classes=args.num_classes, seed=args.seed
    )
    rows = []
    for batch in args.batch:
        for precision in precisions:
            torch.manual_seed(args.seed)
            x = torch.randn(batch, *size)
            d = deploy(
                structured,
                x,
                runtime=args.runtime,
                precision=precision,
                threads=args.threads,
                calibration=[torch.randn(batch, *size) for _ in range(4)] if precision == "int8" else None,
                whole_model_rounds=args.repeats,
            )
            rows.append(dict(d.to_dict(), batch=batch))
            if not args.json:
                print(f"== {args.arch}, batch {batch}, {args.runtime} {precision}", flush=True)
                print(d if args.layers else str(d).splitlines()[-2 if d.rel_error is not None else -1], flush=True)
    if args.json:
        print(json.dumps(json_safe({"arch": args.arch, "runtime": args.runtime, "rows": rows}), indent=1))
    return 0


def main(args: argparse.Namespace) -> int:
    from ..benchmark import BenchmarkConfig, format_row, run_benchmark

    if args.precision is not None and not args.runtime:
        raise CommandError("--precision applies to --runtime")
    if args.runtime:
        return _bench_runtime(args)

    def show(result, row, tune):
        print(format_row(result, row, tune, layers=args.layers), flush=True)

    argv = sys.argv[1:]
    config = BenchmarkConfig(
        arch=args.arch,
        struct=args.struct,
        ratio=args.ratio,
        plan_by=args.plan_by,
        batches=args.batch,
        image_size=args.image_size,
        num_classes=args.num_classes,
        threads=args.threads,
        device=args.device,
        warmup=args.warmup,
        repeats=args.repeats,
        min_time=args.min_time,
        layout=args.layout,
        fold_bn=args.fold_bn,
        autotune=args.autotune,
        cache=args.cache,
        onnx=args.onnx,
        compile=args.compile,
        malloc=args.malloc,
        seed=args.seed,
        command="structconv " + " ".join(argv) if argv[:1] == ["bench"] else None,
    )
    result = run_benchmark(config, on_row=None if args.json else show)
    if args.json:
        from .._io import json_safe

        print(json.dumps(json_safe(result), indent=1, default=str))
    return 0
