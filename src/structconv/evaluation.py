"""Accuracy of a model on a data loader, before and after decomposition, and Step 2 on a saved
checkpoint (what ``structconv eval`` and ``structconv decompose`` run)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .convert import decompose
from .layers import StructuredLayer
from .regularizer import structure_errors
from .serialization import load, read_checkpoint, save

__all__ = ["evaluate", "evaluate_structured", "load_model", "worst_errors", "decompose_checkpoint"]


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
            out["accuracy_decomposed"], out["loss_decomposed"] = evaluate(deployed, loader, device, channels_last=channels_last)
            out["structure_error_mean"] = sum(errors.values()) / len(errors)
            out["structure_error_max"] = max(errors.values())
            out["structure_errors"] = errors
    return out


def load_model(path: str | os.PathLike):
    """``(model, checkpoint dict)`` rebuilt from a structconv checkpoint that names its architecture."""
    ckpt = read_checkpoint(path)
    if "arch" not in (ckpt.get("model") or {}):
        raise ValueError(f"checkpoint {str(path)!r} records no architecture (model_args); it was not written by "
                         "structconv train or structconv.save(..., model_args=...)")  # fmt: skip
    return load(path), ckpt


def decompose_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike, *, overwrite: bool = False,
                         tolerance: float | None = None, on_unstructured: str = "warn") -> dict:  # fmt: skip
    """Step 2 on a saved structured model: write its deployment form to ``output`` (atomically)
    and return a summary with every layer's structure error.  ``output`` must differ from
    ``checkpoint`` and may replace an existing file only with ``overwrite``."""
    src, dst = Path(checkpoint), Path(output)
    if not src.is_file():
        raise FileNotFoundError(f"checkpoint {str(src)!r} does not exist")
    if dst.is_dir():
        raise ValueError(f"--output {str(dst)!r} is a directory; give a file name such as {str(dst / 'decomposed.pth')!r}")
    if src.exists() and dst.exists() and src.resolve() == dst.resolve():
        raise ValueError(f"--output {str(dst)!r} is the input checkpoint; writing there would destroy it")
    if dst.exists() and not overwrite:
        raise ValueError(f"--output {str(dst)!r} already exists; pass --overwrite to replace it")
    model, ckpt = load_model(src)
    if not any(isinstance(m, StructuredLayer) for m in model.modules()):
        raise ValueError(f"checkpoint {str(src)!r} has no structured layers to decompose "
                         "(a baseline model, or already decomposed)")  # fmt: skip
    errors = structure_errors(model)
    kwargs = {} if tolerance is None else {"tolerance": tolerance}
    deployed = decompose(model, on_unstructured=on_unstructured, **kwargs)
    extra = {k: v for k, v in ckpt.items() if k in ("args", "metrics")}
    save(deployed, dst, model_args=ckpt["model"], structure_errors=errors, **extra)
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"input": str(src), "output": str(dst), "layers": len(errors),
            "structure_error_mean": sum(errors.values()) / len(errors), "structure_error_max": max(errors.values()),
            "worst_layers": dict(worst_errors(errors)), "structure_errors": errors,
            "params_before": params(model), "params_after": params(deployed)}  # fmt: skip
