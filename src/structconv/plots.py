"""The comparison study's figures (matplotlib, PNG): accuracy against multiplications, against
measured latency, and against fine-tune steps, each with mean ± std over seeds."""

from __future__ import annotations

from pathlib import Path

__all__ = ["plot_study"]


def _label(row: dict) -> tuple[str, str, str]:
    """(label, marker, color) of a summary row (:func:`structconv.compare.summarize` records them)."""
    return row.get("label", row["method"]), row.get("marker", "o"), row.get("color", "gray")


def plot_study(summary: dict, out_dir: str | Path, *, prefix: str = "") -> list[Path]:
    """Write ``<prefix>accuracy_vs_mults.png``, ``<prefix>accuracy_vs_latency.png`` (when the
    study measured latency) and ``<prefix>accuracy_vs_finetune_steps.png`` to ``out_dir``;
    returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = summary["summary"]
    title = f"{summary['config']['arch']} on {summary['config']['dataset']}"
    written = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    compressed = [m for m in methods if any(r["target"] is not None for r in rows if r["method"] == m)]
    for method in methods:
        pts = sorted((r for r in rows if r["method"] == method), key=lambda r: r["mults"])
        label, marker, color = _label(pts[0])
        # every method sits at the same mults (matched within 3 %): dodge them sideways to see them
        dodge = 1.0 if method not in compressed else 1 + 0.012 * (compressed.index(method) - (len(compressed) - 1) / 2)
        ax.errorbar(
            [r["mults"] / 1e6 * dodge for r in pts],
            [r["accuracy_mean"] for r in pts],
            yerr=[r["accuracy_std"] for r in pts],
            marker=marker,
            color=color,
            label=label,
            capsize=3,
            linestyle=":" if len(pts) > 1 else "none",
        )
    ax.set_xlabel("multiplications per image (millions, paper's accounting; methods dodged ±4 % to be seen)")
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    written.append(_save(fig, out / f"{prefix}accuracy_vs_mults.png"))

    latency = summary.get("latency")
    if latency:
        tables = [t for t in latency["tables"]]
        fig, axes = plt.subplots(1, len(tables), figsize=(4.2 * len(tables), 4), squeeze=False)
        for ax, table in zip(axes[0], tables):
            for r in rows:
                key = r.get("latency_key")
                if key not in table["median_ms"]:
                    continue
                label, marker, color = _label(r)
                ax.errorbar(
                    table["median_ms"][key],
                    r["accuracy_mean"],
                    yerr=r["accuracy_std"],
                    marker=marker,
                    color=color,
                    capsize=3,
                    label=label,
                )
            ax.set_title(f"{table['mode']}, batch {table['batch']}", fontsize=9)
            ax.set_xlabel(f"median latency (ms, {latency['threads']} threads)")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("test accuracy (%)")
        handles, labels = axes[0][0].get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        fig.legend(unique.values(), unique.keys(), fontsize=7, loc="lower center", ncol=4)
        fig.suptitle(title)
        fig.tight_layout(rect=(0, 0.12, 1, 1))
        written.append(_save(fig, out / f"{prefix}accuracy_vs_latency.png"))

    curves = [r for r in rows if r["curve"]]
    if curves:
        targets = sorted({r["target"] for r in curves})
        fig, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 4), squeeze=False)
        dense = next((r for r in rows if r["target"] is None), None)
        for ax, target in zip(axes[0], targets):
            for r in (r for r in curves if r["target"] == target):
                label, marker, color = _label(r)
                steps = [p["step"] for p in r["curve"]]
                mean = [p["accuracy_mean"] for p in r["curve"]]
                std = [p["accuracy_std"] for p in r["curve"]]
                ax.plot(steps, mean, marker=marker, color=color, label=label)
                ax.fill_between(
                    steps,
                    [m - s for m, s in zip(mean, std)],
                    [m + s for m, s in zip(mean, std)],
                    color=color,
                    alpha=0.15,
                )
            if dense is not None:
                ax.axhline(dense["accuracy_mean"], color="black", linestyle="--", linewidth=1, label="dense")
            ax.set_title(f"Struct-{target} budget", fontsize=9)
            ax.set_xlabel("fine-tune steps from the trained dense model")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("test accuracy (%), mean ± std")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(title)
        fig.tight_layout()
        written.append(_save(fig, out / f"{prefix}accuracy_vs_finetune_steps.png"))
    return written


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
