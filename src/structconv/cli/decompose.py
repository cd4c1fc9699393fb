"""``structconv decompose``: Step 2 on a saved model (:func:`structconv.evaluation.decompose_checkpoint`)."""

from __future__ import annotations

import argparse
import json

from ._args import finite_float, path_arg

__all__ = ["get_args_parser", "main"]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Decompose a structured checkpoint into sum-pool + small layers", add_help=add_help
    )
    p.add_argument(
        "checkpoint", type=path_arg, help="a structured model saved by `structconv train` (model.pth) or sc.save"
    )
    p.add_argument(
        "-o", "--output", type=path_arg, required=True, help="where to write the decomposed model (a new file)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument(
        "--tolerance",
        type=finite_float,
        default=None,
        help="structure error above which a layer is reported (default: structconv.DEFAULT_TOLERANCE)",
    )
    p.add_argument("--strict", action="store_true", help="refuse (exit 2) when a layer is above --tolerance")
    p.add_argument("--top", type=int, default=5, help="how many of the largest per-layer errors to print")
    p.add_argument("--json", action="store_true", help="print a JSON summary (with every layer's error)")
    return p


def main(args: argparse.Namespace) -> int:
    import warnings

    from ..convert import DEFAULT_TOLERANCE, StructureWarning
    from ..evaluation import decompose_checkpoint, worst_errors

    tolerance = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StructureWarning)
        summary = decompose_checkpoint(
            args.checkpoint,
            args.output,
            overwrite=args.overwrite,
            tolerance=tolerance,
            on_unstructured="raise" if args.strict else "warn",
        )
    above = [n for n, v in summary["structure_errors"].items() if not v <= tolerance]
    summary["tolerance"], summary["layers_above_tolerance"] = tolerance, above
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(
        f"decomposed {summary['layers']} layers: params {summary['params_before']:,} -> {summary['params_after']:,}; "
        f"structure error mean {summary['structure_error_mean']:.2e}, max {summary['structure_error_max']:.2e}"
    )
    print(f"largest structure errors (tolerance {tolerance:g}):")
    for name, value in worst_errors(summary["structure_errors"], max(args.top, 0)):
        print(f"  {name:40s} {value:.2e}{'  above tolerance' if not value <= tolerance else ''}")
    if caught:
        print(
            f"warning: {len(above)} layers are above the tolerance: the decomposed model computes their "
            "projection, not the trained weights"
        )
    print(f"wrote {args.output}")
    return 0
