"""Time per training step of each recipe, timed interleaved in one process.

    python benchmarks/step_time.py --arch cifar_resnet20 --struct A --batch 128 --threads 1

One SGD step (forward, cross-entropy backward, the recipe's regularizer or projection,
``optimizer.step()``) on a fixed random batch at the dataset's size, for: the dense model;
Step 1 with the paper's Eq. 3 term (autograd); with the normalized term
(``add_normalized_regularization_grad_``, the default); the projected phase
(``project_gradients_``); and direct training of the decomposed form through the orthonormal
parametrization (``to_direct``).  Medians over interleaved rounds (``structconv._timing``),
threads fixed and printed; the per-round ratio to the Eq. 3 step is printed beside each.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from structconv._timing import fixed_threads, interleaved_times, median_ms, paired_ratio
from structconv.convert import to_direct
from structconv.models import create_model
from structconv.regularizer import (
    add_normalized_regularization_grad_,
    project_gradients_,
    project_weights_,
    structural_regularization,
)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="cifar_resnet20")
    p.add_argument("--struct", default="A")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--in-chans", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--json", help="also write the raw times here")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    x = torch.randn(args.batch, args.in_chans, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))

    def build(struct):
        return create_model(args.arch, num_classes=10, in_chans=args.in_chans, struct=struct).train()

    def sgd(model):
        return torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)

    models = {"dense": build(None), "sr_eq3": build(args.struct), "sr_normalized": build(args.struct),
              "projected": build(args.struct), "direct": to_direct(build(args.struct))}  # fmt: skip
    optims = {k: sgd(m) for k, m in models.items()}
    project_weights_(models["projected"], optims["projected"])

    def step(kind):
        model, opt = models[kind], optims[kind]

        def run():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            if kind == "sr_eq3":
                loss = loss + structural_regularization(model)
            loss.backward()
            if kind == "sr_normalized":
                add_normalized_regularization_grad_(model, lam=1.0, kappa=2.0)
            elif kind == "projected":
                project_gradients_(model)
            opt.step()

        return run

    with fixed_threads(args.threads):
        times = interleaved_times({k: step(k) for k in models}, warmup=2, repeats=args.repeats)
    print(f"{args.arch} Struct-{args.struct}, batch {args.batch}x{args.in_chans}x{args.size}x{args.size}, "
          f"{args.threads} thread(s), {args.repeats} interleaved rounds, torch {torch.__version__}")  # fmt: skip
    for k, ts in times.items():
        ratio = paired_ratio(ts, times["sr_eq3"])
        print(f"  {k:14s} {median_ms(ts):8.1f} ms/step   {ratio:.2f}x the Eq. 3 step (median per round)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "torch": torch.__version__, "ms": times}, f, indent=1)


if __name__ == "__main__":
    main()
