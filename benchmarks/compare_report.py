"""Markdown tables of a finished ``structconv compare`` study, for docs/comparison.md.

    python benchmarks/compare_report.py runs/compare_r20 [runs/compare_r18 ...]

Reads each study's ``compare.json`` (written by ``structconv compare``) and prints: accuracy
with mean ± std over seeds beside params / mults / adds and the distance to the target mults;
the fine-tune curve of the from-trained methods; the measured latency relative to dense.
Nothing is re-run or re-measured: the numbers are the study's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LABELS = {
    "dense": "dense (baseline)",
    "struct_sr": "Struct, SR from scratch",
    "struct_direct": "Struct, direct (Sec. 6.4)",
    "narrow": "narrow net from scratch",
    "struct_ft": "Struct, from trained (project + projected SGD + KD)",
    "prune": "Torch-Pruning (group L2, progressive)",
    "svd_weight": "weight SVD",
    "svd_spatial": "spatial SVD",
}
FROM_TRAINED = ("struct_ft", "prune", "svd_weight", "svd_spatial")  # studies written before rows said so


def _pm(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {std:.2f}"


def accuracy_table(summary: dict) -> list[str]:
    cfg = summary["config"]
    lines = ["| method | target | seeds | steps | accuracy (%) | Δ vs dense | params | mults | adds | mults vs target | s/step |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    dense = next(r for r in summary["summary"] if r["method"] == "dense")
    for r in summary["summary"]:
        steps = summary["finetune_steps"] if r.get("from_trained", r["method"] in FROM_TRAINED) else cfg["dense_steps"]
        vs = "-" if r.get("mults_vs_target") is None else f"{r['mults_vs_target']:+.1%}"
        delta = "-" if r["method"] == "dense" else f"{r['accuracy_mean'] - dense['accuracy_mean']:+.2f}"
        lines.append(f"| {LABELS.get(r['method'], r['method'])} | {r['target'] or '-'} | {r['seeds']} | {steps} | "
                     f"{_pm(r['accuracy_mean'], r['accuracy_std'])} | {delta} | {r['params'] / 1e3:,.1f} K | "
                     f"{r['mults'] / 1e6:,.2f} M | {r['adds'] / 1e6:,.2f} M | {vs} | {r['seconds_per_step']:.2f} |")  # fmt: skip
    return lines


def curve_table(summary: dict) -> list[str]:
    rows = [r for r in summary["summary"] if r["curve"]]
    if not rows:
        return []
    steps = sorted({p["step"] for r in rows for p in r["curve"]})
    lines = ["| method | target | " + " | ".join(f"step {s}" for s in steps) + " |", "|---|---|" + "---|" * len(steps)]
    for r in rows:
        at = {p["step"]: p for p in r["curve"]}
        cells = [_pm(at[s]["accuracy_mean"], at[s]["accuracy_std"]) if s in at else "-" for s in steps]
        lines.append(f"| {LABELS.get(r['method'], r['method'])} | {r['target']} | " + " | ".join(cells) + " |")
    return lines


def latency_table(summary: dict) -> list[str]:
    lat = summary.get("latency")
    if not lat:
        return []
    models = list(dict.fromkeys(m for t in lat["tables"] for m in t["median_ms"]))  # eager adds "struct-A untuned"
    lines = [f"Seed-0 deployed models, BatchNorm folded, channels_last, {lat['threads']} thread(s), torch "
             f"{lat['torch']}; median ms per call (speed-up vs dense).", "",
             "| mode | batch | rounds | " + " | ".join(models) + " |", "|---|---|---|" + "---|" * len(models)]  # fmt: skip
    for t in lat["tables"]:
        base = t["median_ms"]["dense"]
        cells = [f"{t['median_ms'][m]:.2f} ({base / t['median_ms'][m]:.2f}×)" if m in t["median_ms"] else "-"
                 for m in models]  # fmt: skip
        lines.append(f"| {t['mode']} | {t['batch']} | {t['rounds']} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("studies", nargs="+", help="output directories of structconv compare")
    args = p.parse_args(argv)
    for root in args.studies:
        path = Path(root) / "compare.json"
        if not path.is_file():
            raise SystemExit(f"compare_report: {str(path)!r} does not exist (run structconv compare first)")
        summary = json.loads(path.read_text())
        cfg = summary["config"]
        print(f"\n### {cfg['arch']} on {cfg['dataset']} ({root})\n")
        for table in (accuracy_table(summary), curve_table(summary), latency_table(summary)):
            if table:
                print("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
