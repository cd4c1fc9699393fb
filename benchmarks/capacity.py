"""Struct trained from scratch for the teachers' whole schedule (issue 16): SR against direct
training (Sec. 6.4) over seeds, and the capacity that bounds a fine-tune from a teacher.

Runs each ``--modes`` x ``--seeds`` one at a time, in the order given (mode first within a
seed, so a partial study still pairs the two), each in ``ROOT/<arch>_<mode>_<struct>_e<epochs>_s<seed>``.
A finished run is kept, a killed one resumes (``structconv train --resume auto``).  ``--commit DIR``
copies each finished run's ``results.json`` to ``DIR/<name>.json`` (the weights stay in ROOT).
A run stopped by SIGTERM/SIGINT also leaves its checkpoint in ``DIR/in_progress/<name>.pth``
(about 2 MB, meant to be committed): ROOT is not kept across checkouts, and a run takes 1-1.5 h
at one thread, so the next session continues it from there instead of from step 0.
Recipes: SR at the teachers' learning rate (0.1, normalized SR, last 5 % projected); direct
with the architecture's own init at lr 0.05, the settings the recipe screen found better;
``direct_default``, direct with the library's defaults (projected default init, lr 0.1).

    python benchmarks/capacity.py --modes sr,direct --seeds 0,1,2 --struct A --epochs 30 \
        --threads 1 --root runs/capacity --commit benchmarks/results/capacity
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from structconv.training import RunInterrupted, TrainConfig, train

RECIPES = {
    "sr": {"mode": "sr", "lr": 0.1},
    "direct": {"mode": "direct", "lr": 0.05, "direct_init": "own"},
    # the library's defaults for --mode direct: the other arm of issue 16's "make whatever wins the default"
    "direct_default": {"mode": "direct", "lr": 0.1, "direct_init": "default"},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="cifar_resnet20")
    p.add_argument("--modes", default="sr,direct")
    p.add_argument("--struct", default="A", choices=("A", "B"))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-path", default="data")
    p.add_argument("--root", default="runs/capacity")
    p.add_argument("--commit", default=None)
    args = p.parse_args()
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in RECIPES]
    if unknown:
        raise SystemExit(f"capacity.py: --modes {','.join(unknown)} not one of {', '.join(RECIPES)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    for seed in seeds:
        for mode in modes:
            name = f"{args.arch}_{mode}_{args.struct}_e{args.epochs}_s{seed}"
            out = Path(args.root) / name
            if args.commit and (Path(args.commit) / f"{name}.json").exists():
                continue  # finished in an earlier session; its results are committed
            carried = Path(args.commit) / "in_progress" / f"{name}.pth" if args.commit else None
            if not (out / "results.json").exists():
                if carried is not None and carried.exists() and not (out / "checkpoint.pth").exists():
                    out.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(carried, out / "checkpoint.pth")
                resume = "auto" if (out / "checkpoint.pth").exists() else None
                print(f"== {name}" + (" (resuming)" if resume else ""), flush=True)
                try:
                    train(TrainConfig(arch=args.arch, struct=args.struct, epochs=args.epochs, seed=seed,
                                      threads=args.threads, data_path=args.data_path, output_dir=str(out),
                                      resume=resume, no_progress=True, print_freq=200, **RECIPES[mode]))  # fmt: skip
                except RunInterrupted:
                    if carried is not None:
                        carried.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(out / "checkpoint.pth", carried)
                        print(f"== {name} stopped; its checkpoint is in {carried}", flush=True)
                    raise SystemExit(1)
            if args.commit:
                Path(args.commit).mkdir(parents=True, exist_ok=True)
                shutil.copy2(out / "results.json", Path(args.commit) / f"{name}.json")
                if carried is not None:
                    carried.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
