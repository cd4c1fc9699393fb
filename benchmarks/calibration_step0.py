"""Step-0 accuracy of a structurized trained model: weight-space projection, projection plus
BatchNorm re-estimation, the data-aware calibration of ``structconv.calibrate_`` on the preset's
structures, and with the structures chosen from the data too (``search_structure=True``: per
layer, the ``(c, n)`` of equal multiplications, within 3 %, with the lowest held-out error) (issue 16).

Reads the committed dense teachers (``benchmarks/results/teachers/<arch>_e<epochs>_s<seed>``),
structurizes each at Struct-A and Struct-B, and evaluates on the full Fashion-MNIST test set,
before and after ``decompose`` (which must agree: calibration leaves the layers exactly
structured).  Calibration reads ``--batches`` training batches of ``--batch-size`` images.

    python benchmarks/calibration_step0.py --threads 1 --output benchmarks/results/calibration/step0.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import structconv as sc
from structconv._io import atomic_write_json
from structconv.calibration import calibrate_
from structconv.data import build_datasets
from structconv.evaluation import evaluate
from structconv.models import create_model, structurize_model
from structconv.regularizer import project_weights_
from structconv.serialization import load_dense_weights

TEACHERS = Path(__file__).parent / "results" / "teachers"


def reestimate_batchnorm_(model, batches) -> None:
    """Running statistics recomputed on ``batches`` (cumulative average, as torchvision's
    ``update_bn`` for SWA does): the cheapest data-aware repair, for comparison."""
    from torch.optim.swa_utils import update_bn

    update_bn([(x, None) for x in batches], model)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="cifar_resnet20")
    p.add_argument("--epochs", type=int, default=30, help="the teachers' schedule")
    p.add_argument("--structs", default="A,B")
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-path", default="data")
    p.add_argument("--output", required=True)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args()
    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise SystemExit(f"{out} exists; pass --overwrite to replace it")
    torch.set_num_threads(args.threads)
    train_ds, test_ds, info = build_datasets("fashion-mnist", args.data_path, seed=0)
    test = DataLoader(test_ds, batch_size=500)
    gen = torch.Generator().manual_seed(0)
    calib = [x for x, _ in DataLoader(train_ds, batch_size=args.batch_size, shuffle=True, generator=gen)][
        : args.batches
    ]
    rows = []
    for teacher in sorted(TEACHERS.glob(f"{args.arch}_e{args.epochs}_s*")):
        dense = create_model(args.arch, num_classes=info.num_classes, in_chans=info.in_chans)
        load_dense_weights(dense, teacher / "model.pth", name="teacher")
        dense_acc = evaluate(dense, test, "cpu")[0]
        for struct in args.structs.split(","):
            row = {"teacher": teacher.name, "struct": struct, "dense": dense_acc}
            projected = structurize_model(copy.deepcopy(dense), args.arch, struct=struct)
            project_weights_(projected)
            row["projection"] = evaluate(projected, test, "cpu")[0]
            reestimate_batchnorm_(projected, calib)
            row["projection_bn"] = evaluate(projected, test, "cpu")[0]
            calibrated = structurize_model(copy.deepcopy(dense), args.arch, struct=struct)
            tic = time.perf_counter()
            report = calibrate_(calibrated, dense, calib)
            row["calibration_seconds"] = time.perf_counter() - tic
            row["calibrated"] = evaluate(calibrated, test, "cpu")[0]
            row["calibrated_decomposed"] = evaluate(sc.decompose(calibrated), test, "cpu")[0]
            row["output_error_projection"] = report.mean_error_projection
            row["output_error_calibrated"] = report.mean_error_calibrated
            row["layers_kept_projection"] = sum(layer.method == "projection" for layer in report.layers)
            row["mults_preset"] = sc.count_ops(sc.decompose(calibrated), (1, *info.input_size)).mults
            searched = structurize_model(copy.deepcopy(dense), args.arch, struct=struct)
            tic = time.perf_counter()
            report = calibrate_(searched, dense, calib, search_structure=True)
            row["searched_seconds"] = time.perf_counter() - tic
            row["searched"] = evaluate(searched, test, "cpu")[0]
            row["searched_decomposed"] = evaluate(sc.decompose(searched), test, "cpu")[0]
            row["output_error_searched"] = report.mean_error_calibrated
            row["layers_restructured"] = sum(
                layer.structure != (layer.own_structure or layer.structure) for layer in report.layers
            )
            row["mults_searched"] = sc.count_ops(sc.decompose(searched), (1, *info.input_size)).mults
            print(json.dumps(row), flush=True)
            rows.append(row)
    result = {
        "command": "python benchmarks/calibration_step0.py "
        + " ".join(
            f"--{k.replace('_', '-')} {val}" for k, val in vars(args).items() if k not in ("output", "overwrite")
        ),
        "calibration_images": args.batches * args.batch_size,
        "threads": args.threads,
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(result, out, indent=2)


if __name__ == "__main__":
    main()
