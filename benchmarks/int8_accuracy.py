"""int8 post-training quantization of a decomposed model (issue 17): Fashion-MNIST test accuracy
of fp32 against int8, per runtime, and the int8 weight memory against fp32 dense.

For each converged ResNet20 teacher (``benchmarks/results/teachers``), Struct-A is built from it
by the documented recipe (``finetune_from_dense`` at ratio 2: searched structures, calibration,
block reconstruction, then ``--steps`` distilled fine-tune steps), decomposed and BatchNorm-folded,
its sum-pools pinned to the 1x1 / depthwise ones-convolutions (``conv``: the lowering
``deploy`` keeps in OpenVINO at every precision, and one the int8 flows quantize exactly: int8
input times a ones kernel, accumulated in int32), and quantized by the maintained tools with
``--calibration-images`` training images: NNCF for OpenVINO, PT2E + X86InductorQuantizer for
torch.compile, ``quantize_static`` for ONNX Runtime.  The dense teacher is quantized the same way.

    python benchmarks/int8_accuracy.py --seeds 0,1,2 --threads 2 --json benchmarks/results/runtimes/int8_accuracy.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

import structconv as sc
from structconv._io import atomic_write_json
from structconv.data import build_datasets
from structconv.export import prepare_for_export
from structconv.layers import set_sum_pool_backends
from structconv.models import create_model
from structconv.runtimes import check_target
from structconv.serialization import load_dense_weights

TEACHERS = Path(__file__).parent / "results" / "teachers"


def accuracy(run, loader) -> float:
    correct = total = 0
    for images, targets in loader:
        correct += int((run(images).argmax(1) == targets).sum())
        total += targets.numel()
    return 100.0 * correct / total


def calibration_and_validation(train_ds, calibration_images: int, validation_images: int = 0, batch: int = 250):
    """The int8 benchmarks' images, from one seeded permutation of the training set:
    ``calibration_images`` input batches for quantization statistics, then ``validation_images``
    other ``(inputs, targets)`` batches for accuracy control (disjoint; never the test set)."""
    order = torch.randperm(len(train_ds), generator=torch.Generator().manual_seed(0)).tolist()
    n = calibration_images
    calib = [x for x, _ in DataLoader(Subset(train_ds, order[:n]), batch_size=batch)]
    validation = list(DataLoader(Subset(train_ds, order[n : n + validation_images]), batch_size=batch))
    return calib, validation


def struct_a_from_teacher(seed: int, train_ds, info, steps: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Teacher ``seed`` and the Struct-A model built from it by the documented recipe
    (``finetune_from_dense`` at ratio 2, ``steps`` distilled steps), both BatchNorm-folded for
    export; the decomposed model's sum-pools pinned to the ones-convolutions (``conv``)."""
    dense = create_model("cifar_resnet20", num_classes=info.num_classes, in_chans=info.in_chans)
    load_dense_weights(dense, TEACHERS / f"cifar_resnet20_e30_s{seed}" / "model.pth", name="teacher")
    dense.eval()
    torch.manual_seed(seed)
    loader = DataLoader(train_ds, batch_size=128, shuffle=True, drop_last=True)
    structured, _ = sc.finetune_from_dense(dense, loader, ratio=2.0, steps=steps, progress=False)
    deployed = prepare_for_export(sc.decompose(structured.eval()))
    set_sum_pool_backends(deployed, channel="conv", spatial="conv")
    return prepare_for_export(dense), deployed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--runtimes", default="openvino,onnxruntime,compile")
    p.add_argument("--calibration-images", type=int, default=512)
    p.add_argument("--steps", type=int, default=140, help="fine-tune steps (1%% of the teachers' 14,040)")
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-path", default="data")
    p.add_argument("--json", required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    train_ds, test_ds, info = build_datasets("fashion-mnist", args.data_path, seed=0)
    test = DataLoader(test_ds, batch_size=args.batch)
    calib, _ = calibration_and_validation(train_ds, args.calibration_images, batch=args.batch)
    example = calib[0]
    rows = []
    for seed in args.seeds.split(","):
        dense, deployed = struct_a_from_teacher(int(seed), train_ds, info, args.steps)
        models = {"dense": dense, "struct_A": deployed}
        for name, model in models.items():
            row = {"seed": int(seed), "model": name, "torch_fp32": accuracy(lambda x: model(x), test)}
            for runtime in args.runtimes.split(","):
                rt = check_target(runtime, "int8")
                for precision in ("fp32", "int8"):
                    if precision not in rt.precisions:
                        continue
                    run = rt.build(model, example, precision, args.threads, calib)
                    row[f"{runtime}_{precision}"] = accuracy(run, test)
                if runtime == "openvino":
                    with tempfile.TemporaryDirectory() as tmp:
                        files = rt.save(model, example, "int8", Path(tmp) / "m.xml", calib)
                        row["openvino_int8_bin_bytes"] = Path(files[1]).stat().st_size
            row["mults"] = sc.count_ops(model, (1, *example.shape[1:])).mults
            row["fp32_param_bytes"] = 4 * sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
            print(row, flush=True)
            rows.append(row)
            atomic_write_json(
                {
                    "command": "python benchmarks/int8_accuracy.py "
                    + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "json"),
                    "rows": rows,
                },
                args.json,
                indent=1,
            )
    summary = {}
    for name in ("dense", "struct_A"):
        sel = [r for r in rows if r["model"] == name]
        for key in sel[0]:
            if key in ("seed", "model"):
                continue
            vals = [r[key] for r in sel]
            summary[f"{name}.{key}"] = (statistics.mean(vals), statistics.pstdev(vals) if len(vals) > 1 else 0.0)
    for k, (m, s) in summary.items():
        print(f"{k}: {m:.2f} +- {s:.2f}")


if __name__ == "__main__":
    main()
