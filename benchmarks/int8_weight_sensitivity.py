"""How much of a decomposed model's int8 drop is its weights (issue 17): every conv/linear weight
rounded to symmetric per-output-channel int8 in PyTorch, activations left in float, for the dense
teacher and for Struct-A built from it by the recipe of ``benchmarks/int8_accuracy.py``
(``finetune_from_dense`` at ratio 2, ``--steps`` distilled steps), decomposed, BatchNorm folded;
and the same with the weights rounded by ``structconv.quantization.gptq_int8_weights`` on the
calibration images.

    python benchmarks/int8_weight_sensitivity.py --seed 0
"""

from __future__ import annotations

import argparse
import copy

import torch
from int8_accuracy import struct_a_from_teacher  # the same recipe, one place (run from benchmarks/)
from torch import nn
from torch.utils.data import DataLoader, Subset

from structconv.data import build_datasets
from structconv.quantization import gptq_int8_weights


def accuracy(model, loader) -> float:
    correct = total = 0
    with torch.no_grad():
        for images, targets in loader:
            correct += int((model(images).argmax(1) == targets).sum())
            total += targets.numel()
    return 100.0 * correct / total


def int8_weights(model: nn.Module) -> tuple[nn.Module, float]:
    """A copy with int8-rounded weights, and the mean relative rounding error per layer."""
    model, errors = copy.deepcopy(model), []
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                w = m.weight
                scale = (w.abs().flatten(1).amax(1).clamp_min(1e-12) / 127).view(-1, *[1] * (w.dim() - 1))
                rounded = (w / scale).round().clamp(-127, 127) * scale
                errors.append(float((rounded - w).norm() / w.norm()))
                w.copy_(rounded)
    return model, sum(errors) / len(errors)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=140)
    p.add_argument("--calibration-images", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-path", default="data")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    train_ds, test_ds, info = build_datasets("fashion-mnist", args.data_path, seed=0)
    test = DataLoader(test_ds, batch_size=500)
    dense, deployed = struct_a_from_teacher(args.seed, train_ds, info, args.steps)
    # GPTQ reads the calibration images of int8_accuracy.py / int8_ptq_options.py
    order = torch.randperm(len(train_ds), generator=torch.Generator().manual_seed(0)).tolist()
    calib = [x for x, _ in DataLoader(Subset(train_ds, order[: args.calibration_images]), batch_size=250)]
    for name, model in {"dense": dense, "struct_A": deployed}.items():
        rounded, error = int8_weights(model)
        print(
            f"{name}: fp32 {accuracy(model, test):.2f}, int8 weights only {accuracy(rounded, test):.2f} "
            f"(mean relative weight rounding error {100 * error:.2f} %), "
            f"GPTQ int8 weights {accuracy(gptq_int8_weights(model, calib), test):.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
