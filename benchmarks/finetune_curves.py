"""From a converged teacher: Struct fine-tunes with the data-aware projection against the
weight-space one, evaluated at 0, 1 %, 5 % and 10 % of the teacher's steps (issue 16), resumable.

Each teacher in ``benchmarks/results/teachers/<arch>_e<epochs>_s<seed>`` is fine-tuned at each
``--structs`` preset, calibrated on 8 batches with each layer's (c, n) searched at equal mults
(``searched``, the default recipe) or the preset's (``calibrated``), or with the weight-space
projection (``plain``), with
the recipe of ``structconv compare`` (lr 0.01, cosine, distillation 0.9 from the teacher, T=4,
projected SGD).  A finished run is kept; a killed one resumes.  ``--commit`` copies each
finished ``results.json`` to ``benchmarks/results/finetune_curves/<name>.json``.

    python benchmarks/finetune_curves.py --threads 1 --root runs/finetune_curves --commit
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from structconv.training import TrainConfig, train

HERE = Path(__file__).parent
TEACHERS = HERE / "results" / "teachers"
COMMITTED = HERE / "results" / "finetune_curves"
# variant -> TrainConfig.calibration_structure ("plain" is the weight-space projection)
STRUCTURES = {"calibrated": "given", "searched": "search", "plain": None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="cifar_resnet20")
    p.add_argument("--epochs", type=int, default=30, help="the teachers' schedule")
    p.add_argument("--structs", default="A,B")
    p.add_argument("--seeds", default=None, help="teacher seeds (default: every committed teacher)")
    p.add_argument("--fraction", type=float, default=0.10, help="fine-tune budget as a fraction of the teacher's steps")
    p.add_argument("--variants", default="searched,calibrated,plain", help="comma-separated: " + ", ".join(STRUCTURES))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-path", default="data")
    p.add_argument("--root", default="runs/finetune_curves")
    p.add_argument("--commit", action="store_true")
    args = p.parse_args()
    for variant in args.variants.split(","):
        if variant not in STRUCTURES:
            raise SystemExit(f"--variants: {variant!r} is not one of {', '.join(STRUCTURES)}")
    teachers = sorted(TEACHERS.glob(f"{args.arch}_e{args.epochs}_s*"))
    if args.seeds:
        wanted = {f"s{s}" for s in args.seeds.split(",")}
        teachers = [t for t in teachers if t.name.rsplit("_", 1)[1] in wanted]
    for teacher in teachers:
        steps = json.loads((teacher / "results.json").read_text())["steps"]
        budget = max(1, round(args.fraction * steps))
        curve = tuple(sorted({0, round(0.01 * steps), round(0.05 * steps)}))
        for struct in args.structs.split(","):
            for variant in args.variants.split(","):
                seed = int(teacher.name.rsplit("_s", 1)[1])
                name = f"{teacher.name}_struct{struct}_{variant}"
                out = Path(args.root) / name
                if not (out / "results.json").exists():
                    resume = "auto" if (out / "checkpoint.pth").exists() else None
                    print(f"== {name}" + (" (resuming)" if resume else ""), flush=True)
                    train(
                        TrainConfig(
                            arch=args.arch,
                            mode="finetune",
                            struct=struct,
                            init_from=str(teacher / "model.pth"),
                            calibration_batches=0 if variant == "plain" else 8,
                            calibration_structure=None if variant == "plain" else STRUCTURES[variant],
                            max_steps=budget,
                            epochs=max(1, -(-budget // 468)),
                            lr=0.01,
                            distill=0.9,
                            eval_at=curve,
                            seed=seed,
                            threads=args.threads,
                            data_path=args.data_path,
                            output_dir=str(out),
                            resume=resume,
                            no_progress=True,
                            print_freq=100,
                        )
                    )
                if args.commit:
                    COMMITTED.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(out / "results.json", COMMITTED / f"{name}.json")


if __name__ == "__main__":
    main()
