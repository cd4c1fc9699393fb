"""``structconv eval``: accuracy of a checkpoint on a dataset's test split."""

from __future__ import annotations

import argparse
import json

from ._args import nonnegative_int, path_arg, positive_int

__all__ = ["get_args_parser", "main"]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Evaluate a checkpoint on a dataset's test split", add_help=add_help)
    p.add_argument("checkpoint", type=path_arg, help="a model saved by `structconv train` / `structconv decompose`")
    p.add_argument("--dataset", help="dataset name (default: the one it was trained on)")
    p.add_argument("--data-path", type=path_arg, help="dataset root (default: the training run's)")
    p.add_argument("--image-size", type=positive_int)
    p.add_argument("--in-chans", type=positive_int)
    p.add_argument("--eval-subset", type=positive_int, help="first N test images only")
    p.add_argument("-b", "--batch-size", type=positive_int, default=256)
    p.add_argument("-j", "--workers", type=nonnegative_int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    return p


def main(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate_checkpoint

    result = evaluate_checkpoint(
        args.checkpoint,
        dataset=args.dataset,
        data_path=args.data_path,
        image_size=args.image_size,
        in_chans=args.in_chans,
        eval_subset=args.eval_subset,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        line = (
            f"{args.checkpoint}: accuracy {result['accuracy']:.2f}% "
            f"on {result['images']} {result['dataset']} test images"
        )
        if "accuracy_decomposed" in result:
            line += (
                f"; decomposed {result['accuracy_decomposed']:.2f}% "
                f"(structure error {result['structure_error_mean']:.2e})"
            )
        print(line)
        print(f"adds {result['adds']:,}  mults {result['mults']:,}  params {result['params']:,}")
    return 0
