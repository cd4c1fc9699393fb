"""``structconv bench``: a thin wrapper over :func:`structconv.benchmark.run_benchmark`."""

from __future__ import annotations

import argparse
import json
import sys

from ._args import finite_float, int_list, nonnegative_int, path_arg, positive_int

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


def main(args: argparse.Namespace) -> int:
    from ..benchmark import BenchmarkConfig, format_row, run_benchmark

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
