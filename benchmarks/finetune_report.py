"""Tables and the figure of the from-trained study (``benchmarks/finetune_curves.py``, issue 16):
accuracy at 0, 1 %, 5 % and 10 % of the teacher's steps, mean ± std over the teachers (seeds),
per method and Struct target, beside the dense teachers; multiplications from each run.

    python benchmarks/finetune_report.py --figure docs/figures/finetune_curves_r20.png
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).parent
CURVES = HERE / "results" / "finetune_curves"
TEACHERS = HERE / "results" / "teachers"
LABELS = {
    "struct_reconstructed": "Struct, calibrated, (c, n) searched, blocks reconstructed (default)",
    "struct_searched": "Struct, calibrated, (c, n) searched",
    "struct_calibrated": "Struct, calibrated, preset (c, n)",
    "struct_plain": "Struct, weight-space projection",
    "svd_calibrated": "weight SVD + asymmetric reconstruction",
    "svd_plain": "weight SVD",
    "prune_bn": "Torch-Pruning + BN re-estimation",
    "prune_plain": "Torch-Pruning",
}


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f} (1 seed)"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def load(arch: str) -> tuple[dict, dict]:
    """``({(method, target): {step: [acc per seed]}}, {(method, target): [mults]})``."""
    curves: dict = defaultdict(lambda: defaultdict(list))
    mults: dict = defaultdict(list)
    for path in sorted(CURVES.glob(f"{arch}_e*_s*_*.json")):
        teacher_seed, kind_target, variant = path.stem.rsplit("_", 2)
        kind, target = kind_target[:-1], kind_target[-1]
        run = json.loads(path.read_text())
        key = (f"{kind}_{variant}", target)
        for point in run["history"]:
            curves[key][point["step"]].append(point.get("accuracy_decomposed") or point["accuracy"])
        mults[key].append(run["mults"])
    return curves, mults


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="cifar_resnet20")
    p.add_argument("--figure", help="write the accuracy-against-fine-tune-steps figure here (PNG)")
    p.add_argument("--latency", help="benchmarks/finetune_latency.py's JSON: also the accuracy-against-latency figure")
    p.add_argument("--latency-figure", help="where that figure goes (PNG)")
    p.add_argument("--at", type=float, default=0.05, help="the fine-tune budget (fraction) of the latency figure")
    args = p.parse_args()
    curves, mults = load(args.arch)
    dense = [json.loads((t / "results.json").read_text()) for t in sorted(TEACHERS.glob(f"{args.arch}_e*_s*"))]
    dense_acc = [d["accuracy_before_decomposition"] for d in dense]
    steps_total = dense[0]["steps"]
    print(f"dense teachers: {mean_std(dense_acc)} % ({len(dense)} seeds, {steps_total} steps each)")
    for target in sorted({t for _, t in curves}):
        keys = [k for k in sorted(curves, key=lambda k: list(LABELS).index(k[0])) if k[1] == target]
        steps = sorted({s for k in keys for s in curves[k]})
        head = ["method", "mults", *(f"step {s} ({100 * s / steps_total:.0f} %)" for s in steps)]
        print(f"\nStruct-{target} budget")
        print("| " + " | ".join(head) + " |\n|" + " --- |" * len(head))
        for key in keys:
            cells = [LABELS.get(key[0], key[0]), f"{statistics.mean(mults[key]):,.0f}"]
            cells += [mean_std(curves[key][s]) if curves[key].get(s) else "-" for s in steps]
            print("| " + " | ".join(cells) + " |")
    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        targets = sorted({t for _, t in curves})
        fig, axes = plt.subplots(1, len(targets), figsize=(6.5 * len(targets), 4.5), squeeze=False)
        for ax, target in zip(axes[0], targets):
            for key in [k for k in curves if k[1] == target]:
                steps = sorted(curves[key])
                means = [statistics.mean(curves[key][s]) for s in steps]
                stds = [statistics.stdev(curves[key][s]) if len(curves[key][s]) > 1 else 0.0 for s in steps]
                seeds = min(len(curves[key][s]) for s in steps)
                ax.errorbar(
                    [100 * s / steps_total for s in steps], means, yerr=stds, marker="o", capsize=3,
                    label=f"{LABELS.get(key[0], key[0])} ({seeds} seed{'s' if seeds > 1 else ''})",
                )  # fmt: skip
            ax.axhline(statistics.mean(dense_acc), color="black", linestyle="--", label="dense teacher")
            ax.set_xlabel("fine-tune steps (% of the teacher's)")
            ax.set_ylabel("test accuracy (%), decomposed")
            ax.set_title(f"{args.arch}, Struct-{target} mults, from a converged teacher")
            ax.set_ylim(bottom=max(0, min(ax.get_ylim()[0], 60)))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.figure, dpi=120)
        print(f"\nwrote {args.figure}")
    if args.latency:
        latency = json.loads(Path(args.latency).read_text())
        print(f"\nlatency ({latency['command']}, {latency['cpu']}, torch {latency['torch']}):")
        for table in latency["tables"]:
            ms = table["median_ms"]
            cells = ", ".join(f"{k} {t:.2f} ms ({ms['dense'] / t:.2f}x)" for k, t in ms.items())
            print(f"  {table['mode']} batch {table['batch']} ({table['rounds']} rounds): {cells}")
        if args.latency_figure:
            plot_latency(curves, dense_acc, steps_total, latency, args.at, args.latency_figure)


def latency_key(method: str, target: str) -> str:
    """The model of ``benchmarks/finetune_latency.py`` that a study variant deploys."""
    kind, _, variant = method.partition("_")
    if kind == "struct":
        return f"struct_{'preset' if variant in ('calibrated', 'plain') else 'searched'}-{target}"
    return f"{kind}-{target}"


# the variants the latency figure shows: the default and each baseline's best form, plus the plain ones
LATENCY_METHODS = (
    "struct_reconstructed",
    "struct_calibrated",
    "svd_calibrated",
    "svd_plain",
    "prune_bn",
    "prune_plain",
)


def plot_latency(curves: dict, dense_acc: list[float], steps_total: int, latency: dict, at: float, path: str) -> None:
    """Accuracy after ``at`` of the teacher's steps against eager latency (each table's batch).

    Struct is drawn twice: filled after ``autotune`` (each layer decomposed or recomposed dense,
    whichever measured faster, so no longer at matched mults), hollow untuned (matched mults).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(LATENCY_METHODS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    markers = {"A": "o", "B": "s"}
    tables = [t for t in latency["tables"] if t["mode"] == "eager"]
    fig, axes = plt.subplots(1, len(tables), figsize=(5.5 * len(tables) + 3.5, 4.8), squeeze=False)
    for ax, table in zip(axes[0], tables):
        ms = table["median_ms"]
        ax.errorbar([ms["dense"]], [statistics.mean(dense_acc)], yerr=[statistics.stdev(dense_acc)], marker="*",
                    color="black", markersize=12, linestyle="none", capsize=3, label="dense teacher")  # fmt: skip
        for (method, target), points in sorted(curves.items()):
            step = min(points, key=lambda s: abs(s - at * steps_total))
            key = latency_key(method, target)
            if method not in colors or key not in ms or abs(step - at * steps_total) > 0.01 * steps_total:
                continue
            acc = points[step]
            label = f"{LABELS.get(method, method)}, {target} ({len(acc)} seed{'s' if len(acc) > 1 else ''})"
            spread = statistics.stdev(acc) if len(acc) > 1 else 0.0
            mean = statistics.mean(acc)
            style = dict(color=colors[method], marker=markers[target], linestyle="none", capsize=3)
            ax.errorbar([ms[key]], [mean], yerr=[spread], label=label, **style)
            untuned = f"{key} untuned"
            if untuned in ms:  # the model at matched mults, before autotune's per-layer dense fallback
                ax.errorbar([ms[untuned]], [mean], yerr=[spread], markerfacecolor="none", **style)
                ax.plot([ms[untuned], ms[key]], [mean, mean], color=colors[method], linewidth=0.8, linestyle=":")
        ax.set_xlabel(f"eager latency, batch {table['batch']}, {latency['threads']} thread(s) (ms)")
        ax.set_ylabel(f"test accuracy after {100 * at:.0f} % of the dense steps (%)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][-1].get_legend_handles_labels()
    right = 1 - 4.0 / (5.5 * len(tables) + 3.5)
    fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(right, 0.5))
    fig.suptitle("ResNet20 from a converged teacher, accuracy against CPU latency; "
                 "Struct: hollow untuned (matched mults), filled autotuned", fontsize=10)  # fmt: skip
    fig.tight_layout(rect=(0, 0, right, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
