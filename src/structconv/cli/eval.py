"""``structconv eval``: accuracy of a checkpoint on a dataset's test split."""

from __future__ import annotations

import argparse
import json

from ._args import positive_int

__all__ = ["get_args_parser", "main"]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Evaluate a checkpoint on a dataset's test split", add_help=add_help)
    p.add_argument("checkpoint", help="a model saved by `structconv train` / `structconv decompose`")
    p.add_argument("--dataset", help="dataset name (default: the one it was trained on)")
    p.add_argument("--data-path", help="dataset root (default: the training run's)")
    p.add_argument("--image-size", type=positive_int)
    p.add_argument("--in-chans", type=positive_int)
    p.add_argument("--eval-subset", type=positive_int, help="first N test images only")
    p.add_argument("-b", "--batch-size", type=positive_int, default=256)
    p.add_argument("-j", "--workers", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    return p


def main(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from ..complexity import count_ops
    from ..data import build_datasets
    from ..distributed import parse_device
    from ..evaluation import evaluate_structured, load_model

    device = parse_device(args.device)
    if args.workers < 0:
        raise ValueError(f"--workers {args.workers} must be >= 0")
    model, ckpt = load_model(args.checkpoint)
    trained = ckpt.get("args") or {}
    dataset = args.dataset or trained.get("dataset")
    data_path = args.data_path or trained.get("data_path")
    if not dataset or not data_path:
        raise ValueError(f"checkpoint {args.checkpoint!r} does not say which data it was trained on; pass --dataset and --data-path")
    in_chans = args.in_chans or trained.get("in_chans")
    model_chans = (ckpt.get("model") or {}).get("in_chans")
    _, test, info = build_datasets(dataset, data_path, image_size=args.image_size or trained.get("image_size"),
                                   in_chans=in_chans, eval_subset=args.eval_subset)  # fmt: skip
    if model_chans is not None and info.in_chans != model_chans:
        raise ValueError(f"--in-chans {info.in_chans}: the model in {args.checkpoint!r} takes {model_chans}-channel images")
    loader = DataLoader(test, batch_size=args.batch_size, num_workers=args.workers)
    metrics = evaluate_structured(model.to(device), loader, device)
    errors = metrics.pop("structure_errors", None)
    ops = count_ops(model.cpu(), (1, *info.input_size))
    result = {"checkpoint": args.checkpoint, "dataset": dataset, "images": len(test), **metrics, **ops.to_dict()}
    if errors:
        result["structure_errors"] = dict(sorted(errors.items(), key=lambda kv: -kv[1]))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        line = f"{args.checkpoint}: accuracy {metrics['accuracy']:.2f}% on {len(test)} {dataset} test images"
        if "accuracy_decomposed" in metrics:
            line += (f"; decomposed {metrics['accuracy_decomposed']:.2f}% "
                     f"(structure error {metrics['structure_error_mean']:.2e})")  # fmt: skip
        print(line)
        print(f"adds {ops.adds:,}  mults {ops.mults:,}  params {ops.params:,}")
    return 0
