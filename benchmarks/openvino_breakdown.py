"""Where the time goes in OpenVINO: dense against decomposed, per precision, with the
per-node-type breakdown of OpenVINO's own profiler (``PERF_COUNT``) -- the measurement that
decides how the sum-pool must be lowered for that runtime (issue 17).

Both models are BatchNorm-folded, converted with ``openvino.convert_model`` and compiled for
the CPU with a fixed thread count; latencies are medians of interleaved rounds in one process.

    python benchmarks/openvino_breakdown.py --arch resnet18 --batch 1 --threads 2 \
        --json benchmarks/results/openvino_breakdown_resnet18_b1_t2.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

import openvino as ov
import torch

import structconv as sc
from structconv._io import atomic_write_json
from structconv.benchmark import build_models
from structconv.deploy import fold_batchnorm
from structconv.export import export_model
from structconv.layers import set_sum_pool_backends
from structconv.models import default_input_size


def compile_model(core, model, x, threads, precision, workdir: Path, name: str):
    # Through structconv's ONNX export: OpenVINO's PyTorch frontend refuses the sum-pool's
    # avg_pool with divisor_override, and its TorchScript trace of a decomposed model fails
    # the trace check.
    summary = export_model(
        model,
        tuple(x.shape[1:]),
        workdir,
        name=name,
        formats=("onnx",),
        batch=x.shape[0],
        fold_bn=False,
        overwrite=True,
    )
    converted = ov.convert_model(
        summary["onnx"]["path"] if isinstance(summary.get("onnx"), dict) else str(workdir / f"{name}.onnx")
    )
    config = {
        "INFERENCE_NUM_THREADS": threads,
        "PERF_COUNT": True,
        "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "LATENCY",
    }
    return core.compile_model(converted, "CPU", config)


def breakdown(compiled, x) -> dict[str, float]:
    request = compiled.create_infer_request()
    for _ in range(5):
        request.infer({0: x.numpy()})
    totals: dict[str, float] = defaultdict(float)
    for info in request.profiling_info:
        # the sum-pools' nodes keep their module path (".../conv1/pool/Conv"): count them apart
        role = " (sum-pool)" if "/pool/" in info.node_name else ""
        totals[info.node_type + role] += info.real_time.total_seconds() * 1e3
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--struct", default="A")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precisions", default="f32,bf16")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--channel-methods", default="matmul,conv", help="structconv.pooling.BACKENDS['channel'] names")
    p.add_argument("--spatial-method", default=None, help="structconv.pooling.BACKENDS['spatial'] name pinned")
    p.add_argument("--json", default=None)
    p.add_argument("--workdir", default="runs/openvino_breakdown", help="where the ONNX files go")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dense, structured = build_models(args.arch, struct=args.struct, ratio=None, num_classes=10, overrides=None, seed=0)
    x = torch.randn(args.batch, *default_input_size(args.arch))
    models = {"dense": fold_batchnorm(dense.eval())}
    for method in args.channel_methods.split(","):  # how the channel sum-pool is lowered
        decomposed = fold_batchnorm(sc.decompose(structured.eval()))
        set_sum_pool_backends(decomposed, channel=method, spatial=args.spatial_method)
        models[f"decomposed_{method}"] = decomposed
    core = ov.Core()
    result = {
        "command": "python benchmarks/openvino_breakdown.py "
        + " ".join(f"--{k} {val}" for k, val in vars(args).items() if k not in ("json", "workdir") and val is not None),
        "openvino": ov.__version__,
        "cpu": core.get_property("CPU", "FULL_DEVICE_NAME"),
        "threads": args.threads,
        "rows": [],
    }
    for precision in args.precisions.split(","):
        compiled = {
            name: compile_model(core, m, x, args.threads, precision, Path(args.workdir), f"{args.arch}_{name}")
            for name, m in models.items()
        }
        with torch.no_grad():
            ref = {name: m(x).numpy() for name, m in models.items()}
        requests = {name: c.create_infer_request() for name, c in compiled.items()}
        times: dict[str, list[float]] = {name: [] for name in compiled}
        for name, r in requests.items():  # warm up
            for _ in range(5):
                r.infer({0: x.numpy()})
        for _ in range(args.rounds):
            for name, r in requests.items():  # interleaved
                tic = time.perf_counter()
                for _ in range(5):
                    r.infer({0: x.numpy()})
                times[name].append((time.perf_counter() - tic) / 5 * 1e3)
        out = {name: requests[name].infer({0: x.numpy()})[0] for name in requests}
        err = {name: float(abs(out[name] - ref[name]).max() / (abs(ref[name]).max() + 1e-12)) for name in out}
        row = {
            "precision": precision,
            "median_ms": {name: statistics.median(t) for name, t in times.items()},
            "max_rel_error_vs_torch": err,
            "breakdown_ms": {name: breakdown(c, x) for name, c in compiled.items()},
        }
        row["speedup"] = {
            name: row["median_ms"]["dense"] / ms for name, ms in row["median_ms"].items() if name != "dense"
        }
        print(json.dumps({k: row[k] for k in ("precision", "median_ms", "speedup", "max_rel_error_vs_torch")}))
        for name in compiled:
            top = list(row["breakdown_ms"][name].items())[:8]
            print(f"  {name}: " + ", ".join(f"{k} {val:.2f} ms" for k, val in top))
        result["rows"].append(row)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(result, args.json, indent=2)


if __name__ == "__main__":
    main()
