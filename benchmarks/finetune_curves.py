"""From a converged teacher: Struct fine-tunes, and the baselines at the same mults, evaluated at
0, 1 %, 5 % and 10 % of the teacher's steps (issue 16), resumable.

Each teacher in ``benchmarks/results/teachers/<arch>_e<epochs>_s<seed>`` is compressed to each
``--structs`` preset's multiplications by every ``--variants`` entry:

* ``reconstructed`` -- Struct calibrated on 8 batches with each layer's (c, n) searched at equal
  mults, then each residual block's output reconstructed on the same batches (200 Adam steps per
  block; the default fine-tune recipe); ``searched`` -- without the reconstruction;
  ``calibrated`` -- calibrated on the preset's structures; ``plain`` -- the weight-space
  projection ``A A^+ W``;
* ``svd`` -- weight SVD (``structconv.baselines.weight_svd``); ``svd_calibrated`` -- with Zhang et
  al.'s asymmetric reconstruction on the same 8 batches (``calibrate_factorized_``);
* ``prune`` -- Torch-Pruning (``prune_to_mults``); ``prune_bn`` -- with its BatchNorm statistics
  re-estimated on those batches (``torch.optim.swa_utils.update_bn``);

then fine-tuned with the recipe of ``structconv compare`` (lr 0.01, cosine, distillation 0.9 from
the teacher, T=4; Struct trains projected).  A finished run is kept; a killed one resumes (the
baselines rebuild their model deterministically).  ``--commit`` copies each finished
``results.json`` to ``benchmarks/results/finetune_curves/<name>.json``.

    python benchmarks/finetune_curves.py --threads 1 --root runs/finetune_curves --commit
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from structconv.complexity import count_ops
from structconv.convert import decompose
from structconv.data import build_datasets
from structconv.models import create_model
from structconv.serialization import load_dense_weights
from structconv.training import TrainConfig, train

HERE = Path(__file__).parent
TEACHERS = HERE / "results" / "teachers"
COMMITTED = HERE / "results" / "finetune_curves"
# Struct variant -> (TrainConfig.calibration_structure, reconstruction_steps); "plain" is the
# weight-space projection
STRUCTURES = {
    "reconstructed": ("search", 200),
    "searched": ("search", 0),
    "calibrated": ("given", 0),
    "plain": (None, 0),
}
BASELINES = ("svd", "svd_calibrated", "prune", "prune_bn")
CALIBRATION_BATCHES = 8  # as the finetune recipe's default, of the run's batch size (128)


def family(variant: str) -> str:
    return "struct" if variant in STRUCTURES else variant.split("_")[0]


def calibration_batches(train_ds, seed: int, batch_size: int = 128) -> list[torch.Tensor]:
    """The batches the finetune recipe calibrates on (its seeded loader), for the baselines too."""
    loader = DataLoader(train_ds, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    batches = []
    for x, _ in loader:
        batches.append(x)
        if len(batches) == CALIBRATION_BATCHES:
            return batches
    return batches


def baseline_model(variant: str, dense, target_mults: int, batches, input_size) -> torch.nn.Module:
    """The compressed model a baseline variant starts its fine-tune from."""
    from structconv.baselines import prune_to_mults, weight_svd
    from structconv.calibration import calibrate_factorized_

    example = torch.zeros(1, *input_size)
    if family(variant) == "svd":
        model = weight_svd(dense, example, target_mults)
        if variant == "svd_calibrated":
            calibrate_factorized_(model, dense, batches)
        return model
    model = prune_to_mults(dense, example, target_mults)
    if variant == "prune_bn":
        from torch.optim.swa_utils import update_bn

        update_bn([(x, None) for x in batches], model)
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="cifar_resnet20")
    p.add_argument("--epochs", type=int, default=30, help="the teachers' schedule")
    p.add_argument("--structs", default="A,B", help="the Struct presets whose mults every variant matches")
    p.add_argument("--seeds", default=None, help="teacher seeds (default: every committed teacher)")
    p.add_argument("--fraction", type=float, default=0.10, help="fine-tune budget as a fraction of the teacher's steps")
    p.add_argument(
        "--variants",
        default="searched,calibrated,plain",
        help="comma-separated: " + ", ".join([*STRUCTURES, *BASELINES]),
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-path", default="data")
    p.add_argument("--root", default="runs/finetune_curves")
    p.add_argument("--commit", action="store_true")
    args = p.parse_args()
    variants = args.variants.split(",")
    for variant in variants:
        if variant not in STRUCTURES and variant not in BASELINES:
            raise SystemExit(f"--variants: {variant!r} is not one of {', '.join([*STRUCTURES, *BASELINES])}")
    teachers = sorted(TEACHERS.glob(f"{args.arch}_e{args.epochs}_s*"))
    if args.seeds:
        wanted = {f"s{s}" for s in args.seeds.split(",")}
        teachers = [t for t in teachers if t.name.rsplit("_", 1)[1] in wanted]
    torch.set_num_threads(args.threads)
    train_ds, _, info = build_datasets("fashion-mnist", args.data_path, seed=0)
    for teacher in teachers:
        steps = json.loads((teacher / "results.json").read_text())["steps"]
        budget = max(1, round(args.fraction * steps))
        curve = tuple(sorted({0, round(0.01 * steps), round(0.05 * steps)}))
        seed = int(teacher.name.rsplit("_s", 1)[1])
        for struct in args.structs.split(","):
            for variant in variants:
                kind = family(variant)
                suffix = variant if kind == "struct" else variant[len(kind) + 1 :] or "plain"
                name = f"{teacher.name}_{kind}{struct}_{suffix}"
                out = Path(args.root) / name
                if not (out / "results.json").exists():
                    resume = "auto" if (out / "checkpoint.pth").exists() else None
                    print(f"== {name}" + (" (resuming)" if resume else ""), flush=True)
                    common = dict(
                        arch=args.arch,
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
                    if kind == "struct":
                        config = TrainConfig(
                            mode="finetune",
                            struct=struct,
                            init_from=str(teacher / "model.pth"),
                            calibration_batches=0 if variant == "plain" else CALIBRATION_BATCHES,
                            calibration_structure=STRUCTURES[variant][0],
                            reconstruction_steps=STRUCTURES[variant][1],
                            **common,
                        )
                        train(config)
                    else:
                        dense = create_model(args.arch, num_classes=info.num_classes, in_chans=info.in_chans)
                        load_dense_weights(dense, teacher / "model.pth", name="teacher")
                        dense.eval()
                        target = create_model(
                            args.arch, num_classes=info.num_classes, in_chans=info.in_chans, struct=struct
                        )
                        mults = count_ops(decompose(target, on_unstructured="ignore"), (1, *info.input_size)).mults
                        batches = calibration_batches(train_ds, seed)
                        model = baseline_model(variant, dense, mults, batches, info.input_size)
                        train(TrainConfig(mode="baseline", **common), model=model, teacher=dense)
                if args.commit:
                    COMMITTED.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(out / "results.json", COMMITTED / f"{name}.json")


if __name__ == "__main__":
    main()
