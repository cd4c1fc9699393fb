"""Converged dense teachers for the from-trained studies (issue 16), resumable.

Trains ``--arch`` on Fashion-MNIST for each seed and each schedule in ``--epochs`` (the longest
is the teacher; the shorter ones show that doubling the schedule no longer helps), one run at a
time, each in ``ROOT/<arch>_e<epochs>_s<seed>``.  A finished run is kept, a killed one resumes
(``structconv train --resume``).  ``--commit DIR`` copies each finished run's ``model.pth`` and
``results.json`` (about 1 MB for ResNet20) to ``DIR/<name>/``, where the studies read them.

    python benchmarks/teachers.py --arch cifar_resnet20 --seeds 0,1,2 --epochs 15,30 \
        --root runs/teachers --commit benchmarks/results/teachers
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from structconv.training import TrainConfig, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="cifar_resnet20")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", default="30")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-path", default="data")
    p.add_argument("--root", default="runs/teachers")
    p.add_argument("--commit", default=None)
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    schedules = sorted((int(e) for e in args.epochs.split(",")), reverse=True)
    for epochs in schedules:  # the teachers (longest schedule) first
        for seed in seeds:
            name = f"{args.arch}_e{epochs}_s{seed}"
            out = Path(args.root) / name
            if not (out / "results.json").exists():
                resume = "auto" if (out / "checkpoint.pth").exists() else None
                print(f"== {name}" + (" (resuming)" if resume else ""), flush=True)
                train(TrainConfig(arch=args.arch, mode="baseline", epochs=epochs, lr=args.lr, seed=seed,
                                  batch_size=args.batch_size, threads=args.threads, data_path=args.data_path,
                                  output_dir=str(out), resume=resume, no_progress=True, print_freq=100))
            if args.commit:
                dest = Path(args.commit) / name
                dest.mkdir(parents=True, exist_ok=True)
                for f in ("model.pth", "results.json"):
                    shutil.copy2(out / f, dest / f)


if __name__ == "__main__":
    main()
