"""What a run writes and prints: the step/eval log, ``results.json`` and the final table."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from ..evaluation import worst_errors

__all__ = ["RunLog", "format_report"]


class RunLog:
    """Appends step/eval records to ``log.jsonl`` and evaluation rows to ``metrics.csv`` (rank 0)."""

    FIELDS = (
        "epoch",
        "step",
        "lr",
        "train_loss",
        "task_loss",
        "reg_loss",
        "accuracy",
        "accuracy_decomposed",
        "structure_error_mean",
        "structure_error_max",
        "seconds",
    )

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled, self.out_dir, self.writer = enabled, out_dir, None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out_dir / "tb"))
            except ImportError:
                print("tensorboard is not installed; logging to CSV/JSON only", file=sys.stderr)

    def record(self, kind: str, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.out_dir / "log.jsonl", "a") as f:
            f.write(json.dumps({"kind": kind, **row}) + "\n")
        if kind == "eval":
            path = self.out_dir / "metrics.csv"
            new = not path.exists()
            with open(path, "a", newline="") as f:
                w = csv.DictWriter(f, self.FIELDS, extrasaction="ignore")
                if new:
                    w.writeheader()
                w.writerow(row)
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                    self.writer.add_scalar(f"{kind}/{key}", value, row.get("step", 0))


def format_report(results: dict) -> str:
    """The table ``structconv train`` prints at the end (with the worst structure errors)."""
    from .recipes import get_recipe, recipe_names

    def pct(value):
        return "-" if value is None else f"{value:.2f}"

    what = results["arch"] + (f" Struct-{results['struct']}" if results.get("struct") else "")
    what += f" ratio {results['ratio']:g}" if results.get("ratio") else ""
    mode = results["mode"]
    uses_lambda = mode in recipe_names() and get_recipe(mode).uses_lambda
    error_mean = results.get("structure_error_mean")
    rows = [
        ("mode", mode),
        ("arch", what),
        ("lambda", f"{results['lam']:g}" if uses_lambda else "-"),
        ("steps / epochs", f"{results['steps']} / {results['epochs_completed']:.2f}"),
        ("accuracy before decomposition (%)", pct(results["accuracy_before_decomposition"])),
        ("accuracy after decomposition (%)", pct(results["accuracy_after_decomposition"])),
        ("mean structure error", "-" if error_mean is None else f"{error_mean:.2e}"),
        ("adds (deployed, per image)", f"{results['adds']:,}"),
        ("mults (deployed, per image)", f"{results['mults']:,}"),
        ("params (deployed)", f"{results['params']:,}"),
        ("train time (s)", f"{results['train_seconds']:.0f}"),
    ]
    if results.get("calibration"):
        cal = results["calibration"]
        rows.append(("calibration", cal.get("summary", "")))
    if results.get("structure_errors"):
        worst = worst_errors(results["structure_errors"], 3)
        rows.append(("largest structure errors", ", ".join(f"{n} {val:.1e}" for n, val in worst)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {val}" for k, val in rows)
