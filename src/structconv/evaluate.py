"""``structconv decompose`` (Step 2 on a saved model) and ``structconv eval`` (accuracy on a dataset)."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["get_decompose_args_parser", "decompose_main", "get_eval_args_parser", "eval_main", "load_model"]


def load_model(path: str):
    """``(model, checkpoint dict)`` rebuilt from a structconv checkpoint that names its architecture."""
    from .serialization import load, read_checkpoint

    ckpt = read_checkpoint(path)
    if "arch" not in (ckpt.get("model") or {}):
        raise ValueError(f"checkpoint {path!r} records no architecture (model_args); it was not written by structconv train/save")
    return load(path), ckpt


def get_decompose_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Decompose a structured checkpoint into sum-pool + small layers",
                                add_help=add_help)  # fmt: skip
    p.add_argument("checkpoint", help="a structured model saved by `structconv train` (model.pth) or sc.save")
    p.add_argument("-o", "--output", required=True, help="where to write the decomposed model")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    return p


def decompose_main(args: argparse.Namespace) -> int:
    from .convert import decompose
    from .layers import StructuredLayer
    from .regularizer import structure_errors
    from .serialization import save

    model, ckpt = load_model(args.checkpoint)
    if not any(isinstance(m, StructuredLayer) for m in model.modules()):
        raise ValueError(f"checkpoint {args.checkpoint!r} has no structured layers to decompose "
                         "(a baseline model, or already decomposed)")  # fmt: skip
    errors = structure_errors(model)
    deployed = decompose(model)
    extra = {k: v for k, v in ckpt.items() if k in ("args", "metrics")}
    save(deployed, args.output, model_args=ckpt["model"], structure_errors=errors, **extra)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    summary = {"input": args.checkpoint, "output": args.output, "layers": len(errors),
               "structure_error_mean": sum(errors.values()) / len(errors), "structure_error_max": max(errors.values()),
               "params_before": count(model), "params_after": count(deployed)}  # fmt: skip
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"decomposed {summary['layers']} layers: params {summary['params_before']:,} -> {summary['params_after']:,}; "
              f"structure error mean {summary['structure_error_mean']:.2e}, max {summary['structure_error_max']:.2e}")
        worst = sorted(errors.items(), key=lambda kv: -kv[1])[:3]
        print("largest errors: " + ", ".join(f"{k} {v:.2e}" for k, v in worst))
        print(f"wrote {args.output}")
    return 0


def get_eval_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Evaluate a checkpoint on a dataset's test split", add_help=add_help)
    p.add_argument("checkpoint", help="a model saved by `structconv train` / `structconv decompose`")
    p.add_argument("--dataset", help="dataset name (default: the one it was trained on)")
    p.add_argument("--data-path", help="dataset root (default: the training run's)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--in-chans", type=int)
    p.add_argument("--eval-subset", type=int, help="first N test images only")
    p.add_argument("-b", "--batch-size", type=int, default=256)
    p.add_argument("-j", "--workers", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    return p


def eval_main(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader

    from .complexity import count_ops
    from .data import build_datasets
    from .train import evaluate_structured

    model, ckpt = load_model(args.checkpoint)
    trained = ckpt.get("args") or {}
    dataset = args.dataset or trained.get("dataset")
    data_path = args.data_path or trained.get("data_path")
    if not dataset or not data_path:
        raise ValueError(f"checkpoint {args.checkpoint!r} does not say which data it was trained on; pass --dataset and --data-path")
    _, test, info = build_datasets(dataset, data_path, image_size=args.image_size or trained.get("image_size"),
                                   in_chans=args.in_chans or trained.get("in_chans"), eval_subset=args.eval_subset)  # fmt: skip
    loader = DataLoader(test, batch_size=args.batch_size, num_workers=args.workers)
    device = torch.device(args.device)
    metrics = evaluate_structured(model.to(device), loader, device)
    ops = count_ops(model.cpu(), (1, *info.input_size))
    result = {"checkpoint": args.checkpoint, "dataset": dataset, "images": len(test), **metrics, **ops.to_dict()}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        line = f"{args.checkpoint}: accuracy {metrics['accuracy']:.2f}% on {len(test)} {dataset} test images"
        if "accuracy_decomposed" in metrics:
            line += (f"; decomposed {metrics['accuracy_decomposed']:.2f}% "
                     f"(structure error {metrics['structure_error_mean']:.2e})")  # fmt: skip
        print(line)
        print(f"adds {ops.adds:,}  mults {ops.mults:,}  params {ops.params:,}", file=sys.stdout)
    return 0
