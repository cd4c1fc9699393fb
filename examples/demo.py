"""The main job: a short real experiment on Fashion-MNIST (a few minutes on 2 CPU cores).

``python examples/demo.py`` trains a dense ResNet20 baseline and a Struct-A ResNet20 with
Structural Regularization (Step 1), decomposes the latter (Step 2) and prints the comparison:
accuracy before / after decomposition, adds, mults and params.  Both runs are ordinary
``structconv.training.train`` runs (their directories hold checkpoints, logs and
``results.json``); the equivalent ``structconv train`` commands are printed.  Nothing is lost:
a finished run is reused, an interrupted one resumed; ``--overwrite`` retrains from scratch.
The budget is deliberately small -- a fraction of an epoch -- and the table says so; see
RESULTS.md for longer runs and docs/training.md for the paper's.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from structconv._io import json_safe
from structconv.reporting import format_table
from structconv.training import CHECKPOINT, RunInterrupted, TrainConfig, saved_meaning, train


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python examples/demo.py", description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="cifar_resnet20")
    p.add_argument("--struct", default="A", choices=["A", "B"])
    p.add_argument("--steps", type=int, default=300, help="optimizer steps per model (batch 128)")
    p.add_argument("--lam", type=float, default=1.0, help="Structural Regularization weight (Eq. 3)")
    p.add_argument("--data-path", default="data", help="Fashion-MNIST root (filled from Debian's dataset-fashion-mnist)")
    p.add_argument("--download", action="store_true", help="let torchvision download Fashion-MNIST if missing")
    p.add_argument("--eval-subset", type=int, help="evaluate on the first N test images (default: all 10,000)")
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--overwrite", action="store_true", help="retrain runs that already finished")
    p.add_argument("--threads", type=int, help="torch threads (default: all cores on an idle machine, 1 on a busy one)")
    p.add_argument("--no-progress", action="store_true")
    return p


def auto_threads() -> int:
    """All cores when the machine is idle; 1 when it is busy, where oversubscribed OpenMP
    threads made training ~10x slower on the 2-core development machines."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = os.getloadavg()[0] > cores - 0.5
    except OSError:
        busy = False
    return 1 if busy else max(1, cores)


def run_config(args, mode: str, out: Path) -> TrainConfig:
    return TrainConfig(
        arch=args.arch, mode=mode, struct=args.struct if mode != "baseline" else None, lam=args.lam,
        dataset="fashion-mnist", data_path=args.data_path, download=args.download, eval_subset=args.eval_subset,
        max_steps=args.steps, batch_size=128, lr=0.1, output_dir=str(out), threads=args.threads,
        no_progress=args.no_progress,
    )  # fmt: skip


def command_line(config: TrainConfig) -> str:
    """The ``structconv train`` command equivalent to ``config``."""
    argv = ["train", "--arch", config.arch, "--mode", config.mode, "--dataset", config.dataset, "--data-path",
            config.data_path, "--max-steps", str(config.max_steps), "--batch-size", str(config.batch_size), "--lr",
            f"{config.lr:g}", "--output-dir", config.output_dir, "--threads", str(config.threads)]  # fmt: skip
    if config.mode != "baseline":
        argv += ["--struct", config.struct, "--lam", f"{config.lam:g}"]
    if config.eval_subset:
        argv += ["--eval-subset", str(config.eval_subset)]
    return "structconv " + shlex.join(argv)


def run_or_reuse(config: TrainConfig, overwrite: bool) -> dict:
    """The run's results: reused when it already finished with this configuration, resumed when
    it was interrupted, trained otherwise."""
    out = Path(config.output_dir)
    done = out / "results.json"
    if done.exists() and not overwrite:
        results = json.loads(done.read_text())
        if saved_meaning(results.get("args", {})) != json_safe(config.meaning()):
            raise ValueError(f"{str(out)!r} holds a finished run with other settings; pass --overwrite to retrain "
                             "it, or choose another --output-dir")  # fmt: skip
        print(f"(kept the finished run in {out}; --overwrite retrains it)", flush=True)
        return results
    if overwrite:
        config.overwrite = True
    elif (out / CHECKPOINT).exists():
        config.resume = "auto"  # an interrupted run: continue it (refused if its settings differ)
    print(f"$ {command_line(config)}" + (" --resume" if config.resume else ""), flush=True)
    return train(config)


def format_comparison(base: dict, struct: dict, *, budget: str) -> str:
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
    ratio = lambda k: base[k] / struct[k]  # noqa: E731
    delta = struct["accuracy_after_decomposition"] - struct["accuracy_before_decomposition"]
    return "\n".join([
        format_table(rows, align="lrrrrr"), "",
        f"Struct-{struct['struct']} after decomposition: {ratio('params'):.2f}x fewer params, "
        f"{ratio('mults'):.2f}x fewer mults, {ratio('adds'):.2f}x fewer adds; decomposition changed accuracy by "
        f"{delta:+.2f} points (mean structure error {struct['structure_error_mean']:.1e}).",
        f"Budget: {budget}. Adds/mults per 1x28x28 image, the paper's accounting (structconv profile).",
    ])  # fmt: skip


def main(args: argparse.Namespace) -> int:
    if args.threads is None:
        args.threads = auto_threads()
        print(f"using {args.threads} torch thread(s) (--threads to override)", flush=True)
    out = Path(args.output_dir)
    tic = time.perf_counter()
    results = {}
    for mode, directory in (("baseline", out / "baseline"), ("sr", out / f"struct_{args.struct.lower()}")):
        results[mode] = run_or_reuse(run_config(args, mode, directory), args.overwrite)
    base, struct = results["baseline"], results["sr"]
    images = struct["steps"] * 128
    budget = (f"{struct['steps']} steps x 128 images = {images:,} images ({images / 60000:.2f} epoch of the 60,000) "
              f"per model, tested on {'the first %d' % args.eval_subset if args.eval_subset else 'all 10,000'} test "
              f"images; total {time.perf_counter() - tic:.0f} s")  # fmt: skip
    print()
    print(format_comparison(base, struct, budget=budget))
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main(get_args_parser().parse_args()))
    except RunInterrupted as err:
        print(f"interrupted: {err}", file=sys.stderr)
        raise SystemExit(130)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130)
    except (ValueError, OSError) as err:
        print(f"demo: error: {err}", file=sys.stderr)
        raise SystemExit(2)
