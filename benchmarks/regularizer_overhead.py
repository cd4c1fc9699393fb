"""Cost of the Structural Regularization term in a training iteration (the paper's Table 6).

Times one SGD iteration (forward, loss, backward, step) of a structured model with and
without ``lam * structconv.structural_regularization(model)``, interleaved (A B A B ...) in
one process after warm-up, and prints the medians and their ratio.  Timing is measured, not
asserted; the machines are shared, so read the ratio from one run.

    python benchmarks/regularizer_overhead.py --arch cifar_resnet56 --batch 128 --threads 2
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

import structconv as sc
from structconv._timing import fixed_threads, interleaved_times, median_ms, paired_ratio


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="cifar_resnet56")
    p.add_argument("--struct", default="A")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--lam", type=float, default=0.1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from structconv.models import create_model

    torch.manual_seed(0)
    model = create_model(args.arch, struct=args.struct).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size)
    y = torch.randint(0, 10, (args.batch,))

    def step(with_reg: bool):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        if with_reg:
            loss = loss + args.lam * sc.structural_regularization(model)
        loss.backward()
        opt.step()

    def reg_only():
        sc.structural_regularization(model).backward()

    with fixed_threads(args.threads) as threads:
        times = interleaved_times({"plain": lambda: step(False), "with_sr": lambda: step(True)},
                                  warmup=args.warmup, repeats=args.repeats)  # fmt: skip
        alone = interleaved_times({"sr_forward_backward": reg_only}, warmup=2, repeats=max(args.repeats, 9))
    plain, with_sr = median_ms(times["plain"]), median_ms(times["with_sr"])
    out = {
        "arch": args.arch, "struct": args.struct, "batch": args.batch, "threads": threads,
        "plain_ms": plain, "with_sr_ms": with_sr, "overhead_ratio": with_sr / plain,
        "sr_alone_ms": median_ms(alone["sr_forward_backward"]), "rounds": len(times["plain"]),
        # each round times both variants back to back: the median of the per-round ratios is
        # robust to the machine drifting between rounds
        "paired_overhead_ratio": paired_ratio(times["with_sr"], times["plain"]),
    }  # fmt: skip
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"{args.arch} Struct-{args.struct}, batch {args.batch}, threads {threads} (torch.set_num_threads), "
              f"{out['rounds']} interleaved rounds, medians:")  # fmt: skip
        print(f"  training iteration without SR: {plain:9.2f} ms")
        print(f"  training iteration with SR:    {with_sr:9.2f} ms")
        print(f"  SR forward+backward alone:     {out['sr_alone_ms']:9.2f} ms")
        print(f"  ratio (with / without): {out['overhead_ratio']:.3f}  -> overhead {100 * (out['overhead_ratio'] - 1):+.1f}%")
        print(f"  median of per-round ratios: {out['paired_overhead_ratio']:.3f}")
    return out


if __name__ == "__main__":
    main()
