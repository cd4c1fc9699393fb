#!/usr/bin/env python
"""Old (the paper's Eq. 3) vs new (normalized SR + projected finish) Step 1 recipe on wide-head
networks: per-layer-type structure error at the end of Step 1 and what decomposition costs.

Every run is a plain ``structconv train`` command (printed), in its own directory under
``--root``; finished runs are kept and an interrupted one is resumed, so the study can be
stopped and restarted.  The summary (mean ± std over seeds) goes to ``--root/summary.json`` and
is printed as markdown.

    python benchmarks/recipe_study.py --root runs/recipes --archs resnet18,mobilenet_v2 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import torch

RECIPES = {
    "old (Eq. 3, lambda 1)": ["--sr", "eq3", "--projected-fraction", "0", "--lam", "1"],
    "new (normalized SR + 5 % projected)": [],
}


def layer_type(name: str, module, first: str) -> str:
    if isinstance(module, torch.nn.Linear):
        return "Linear head"
    if name == first:
        return "stem"
    if module.groups > 1 and module.groups == module.in_channels:
        return "depthwise"
    return "1x1" if tuple(module.kernel_size) == (1, 1) else "kxk"


def types_of(run_dir: Path) -> dict[str, str]:
    import structconv as sc

    model = sc.load(run_dir / "model.pth")
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, sc.StructuredLayer)]
    first = layers[0][0]
    return {n: layer_type(n, m, first) for n, m in layers}


def mean_std(values):
    values = list(values)
    if len(values) == 1:
        return values[0], 0.0
    return statistics.fmean(values), statistics.stdev(values)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="runs/recipes")
    p.add_argument("--archs", default="resnet18,mobilenet_v2")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--ratio", default="2")
    p.add_argument("--data-path", default="data")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--summarize-only", action="store_true")
    args = p.parse_args()
    root = Path(args.root)
    runs = []
    for arch in args.archs.split(","):
        for label, extra in RECIPES.items():
            for seed in args.seeds.split(","):
                tag = "old" if "old" in label else "new"
                out = root / arch / tag / f"s{seed}"
                cmd = ["structconv", "train", "--arch", arch, "--mode", "sr", "--ratio", args.ratio, "--dataset",
                       "fashion-mnist", "--data-path", args.data_path, "--epochs", str(args.epochs), "--seed", seed,
                       "--threads", str(args.threads), "--output-dir", str(out), "--no-progress", "--quiet", *extra]  # fmt: skip
                runs.append((arch, label, seed, out, cmd))
    for arch, label, seed, out, cmd in runs:
        if args.summarize_only or (out / "results.json").exists():
            continue
        if (out / "checkpoint.pth").exists():
            cmd = [*cmd, "--resume"]
        print("$ " + shlex.join(cmd), flush=True)
        subprocess.run([sys.executable, "-m", "structconv.cli", *cmd[1:]], check=True)
    summary = {}
    for arch, label, seed, out, cmd in runs:
        if not (out / "results.json").exists():
            continue
        res = json.loads((out / "results.json").read_text())
        types = types_of(out)
        by_type: dict[str, float] = {}
        for name, err in res["structure_errors"].items():
            by_type[types[name]] = max(by_type.get(types[name], 0.0), err)
        entry = summary.setdefault(arch, {}).setdefault(label, {"runs": []})
        entry["command"] = shlex.join(cmd)
        entry["runs"].append({"seed": int(seed), "before": res["accuracy_before_decomposition"],
                              "after": res["accuracy_after_decomposition"], "max_error_by_type": by_type,
                              "seconds_per_step": res["train_seconds"] / res["steps"], "steps": res["steps"]})  # fmt: skip
    (root / "summary.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "summary.json").write_text(json.dumps(summary, indent=1))
    for arch, labels in summary.items():
        types = sorted({t for e in labels.values() for r in e["runs"] for t in r["max_error_by_type"]})
        print(f"\n{arch}, {len(next(iter(labels.values()))['runs'])} seeds, {args.epochs} epoch(s)\n")
        print("| recipe | accuracy before (%) | after decomposition (%) | cost (points) | "
              + " | ".join(f"max error, {t}" for t in types) + " | s/step |")
        print("|---" * (5 + len(types)) + "|")
        for label, e in labels.items():
            rs = e["runs"]
            b, bs = mean_std(r["before"] for r in rs)
            a, as_ = mean_std(r["after"] for r in rs)
            c, cs = mean_std(r["before"] - r["after"] for r in rs)
            errs = []
            for t in types:
                m, s = mean_std(r["max_error_by_type"].get(t, 0.0) for r in rs)
                errs.append(f"{m:.1e} ± {s:.0e}")
            sp, _ = mean_std(r["seconds_per_step"] for r in rs)
            print(f"| {label} | {b:.2f} ± {bs:.2f} | {a:.2f} ± {as_:.2f} | {c:+.2f} ± {cs:.2f} | "
                  + " | ".join(errs) + f" | {sp:.3f} |")


if __name__ == "__main__":
    main()
