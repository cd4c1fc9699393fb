"""How much of a decomposed model's int8 drop is its weights (issue 17): every conv/linear weight
rounded to symmetric per-output-channel int8 in PyTorch, activations left in float, for the dense
teacher and for Struct-A built from it by the recipe of ``benchmarks/int8_accuracy.py``
(``finetune_from_dense`` at ratio 2, ``--steps`` distilled steps), decomposed, BatchNorm folded.

    python benchmarks/int8_weight_sensitivity.py --seed 0
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import nn
from torch.utils.data import DataLoader

import structconv as sc
from structconv.data import build_datasets
from structconv.export import prepare_for_export
from structconv.models import create_model
from structconv.serialization import load_dense_weights


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
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-path", default="data")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    train_ds, test_ds, info = build_datasets("fashion-mnist", args.data_path, seed=0)
    test = DataLoader(test_ds, batch_size=500)
    dense = create_model("cifar_resnet20", num_classes=info.num_classes, in_chans=info.in_chans)
    teacher = f"benchmarks/results/teachers/cifar_resnet20_e30_s{args.seed}/model.pth"
    load_dense_weights(dense, teacher, name="teacher")
    dense.eval()
    torch.manual_seed(args.seed)
    loader = DataLoader(train_ds, batch_size=128, shuffle=True, drop_last=True)
    structured, _ = sc.finetune_from_dense(dense, loader, ratio=2.0, steps=args.steps, progress=False)
    models = {"dense": prepare_for_export(dense), "struct_A": prepare_for_export(sc.decompose(structured.eval()))}
    for name, model in models.items():
        rounded, error = int8_weights(model)
        print(
            f"{name}: fp32 {accuracy(model, test):.2f}, int8 weights only {accuracy(rounded, test):.2f} "
            f"(mean relative weight rounding error {100 * error:.2f} %)",
            flush=True,
        )


if __name__ == "__main__":
    main()
