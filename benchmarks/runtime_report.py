"""Markdown for BENCHMARKS.md "Per runtime" from ``benchmarks/results/runtimes/*.json``
(written by ``benchmarks/runtime_table.py``): the model x runtime/precision grid, then one
detail line per cell.

    python benchmarks/runtime_report.py
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "runtimes"
MODELS = [
    ("resnet18", 1, "ResNet18-A 224², b1"),
    ("resnet18", 8, "ResNet18-A 224², b8"),
    ("cifar_resnet56", 1, "ResNet56-A 32², b1"),
    ("cifar_resnet56", 32, "ResNet56-A 32², b32"),
    ("mobilenet_v2", 1, "MobileNetV2-A 224², b1"),
]
COLUMNS = [
    ("eager", "fp32"),
    ("eager", "bf16"),
    ("compile", "fp32"),
    ("compile", "bf16"),
    ("compile", "int8"),
    ("onnxruntime", "fp32"),
    ("onnxruntime", "int8"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("openvino", "int8"),
]


def load() -> dict:
    cells = {}
    for f in sorted(glob.glob(str(RESULTS / "*_b*_*.json"))):
        data = json.loads(Path(f).read_text())
        for row in data.get("rows", []):
            if "input_shape" not in row:  # pool_bound / openvino_breakdown files: not a deployment
                continue
            arch = Path(f).name.split("_b")[0]
            key = (arch, row["input_shape"][0], row["runtime"], row["precision"])
            cells[key] = dict(row, command=data["command"], mults_ratio=data.get("mults_ratio"))
    return cells


def shipped(row) -> tuple[float, float, float, float | None]:
    """(dense ms, shipped ms, shipped speed-up, per-layer speed-up) of a row, old files included
    (they recorded the per-layer result's time even when the model shipped all-dense)."""
    w = row["whole_model"]
    per_layer = w.get(
        "per_layer_speedup", w["speedup"] if w["choice"] == "per_layer" or "per_layer_ms" not in w else None
    )
    if w["choice"] == "all_dense":
        return w["dense_ms"], w["dense_ms"], 1.0, per_layer
    return w["dense_ms"], w["deployed_ms"], w["speedup"], per_layer


def main() -> None:
    cells = load()
    head = "| model | " + " | ".join(f"{r} {p}" for r, p in COLUMNS) + " |"
    print(head)
    print("| --- |" + " ---: |" * len(COLUMNS))
    for arch, batch, label in MODELS:
        out = []
        for rt, prec in COLUMNS:
            row = cells.get((arch, batch, rt, prec))
            if row is None or not row.get("whole_model"):
                out.append("–")
                continue
            dense, ms, speedup, _ = shipped(row)
            mark = "**" if speedup >= (1.6 if arch == "resnet18" else 1.3) else ""
            out.append(f"{mark}{speedup:.2f}×{mark}<br>{dense:.3g}→{ms:.3g}")
        print(f"| {label} | " + " | ".join(out) + " |")
    print()
    print(
        "| model | runtime | precision | dense ms | deployed ms | speed-up | ships | layers decomposed |"
        " pool lowering (channel, spatial) | rel. error vs torch fp32 |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | --- | ---: | --- | ---: |")
    for arch, batch, label in MODELS:
        for rt, prec in COLUMNS:
            row = cells.get((arch, batch, rt, prec))
            if row is None or not row.get("whole_model"):
                continue
            dense, ms, speedup, per_layer = shipped(row)
            n_dec = sum(1 for d in row["layers"] if d["choice"] == "decomposed")
            ships = "per layer" if row["whole_model"]["choice"] == "per_layer" else "all dense"
            if ships == "all dense" and per_layer:
                ships += f" (per-layer {per_layer:.2f}×)"
            low = row.get("lowering") or {}
            print(
                f"| {label} | {rt} | {prec} | {dense:.3f} | {ms:.3f} | {speedup:.2f}× | {ships} | "
                f"{n_dec}/{len(row['layers'])} | {low.get('channel')}, {low.get('spatial')} | "
                f"{row['rel_error_vs_torch_fp32']:.1e} |"
            )


if __name__ == "__main__":
    main()
