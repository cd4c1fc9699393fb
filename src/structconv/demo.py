"""The main job: a short real experiment on Fashion-MNIST (a few minutes on 2 CPU cores).

``python -m structconv.demo`` trains a dense ResNet20 baseline and a Struct-A ResNet20 with
Structural Regularization (Step 1), decomposes the latter (Step 2) and prints the comparison:
accuracy before / after decomposition, adds, mults and params.  Both runs are ordinary
``structconv train`` runs (their directories hold checkpoints, logs and ``results.json``); the
equivalent commands are printed.  The budget is deliberately small -- a fraction of an epoch --
and the table says so; see RESULTS.md for longer runs and docs/training.md for the paper's.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

__all__ = ["get_args_parser", "main", "format_table"]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m structconv.demo", description=__doc__.splitlines()[0], add_help=add_help)
    p.add_argument("--arch", default="cifar_resnet20")
    p.add_argument("--struct", default="A", choices=["A", "B"])
    p.add_argument("--steps", type=int, default=300, help="optimizer steps per model (batch 128)")
    p.add_argument("--lam", type=float, default=1.0, help="Structural Regularization weight (Eq. 3)")
    p.add_argument("--data-path", default="data", help="Fashion-MNIST root (filled from Debian's dataset-fashion-mnist)")
    p.add_argument("--download", action="store_true", help="let torchvision download Fashion-MNIST if missing")
    p.add_argument("--eval-subset", type=int, help="evaluate on the first N test images (default: all 10,000)")
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--threads", type=int, help="torch threads (default: all cores on an idle machine, 1 on a busy one)")
    p.add_argument("--no-progress", action="store_true")
    return p


def _auto_threads() -> int:
    """All cores when the machine is idle; 1 when it is busy, where oversubscribed OpenMP
    threads made training ~10x slower on the 2-core development machines."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = os.getloadavg()[0] > cores - 0.5
    except OSError:
        busy = False
    return 1 if busy else max(1, cores)


def _train_argv(args, mode: str, out: Path) -> list[str]:
    argv = ["train", "--arch", args.arch, "--mode", mode, "--dataset", "fashion-mnist", "--data-path", args.data_path,
            "--max-steps", str(args.steps), "--batch-size", "128", "--lr", "0.1", "--output-dir", str(out),
            "--threads", str(args.threads)]  # fmt: skip
    if mode != "baseline":
        argv += ["--struct", args.struct, "--lam", f"{args.lam:g}"]
    if args.eval_subset:
        argv += ["--eval-subset", str(args.eval_subset)]
    if args.download:
        argv.append("--download")
    return argv


def format_table(base: dict, struct: dict, *, budget: str) -> str:
    """The comparison table of the main job."""

    def acc(v):
        return "-" if v is None else f"{v:.2f}"

    label = f"Struct-{struct['struct']} (λ={struct['lam']:g})"
    rows = [
        ("model", "acc. before decomp. (%)", "acc. after decomp. (%)", "adds", "mults", "params"),
        ("ResNet20 baseline", acc(base["accuracy_before_decomposition"]), "-", f"{base['adds']:,}", f"{base['mults']:,}",
         f"{base['params']:,}"),
        (label, acc(struct["accuracy_before_decomposition"]), acc(struct["accuracy_after_decomposition"]),
         f"{struct['adds']:,}", f"{struct['mults']:,}", f"{struct['params']:,}"),
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    ratio = lambda k: base[k] / struct[k]  # noqa: E731
    lines.append("")
    lines.append(f"Struct-{struct['struct']} after decomposition: {ratio('params'):.2f}x fewer params, "
                 f"{ratio('mults'):.2f}x fewer mults, {ratio('adds'):.2f}x fewer adds; "
                 f"decomposition changed accuracy by {struct['accuracy_after_decomposition'] - struct['accuracy_before_decomposition']:+.2f} points "
                 f"(mean structure error {struct['structure_error_mean']:.1e}).")  # fmt: skip
    lines.append(f"Budget: {budget}. Adds/mults per 1x28x28 image, the paper's accounting (structconv profile).")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from .cli import main as cli

    if args.threads is None:
        args.threads = _auto_threads()
        print(f"using {args.threads} torch thread(s) (--threads to override)", flush=True)
    out = Path(args.output_dir)
    runs = {"baseline": out / "baseline", "sr": out / f"struct_{args.struct.lower()}"}
    tic = time.perf_counter()
    results = {}
    for mode, directory in runs.items():
        argv = _train_argv(args, mode, directory)
        if args.no_progress:
            argv.append("--no-progress")
        print(f"$ structconv {shlex.join(argv)}", flush=True)
        status = cli(argv)
        if status:
            return status
        results[mode] = json.loads((directory / "results.json").read_text())
    base, struct = results["baseline"], results["sr"]
    steps = struct["steps"]
    images = steps * 128
    budget = (f"{steps} steps x 128 images = {images:,} images ({images / 60000:.2f} epoch of the 60,000) per model, "
              f"tested on {'the first %d' % args.eval_subset if args.eval_subset else 'all 10,000'} test images; "
              f"total {time.perf_counter() - tic:.0f} s")  # fmt: skip
    print()
    print(format_table(base, struct, budget=budget))
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main(get_args_parser().parse_args()))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130)
