"""Markdown rows for BENCHMARKS.md from ``structconv bench --json`` result files.

    python benchmarks/summarize.py benchmarks/results/*_t2*.json

One row per (file, batch): dense and decomposed medians (eager PyTorch), the speed-up (ratio
of medians and median of per-round ratios), layers run dense, page faults per call,
torch.compile and ONNX Runtime medians, and the paper's predicted mults ratio.  Nothing is computed that the JSON does not hold.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(path: Path) -> list[str]:
    d = json.loads(path.read_text())
    label = f"{d['arch']} " + (f"Struct-{d['struct']}" if d.get("struct") else f"ratio {d['ratio']:g}")
    if d.get("plan") == "speed":
        label += ", speed plan"
    if d.get("malloc", "system") != "retain":
        label += ", glibc malloc defaults"
    out = []
    for r in d["results"]:
        paired = r.get("speedup_paired")
        n_layers = len(r.get("layers", [])) or "?"
        faults = r.get("dense_page_faults")
        fault_cell = f"{faults:.0f} / {r['decomposed_page_faults']:.0f}" if faults is not None else "—"
        out.append(
            f"| {label} (`{path.stem}`) | {r['batch']} | {r['dense_ms']:.2f} | {r['decomposed_ms']:.2f} | "
            f"**{r['speedup']:.2f}×** | {f'{paired:.2f}×' if paired else '—'} | "
            f"{len(r['layers_run_dense'])} / {n_layers} | {fault_cell} | {_pair(r.get('compiled'))} | "
            f"{_pair(r.get('onnxruntime'))} | {d['paper_mults_ratio']:.2f} |"
        )
    return out


def _pair(timing: dict | None) -> str:
    """``dense / decomposed ms (speed-up)`` of a compiled or ONNX Runtime timing, per-round
    ratio too where the JSON has it."""
    if not timing:
        return "—"
    paired = f", {timing['speedup_paired']:.2f}× per round" if "speedup_paired" in timing else ""
    return f"{timing['dense_ms']:.2f} / {timing['decomposed_ms']:.2f} (**{timing['speedup']:.2f}×**{paired})"


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    print("| model, plan (file) | batch | dense ms | decomposed ms | speed-up | per-round | layers run dense "
          "| page faults per call | torch.compile dense / decomposed ms | ORT dense / decomposed ms | mults ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in argv:
        for row in rows(Path(name)):
            print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
