"""Per-runtime table (issue 17): dense against deployed, in the same runtime and precision.

One process per runtime: for each precision, ``structconv.deployment.deploy`` searches the
sum-pool lowering and the per-group dense/decomposed choice in that runtime, then times the
deployed model against the all-dense model (the recomposed dense kernels: the dense network's
function and op count), interleaved, medians, the thread count fixed and printed.

    python benchmarks/runtime_table.py --arch cifar_resnet56 --batch 32 --runtime openvino \
        --precisions fp32,bf16,int8 --threads 2 --json benchmarks/results/runtimes/cifar_resnet56_b32_openvino.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import structconv as sc
from structconv._io import atomic_write_json
from structconv.benchmark import build_models
from structconv.deployment import deploy
from structconv.models import default_input_size
from structconv.runtimes import cpu_flags, cpu_name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="cifar_resnet56")
    p.add_argument("--struct", default="A")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--runtime", default="openvino")
    p.add_argument("--precisions", default="fp32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds per search comparison")
    p.add_argument("--final-rounds", type=int, default=21, help="interleaved rounds of the final dense/deployed timing")
    p.add_argument("--json", required=True)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args()
    out = Path(args.json)
    if out.exists() and not args.overwrite:
        raise SystemExit(f"{out} exists; pass --overwrite to replace it")
    torch.manual_seed(0)
    dense, structured = build_models(args.arch, struct=args.struct, ratio=None, num_classes=10, overrides=None, seed=0)
    x = torch.randn(args.batch, *default_input_size(args.arch))
    flags = sorted(f for f in cpu_flags() if f.startswith(("amx", "avx512", "avx_vnni")))
    print(f"{cpu_name()}; flags {' '.join(flags)}; {args.threads} threads; torch {torch.__version__}", flush=True)
    result = {
        "command": "python benchmarks/runtime_table.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("json", "overwrite")),
        "cpu": cpu_name(),
        "cpu_flags": flags,
        "threads": args.threads,
        "torch": torch.__version__,
        "mults_ratio": sc.count_ops(dense, (1, *x.shape[1:])).mults
        / sc.count_ops(sc.decompose(structured), (1, *x.shape[1:])).mults,
        "rows": [],
    }
    for precision in args.precisions.split(","):
        d = deploy(
            structured,
            x,
            runtime=args.runtime,
            precision=precision,
            threads=args.threads,
            rounds=args.rounds,
            whole_model_rounds=args.final_rounds,
            verbose=True,
        )
        print(d, flush=True)
        row = {"precision": precision, **d.to_dict()}
        result["rows"].append(row)
        w = d.whole_model or {}
        print(json.dumps({"precision": precision, **{k: w.get(k) for k in ("dense_ms", "deployed_ms", "speedup")}}))
        atomic_write_json(result, out, indent=1)


if __name__ == "__main__":
    main()
