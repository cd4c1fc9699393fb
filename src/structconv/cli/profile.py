"""``structconv profile``: a thin wrapper over :func:`structconv.profiling.profile`."""

from __future__ import annotations

import argparse
import json
import sys

from ._args import finite_float, positive_int

__all__ = ["get_args_parser", "main"]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Count adds, mults and params (paper accounting)", add_help=add_help)
    parser.add_argument("--arch", required=True, help="architecture name (structconv, torchvision or timm)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--struct", choices=["A", "B", "a", "b"], help="the paper's Struct-A / Struct-B plan")
    group.add_argument("--ratio", type=finite_float, help="uniform compression ratio for structurize()")
    parser.add_argument(
        "--input-size",
        type=positive_int,
        nargs="+",
        metavar="N",
        help="C H W, or H W, or H (default: the model's own, e.g. 3 32 32 for CIFAR ResNets)",
    )
    parser.add_argument("--num-classes", type=positive_int, default=None, help="classifier size (model default)")
    parser.add_argument(
        "--form",
        choices=["deployed", "training"],
        default="deployed",
        help="count the decomposed deployment form (default) or the structured training form",
    )
    parser.add_argument("--layers", action="store_true", help="also print the per-layer rows")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(args: argparse.Namespace) -> int:
    from ..profiling import format_profile, profile

    result = profile(
        args.arch,
        struct=args.struct,
        ratio=args.ratio,
        input_size=args.input_size,
        num_classes=args.num_classes,
        form=args.form,
    )
    report = result.pop("_report")
    if args.json:
        if args.layers:
            result["layers"] = report.to_dict(rows=True)["layers"]
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        if args.layers:
            print(report)
            print()
        print(format_profile(result))
    return 0
