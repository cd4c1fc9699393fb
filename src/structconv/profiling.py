"""Adds / mults / params of an architecture, beside the paper's figures (``structconv profile``).

Counts the *deployment* form by default (a structurized model is decomposed first, since that
is what the paper's tables count); ``form="training"`` counts the structured training form.
"""

from __future__ import annotations

import torch

from . import validation as v
from .complexity import count_ops
from .convert import decompose
from .models import create_model, default_input_size
from .models.paper import paper_row

__all__ = ["profile", "format_profile", "parse_input_size"]


def parse_input_size(values, arch: str) -> tuple[int, int, int]:
    """``(C, H, W)`` from ``C H W``, ``H W`` or ``H`` (the rest from the model's default input size)."""
    default = default_input_size(arch)
    if not values:
        return tuple(default)
    values = list(v.items(values, "input_size", each=lambda x, n: v.integer(x, n, low=1)))
    if len(values) == 1:
        return (default[0], values[0], values[0])
    if len(values) == 2:
        return (default[0], *values)
    if len(values) == 3:
        return tuple(values)
    raise v.ArgumentError("{input_size}={value}: give C H W, H W or H", value=values)


def profile(
    arch: str,
    *,
    struct: str | None = None,
    ratio: float | None = None,
    input_size=None,
    num_classes: int | None = None,
    form: str = "deployed",
) -> dict:
    """Count ops of ``arch`` (optionally Struct-A/B or a ratio) and compare with the paper's row."""
    input_size = parse_input_size(input_size, arch)
    struct = struct.upper() if struct else None
    with torch.no_grad():
        model = create_model(arch, num_classes=num_classes, in_chans=input_size[0], struct=struct, ratio=ratio)
    structured = struct is not None or ratio is not None
    if structured and form == "deployed":
        model = decompose(model, on_unstructured="ignore")  # random weights: counting, not deploying
    report = count_ops(model, (1, *input_size))
    out = {
        "arch": arch,
        "struct": struct,
        "ratio": ratio,
        "form": form if structured else "dense",
        "input_size": list(input_size),
        **report.to_dict(),
    }
    row = paper_row(arch, struct) if ratio is None else None
    if row is not None:
        comparable = tuple(input_size) == row.input_size and num_classes in (
            None,
            {"Table 1": 10, "Table 5": 19}.get(row.table, 1000),
        )
        paper = {
            "table": row.table,
            "label": row.label,
            "input_size": list(row.input_size),
            **row.figures(),
            "accuracy": row.accuracy,
            "comparable": comparable,
        }
        if comparable:
            paper["gap"] = {k: (out[k] - v) / v for k, v in row.figures().items() if v}
        out["paper"] = paper
    out["_report"] = report
    return out


def _fmt(value: float) -> str:
    if value >= 1e9:
        return f"{value / 1e9:.3f}G"
    if value >= 1e6:
        return f"{value / 1e6:.3f}M"
    if value >= 1e3:
        return f"{value / 1e3:.2f}K"
    return f"{value:g}"


def format_profile(result: dict) -> str:
    what = result["arch"] + (f" Struct-{result['struct']}" if result["struct"] else "")
    what += f" ratio {result['ratio']:g}" if result["ratio"] else ""
    lines = [f"{what}  ({result['form']} form, input 1x{'x'.join(map(str, result['input_size']))})"]
    paper = result.get("paper")
    header = f"{'':8s} {'ours':>12s}"
    if paper:
        header += f" {'paper':>12s} {'gap':>8s}"
    lines.append(header)
    for key in ("adds", "mults", "params"):
        line = f"{key:8s} {_fmt(result[key]):>12s}"
        if paper:
            ref = paper[key]
            gap = paper.get("gap", {}).get(key)
            line += f" {_fmt(ref) if ref else '-':>12s} {f'{gap:+.1%}' if gap is not None else '-':>8s}"
        lines.append(line)
    if paper:
        note = f"paper: {paper['table']}, {paper['label']}"
        if paper["accuracy"] is not None:
            metric = "Cityscapes mIoU" if paper["table"] == "Table 5" else "top-1"
            note += f", {metric} {paper['accuracy']:.2f}%"
        if not paper["comparable"]:
            size = "x".join(map(str, paper["input_size"]))
            note += f"; paper figures are for input {size} and its own head, so no gap is computed"
        lines.append(note)
    return "\n".join(lines)
