"""What bounds a decomposed model's speed-up in a fast runtime (issue 17): MACs saved against
the memory pass each sum-pool adds.

Per decomposed layer: the dense MACs it replaces, the MACs it keeps (``count_ops``), and the
pool's input tensor, the pass the sum-pool adds.  The pass is timed here, not assumed: one
elementwise read-and-write (``torch.add(x, 1)``) of each pool input at the precision's element
size, at the runtime's thread count -- no runtime moves a tensor through memory faster than a
streaming elementwise op.  With the dense model's measured time in a runtime
(``benchmarks/results/runtimes/*.json``), its achieved MAC rate gives the time of the MACs the
decomposed model keeps, and

    T_decomposed >= T_dense * MACs_decomposed / MACs_dense + sum over layers of T_pass

bounds the speed-up from above, if every pool cost only that one pass and the kept
convolutions ran at the dense model's MAC rate.

    python benchmarks/pool_bound.py --arch cifar_resnet56 --batch 32 --threads 2 \
        --json benchmarks/results/runtimes/pool_bound_cifar_resnet56_b32.json
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import time
from pathlib import Path

import torch

import structconv as sc
from structconv._io import atomic_write_json
from structconv.benchmark import build_models
from structconv.layers import DecomposedLayer
from structconv.models import default_input_size

RESULTS = Path(__file__).parent / "results" / "runtimes"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}


def pass_ms(shape, dtype, repeats=15) -> float:
    x = torch.ones(shape, dtype=dtype)
    for _ in range(3):
        torch.add(x, 1)
    t = []
    for _ in range(repeats):
        s = time.perf_counter()
        torch.add(x, 1)
        t.append(time.perf_counter() - s)
    return 1e3 * statistics.median(t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="cifar_resnet56")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dense, structured = build_models(args.arch, struct="A", ratio=None, num_classes=10, overrides=None, seed=0)
    decomposed = sc.decompose(structured).eval()
    size = (1, *default_input_size(args.arch))
    macs_dense, macs_dec = sc.count_ops(dense, size).mults, sc.count_ops(decomposed, size).mults
    shapes = {}

    def record(name):
        def hook(module, inputs):  # returns None: a pre-hook's return value would replace the input
            shapes.setdefault(name, tuple(inputs[0].shape))

        return hook

    hooks = [
        m.register_forward_pre_hook(record(n)) for n, m in decomposed.named_modules() if isinstance(m, DecomposedLayer)
    ]
    with torch.no_grad():
        decomposed(torch.randn(args.batch, *size[1:]))
    for h in hooks:
        h.remove()
    passes = {p: sum(pass_ms(s, dt) for s in shapes.values()) for p, dt in DTYPES.items()}
    cells = []
    for f in sorted(glob.glob(str(RESULTS / f"{args.arch}_b{args.batch}_*.json"))):
        for row in json.loads(Path(f).read_text()).get("rows", []):
            w = row.get("whole_model") or {}
            if not w.get("dense_ms"):
                continue
            t_dense, t_pass = w["dense_ms"], passes[row["precision"]]
            bound = t_dense / (t_dense * macs_dec / macs_dense + t_pass)
            cells.append(
                {
                    "runtime": row["runtime"],
                    "precision": row["precision"],
                    "dense_ms": t_dense,
                    "kept_macs_ms": t_dense * macs_dec / macs_dense,
                    "pool_pass_ms": t_pass,
                    "speedup_bound": bound,
                    # per-layer result where it was measured (a cell that ships all-dense keeps it there)
                    "measured_speedup": w.get("per_layer_speedup") or w["speedup"],
                }
            )
    out = {
        "command": f"python benchmarks/pool_bound.py --arch {args.arch} --batch {args.batch} --threads {args.threads}",
        "threads": args.threads,
        "macs_dense": macs_dense,
        "macs_decomposed": macs_dec,
        "decomposed_layers": len(shapes),
        "pool_input_elements": sum(torch.Size(s).numel() for s in shapes.values()),
        "pass_ms": passes,
        "cells": cells,
    }
    print(
        f"{args.arch} b{args.batch}: MACs {macs_dense / 1e6:.1f}M -> {macs_dec / 1e6:.1f}M per image; "
        f"pool passes {', '.join(f'{k} {v:.2f} ms' for k, v in passes.items())}"
    )
    for c in cells:
        print(
            f"  {c['runtime']:>11} {c['precision']}: dense {c['dense_ms']:.2f} ms, kept MACs {c['kept_macs_ms']:.2f}"
            f" + pool pass {c['pool_pass_ms']:.2f} -> bound {c['speedup_bound']:.2f}x,"
            f" measured {c['measured_speedup']:.2f}x"
        )
    atomic_write_json(out, args.json, indent=1)


if __name__ == "__main__":
    main()
