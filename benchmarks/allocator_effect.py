"""What glibc's handling of freed memory costs a freshly started inference process.

    python benchmarks/allocator_effect.py --arch cifar_resnet56 --struct A --batch 32 --threads 2

For each setting (glibc's defaults, then ``structconv.allocator.retain_freed_memory``) a
*fresh* Python process builds the dense model and its decomposed Struct-A/B form (BatchNorm
folded, channels_last), times both interleaved (``structconv._timing``: after warm-up, medians) and counts the
minor page faults per call.  A fresh process matters: glibc raises its thresholds as a process frees
ever larger blocks, so the same call inside a long-lived process (``structconv bench``, after
its tuning steps) may not fault at all, while a deployment that starts and serves does.
Prints one table (or ``--json``); timing is never asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

_WORKER = r"""
import json, sys
import torch
import structconv as sc
from structconv._timing import interleaved_times, median_ms, page_faults_per_call, paired_ratio
from structconv.allocator import retain_freed_memory
from structconv.benchmark import build_models, input_size_for
from structconv.deploy import fold_batchnorm

arch, struct, batch, threads, rounds, mode = sys.argv[1:7]
if mode == "retain":
    assert retain_freed_memory(), "glibc mallopt unavailable"
torch.set_num_threads(int(threads))
dense, structured = build_models(arch, struct=struct)
cl = torch.channels_last
models = {"dense": fold_batchnorm(dense).to(memory_format=cl),
          "decomposed": fold_batchnorm(sc.decompose(structured)).to(memory_format=cl)}
x = torch.randn(int(batch), *input_size_for(arch, None)).contiguous(memory_format=cl)
fns = {name: (lambda m=m: m(x)) for name, m in models.items()}
with torch.inference_mode():
    times = interleaved_times(fns, warmup=2, repeats=int(rounds))
    out = {f"{k}_page_faults": page_faults_per_call(fn) for k, fn in fns.items()}
out.update({f"{k}_ms": median_ms(v) for k, v in times.items()})
out["speedup"] = out["dense_ms"] / out["decomposed_ms"]
out["speedup_paired"] = paired_ratio(times["dense"], times["decomposed"])
print(json.dumps(out))
"""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="cifar_resnet56")
    p.add_argument("--struct", default="A", choices=("A", "B"))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--json", action="store_true")
    return p


def main(args) -> int:
    rows = {}
    for mode in ("system", "retain"):
        cmd = [sys.executable, "-c", _WORKER, args.arch, args.struct, str(args.batch), str(args.threads),
               str(args.rounds), mode]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return done.returncode
        rows[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    result = {"arch": args.arch, "struct": args.struct, "batch": args.batch, "threads": args.threads,
              "rounds": args.rounds, "command": "python benchmarks/allocator_effect.py " + " ".join(sys.argv[1:]),
              "results": rows}  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{args.arch} Struct-{args.struct}, batch {args.batch}, {args.threads} threads, {args.rounds} interleaved rounds,"
          " one fresh process per setting")  # fmt: skip
    print(f"{'malloc':8s} {'dense ms':>9s} {'decomposed ms':>14s} {'speed-up':>9s} {'per-round':>10s} {'faults/call dense, dec':>24s}")
    for mode, r in rows.items():
        print(f"{mode:8s} {r['dense_ms']:9.2f} {r['decomposed_ms']:14.2f} {r['speedup']:8.2f}x {r['speedup_paired']:9.2f}x "
              f"{r['dense_page_faults']:11.0f}, {r['decomposed_page_faults']:.0f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
