"""CPU latency of the models the from-trained study deploys (``benchmarks/finetune_curves.py``):
the dense teacher, Struct (the structures the searched calibration chose, and the preset's),
weight SVD and Torch-Pruning at each preset's mults, BatchNorm folded, timed by
``structconv.benchmark.time_models`` (one process, interleaved, warmed up, medians, fixed
threads; Struct autotuned and untuned).  Weights do not change the time, so the models are
rebuilt from teacher s0 and the structures its searched run recorded.

    python benchmarks/finetune_latency.py --threads 1 --json benchmarks/results/finetune_latency_r20_t1.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
from pathlib import Path

import torch

from structconv._io import atomic_write_json
from structconv.baselines import prune_to_mults, weight_svd
from structconv.benchmark import time_models
from structconv.complexity import count_ops
from structconv.convert import StructureSpec, decompose, restructure_
from structconv.deploy import fold_batchnorm
from structconv.models import create_model, structurize_model
from structconv.serialization import load_dense_weights

HERE = Path(__file__).parent


def searched_specs(run: dict) -> dict[str, StructureSpec]:
    """The (c, n) each layer kept in a searched calibration (``results.json``'s report)."""
    specs = {}
    for layer in run["calibration"]["layers"]:
        c, *n = (int(v) for v in layer["structure"].split("x"))
        specs[layer["name"]] = StructureSpec(c, tuple(n))
    return specs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="cifar_resnet20")
    p.add_argument("--teacher", default=str(HERE / "results" / "teachers" / "cifar_resnet20_e30_s0"))
    p.add_argument("--structs", default="A,B")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--json", required=True)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args()
    if Path(args.json).exists() and not args.overwrite:
        raise SystemExit(f"{args.json} exists; pass --overwrite to replace it")
    size = (1, 28, 28)
    dense = create_model(args.arch, num_classes=10, in_chans=1)
    load_dense_weights(dense, Path(args.teacher) / "model.pth", name="teacher")
    dense.eval()
    models = {"dense": fold_batchnorm(dense)}
    for struct in args.structs.split(","):
        preset = structurize_model(copy.deepcopy(dense), args.arch, struct=struct)
        target = count_ops(decompose(preset, on_unstructured="ignore"), (1, *size)).mults
        models[f"struct_preset-{struct}"] = fold_batchnorm(decompose(preset.eval(), on_unstructured="ignore"))
        run = HERE / "results" / "finetune_curves" / f"{Path(args.teacher).name}_struct{struct}_searched.json"
        if run.exists():
            searched = restructure_(
                structurize_model(copy.deepcopy(dense), args.arch, struct=struct),
                searched_specs(json.loads(run.read_text())),
            )
            models[f"struct_searched-{struct}"] = fold_batchnorm(decompose(searched.eval(), on_unstructured="ignore"))
        models[f"svd-{struct}"] = fold_batchnorm(weight_svd(dense, torch.zeros(1, *size), target).eval())
        models[f"prune-{struct}"] = fold_batchnorm(prune_to_mults(dense, torch.zeros(1, *size), target).eval())
    mults = {name: count_ops(m, (1, *size)).mults for name, m in models.items()}
    result = time_models(
        models, size, batches=tuple(int(b) for b in args.batches.split(",")), threads=args.threads, compile=args.compile
    )
    flags = [
        f"--{k.replace('_', '-')} {val}" for k, val in vars(args).items() if k in ("structs", "batches", "threads")
    ]
    command = " ".join(["python benchmarks/finetune_latency.py", *flags, "--compile" if args.compile else ""]).strip()
    result.update(mults=mults, cpu=platform.processor() or platform.machine(), command=command)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(result, args.json, indent=2)


if __name__ == "__main__":
    main()
