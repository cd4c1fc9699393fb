"""``deploy(..., max_accuracy_drop=...)`` in OpenVINO int8 (issue 17): what the accuracy guard
ships from each converged ResNet20 teacher, its full-test-set accuracy against PyTorch float32,
and its speed against the dense int8 model.

Struct-A is built by the recipe of ``benchmarks/int8_accuracy.py`` (``struct_a_from_teacher``),
then deployed by ``structconv.deploy`` at int8 with the same 512 calibration images and
``--validation-images`` other training images for the guard (never the test set).  ``--search
off`` skips the per-layer speed search, so every layer starts decomposed; the guard first
times that model against the all-dense one and recomposes layers only where it is faster
(otherwise all-dense ships), then the whole-model speed check runs.

    python benchmarks/int8_guard.py --seeds 0,1,2 --threads 1 --search off \\
        --json benchmarks/results/runtimes/int8_guard.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

# the same recipe, run from benchmarks/
from int8_accuracy import accuracy, calibration_and_validation, struct_a_from_teacher
from torch.utils.data import DataLoader

import structconv as sc
from structconv._io import atomic_write_json
from structconv.data import build_datasets
from structconv.runtimes import cpu_name, get_runtime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=140, help="fine-tune steps (1%% of the teachers' 14,040)")
    p.add_argument("--calibration-images", type=int, default=512)
    p.add_argument("--validation-images", type=int, default=2000)
    p.add_argument("--max-drop", type=float, default=0.4, help="the guard's budget, points on the validation images")
    p.add_argument("--batch", type=int, default=32, help="the deployed batch size")
    p.add_argument("--search", choices=("on", "off"), default="off")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-path", default="data")
    p.add_argument("--json", required=True)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args()
    if Path(args.json).exists() and not args.overwrite:
        raise SystemExit(f"{args.json} exists; pass --overwrite to replace it")
    torch.set_num_threads(args.threads)
    train_ds, test_ds, info = build_datasets("fashion-mnist", args.data_path, seed=0)
    calib, validation = calibration_and_validation(train_ds, args.calibration_images, args.validation_images)
    test_images, test_labels = next(iter(DataLoader(test_ds, batch_size=len(test_ds))))
    rows = []
    for seed in map(int, args.seeds.split(",")):
        _, decomposed = struct_a_from_teacher(seed, train_ds, info, args.steps)
        example = test_images[: args.batch]
        result = sc.deploy(
            decomposed, example, runtime="openvino", precision="int8", threads=args.threads, calibration=calib,
            validation=validation, max_accuracy_drop=args.max_drop, search=args.search == "on", verbose=True,
        )  # fmt: skip
        shipped = get_runtime("openvino").build(result.model, example, "int8", args.threads, calib)
        whole = len(test_labels) // args.batch * args.batch  # whole deployed batches (9,984 at 32)
        batches = [
            (test_images[i : i + args.batch], test_labels[i : i + args.batch]) for i in range(0, whole, args.batch)
        ]
        row = {
            "seed": seed,
            "torch_fp32_test": accuracy(lambda x: decomposed(x), batches),  # the same images as int8
            "shipped_int8_test": accuracy(shipped, batches),
            "test_images": whole,
            "layers_decomposed": sum(d.choice == "decomposed" for d in result.layers),
            "layers_recomposed_for_accuracy": sum(d.reason == "accuracy" for d in result.layers),
            "layers": len(result.layers),
            "validation": result.accuracy,
            "whole_model": result.whole_model,
        }
        row["test_drop"] = row["torch_fp32_test"] - row["shipped_int8_test"]
        print({k: row[k] for k in row if k not in ("validation", "whole_model")}, flush=True)
        print(result, flush=True)
        rows.append(row)
        command = "python benchmarks/int8_guard.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("json", "overwrite")
        )
        atomic_write_json({"command": command, "cpu": cpu_name(), "rows": rows}, args.json, indent=1)


if __name__ == "__main__":
    main()
