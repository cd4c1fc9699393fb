"""Accuracy of a model on a data loader, before and after decomposition, and Step 2 on a saved
checkpoint (what ``structconv eval`` and ``structconv decompose`` run)."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from . import validation as v
from .convert import decompose
from .layers import StructuredLayer
from .regularizer import structure_errors
from .serialization import load, read_checkpoint, save

__all__ = [
    "evaluate",
    "evaluate_structured",
    "evaluate_checkpoint",
    "load_model",
    "worst_errors",
    "decompose_checkpoint",
]


@torch.no_grad()
def evaluate(model: nn.Module, loader, device, *, channels_last: bool = False) -> tuple[float, float]:
    """Top-1 accuracy (%) and mean cross-entropy of ``model`` on ``loader``."""
    model.eval()
    correct = total = 0
    loss = 0.0
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        if channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        out = model(images)
        loss += F.cross_entropy(out, targets, reduction="sum").item()
        correct += (out.argmax(1) == targets).sum().item()
        total += targets.numel()
    if total == 0:
        raise ValueError("evaluate: the data loader yielded no images")
    return 100.0 * correct / total, loss / total


def worst_errors(errors: dict[str, float], k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` largest per-layer structure errors, largest first."""
    return sorted(errors.items(), key=lambda kv: -kv[1])[:k]


def evaluate_structured(model: nn.Module, loader, device, *, channels_last: bool = False) -> dict:
    """Accuracy as trained; for structured models also of ``decompose(model)`` and the structure
    errors (mean, max, and every layer's under ``structure_errors``)."""
    with torch.random.fork_rng(devices=[]):  # building decomposed layers may draw init values
        acc, loss = evaluate(model, loader, device, channels_last=channels_last)
        out = {"accuracy": acc, "loss": loss}
        if any(isinstance(m, StructuredLayer) for m in model.modules()):
            errors = structure_errors(model)
            # this measures what decomposition costs, whatever the errors: no warning here
            deployed = decompose(model, on_unstructured="ignore")
            if channels_last:
                deployed = deployed.to(memory_format=torch.channels_last)
            out["accuracy_decomposed"], out["loss_decomposed"] = evaluate(
                deployed, loader, device, channels_last=channels_last
            )
            out["structure_error_mean"] = sum(errors.values()) / len(errors)
            out["structure_error_max"] = max(errors.values())
            out["structure_errors"] = errors
    return out


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    dataset: str | None = None,
    data_path: str | os.PathLike | None = None,
    image_size: int | None = None,
    in_chans: int | None = None,
    eval_subset: int | None = None,
    batch_size: int = 256,
    workers: int = 0,
    device: str = "cpu",
) -> dict:
    """Accuracy of a saved model on a dataset's test split (by default the one it was trained
    on, from its recorded options), with its op counts; what ``structconv eval`` prints."""
    from torch.utils.data import DataLoader

    from .complexity import count_ops
    from .data import build_datasets
    from .distributed import parse_device

    v.path(checkpoint, "checkpoint")
    if data_path is not None:
        v.path(data_path, "data_path")
    for name, value in (("image_size", image_size), ("in_chans", in_chans), ("eval_subset", eval_subset)):
        if value is not None:
            v.integer(value, name, low=1)
    v.integer(batch_size, "batch_size", low=1)
    v.integer(workers, "workers", low=0)
    dev = parse_device(device)
    model, ckpt = load_model(checkpoint)
    trained = ckpt.get("args") or {}
    dataset = dataset or trained.get("dataset")
    data_path = data_path or trained.get("data_path")
    if not dataset or not data_path:
        raise v.ArgumentError(
            "checkpoint {path} does not say which data it was trained on; pass {dataset} and {data_path}",
            path=repr(str(checkpoint)),
        )
    model_chans = (ckpt.get("model") or {}).get("in_chans")
    _, test, info = build_datasets(
        dataset,
        data_path,
        image_size=image_size or trained.get("image_size"),
        in_chans=in_chans or trained.get("in_chans"),
        eval_subset=eval_subset,
    )
    if model_chans is not None and info.in_chans != model_chans:
        raise v.ArgumentError(
            "{in_chans}={value}: the model in {path} takes {n}-channel images",
            value=info.in_chans,
            path=repr(str(checkpoint)),
            n=model_chans,
        )
    loader = DataLoader(test, batch_size=batch_size, num_workers=workers)
    metrics = evaluate_structured(model.to(dev), loader, dev)
    errors = metrics.pop("structure_errors", None)
    ops = count_ops(model.cpu(), (1, *info.input_size))
    result = {"checkpoint": str(checkpoint), "dataset": dataset, "images": len(test), **metrics, **ops.to_dict()}
    if errors:
        result["structure_errors"] = dict(sorted(errors.items(), key=lambda kv: -kv[1]))
    return result


def load_model(path: str | os.PathLike):
    """``(model, checkpoint dict)`` rebuilt from a structconv checkpoint that names its architecture."""
    ckpt = read_checkpoint(path)
    if "arch" not in (ckpt.get("model") or {}):
        raise ValueError(
            f"checkpoint {str(path)!r} records no architecture (model_args); it was not written by "
            "structconv train or structconv.save(..., model_args=...)"
        )
    return load(path), ckpt


def decompose_checkpoint(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    *,
    overwrite: bool = False,
    tolerance: float | None = None,
    on_unstructured: str = "warn",
) -> dict:
    """Step 2 on a saved structured model: write its deployment form to ``output`` (atomically)
    and return a summary with every layer's structure error.  ``output`` must differ from
    ``checkpoint`` and may replace an existing file only with ``overwrite``."""
    src, dst = v.path(checkpoint, "checkpoint"), v.path(output, "output")
    if not src.is_file():
        raise FileNotFoundError(f"checkpoint {str(src)!r} does not exist")
    if dst.is_dir():
        raise v.ArgumentError(
            "{output}={path} is a directory; give a file name such as {example}",
            path=repr(str(dst)),
            example=repr(str(dst / "decomposed.pth")),
        )
    if src.exists() and dst.exists() and src.resolve() == dst.resolve():
        raise v.ArgumentError(
            "{output}={path} is the input checkpoint; writing there would destroy it", path=repr(str(dst))
        )
    if dst.exists() and not overwrite:
        raise v.ArgumentError("{output}={path} already exists; pass {overwrite} to replace it", path=repr(str(dst)))
    model, ckpt = load_model(src)
    if not any(isinstance(m, StructuredLayer) for m in model.modules()):
        raise ValueError(
            f"checkpoint {str(src)!r} has no structured layers to decompose (a baseline model, or already decomposed)"
        )
    errors = structure_errors(model)
    kwargs = {} if tolerance is None else {"tolerance": tolerance}
    deployed = decompose(model, on_unstructured=on_unstructured, **kwargs)
    extra = {k: v for k, v in ckpt.items() if k in ("args", "metrics")}
    save(deployed, dst, model_args=ckpt["model"], structure_errors=errors, **extra)
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {
        "input": str(src),
        "output": str(dst),
        "layers": len(errors),
        "structure_error_mean": sum(errors.values()) / len(errors),
        "structure_error_max": max(errors.values()),
        "worst_layers": dict(worst_errors(errors)),
        "structure_errors": errors,
        "params_before": params(model),
        "params_after": params(deployed),
    }
