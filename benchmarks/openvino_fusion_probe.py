"""Which sum-pool placements OpenVINO's CPU plugin fuses into a convolution (issue 17): the
measurement that decides whether the pool's memory pass can be removed by graph rewrites or
only by a fused kernel.

Each candidate is a small block (a stem convolution + ReLU, then the layer under test) compiled
the way the ``openvino`` runtime target deploys it (``structconv.runtimes.compile_openvino``:
ONNX export, NNCF int8 on random calibration batches, the precision's hint, 1 thread) and read
back as OpenVINO's *executed* graph (``get_runtime_model``): every executed node lists
the original operations fused into it.  A pool is "fused" when its operations run inside a node
that also runs a convolution that is not a pool.  No timings: what is printed is structure.

    python benchmarks/openvino_fusion_probe.py --precisions fp32,bf16,int8 \
        --json benchmarks/results/runtimes/openvino_fusion_probe_epyc.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import openvino as ov
import torch
from torch import nn

import structconv as sc
from structconv._io import atomic_write_json
from structconv.layers import set_sum_pool_backends
from structconv.runtimes import compile_openvino, cpu_flags, cpu_name

C, HW, BATCH = 64, 16, 8


class Block(nn.Module):
    """stem conv + ReLU (so the layer's input ReLU is a post-op, as in a real network), then ``body``."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.stem = nn.Conv2d(C, C, 3, padding=1)
        self.body = body

    def forward(self, x):
        return torch.relu(self.body(torch.relu(self.stem(x))))


class OutputSidePool(nn.Module):
    """A spatially structured 3x3 conv (n = 2) with its 2x2 sum-pool moved behind the small
    conv: both are stride-1 convolutions, so they commute exactly under zero padding."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(C, C, 2, padding=1)
        self.pool = nn.Conv2d(C, C, 2, groups=C, bias=False)
        nn.init.ones_(self.pool.weight)

    def forward(self, x):
        return self.pool(self.conv(x))


class PointwiseThenDepthwise(nn.Module):
    """The one pattern OpenVINO's FuseConvolutionAndDWConvolution accepts (1x1 conv, then a
    3x3 depthwise conv with bias): the control that shows whether that pass runs on this CPU."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(C, C, 1)
        self.pool = nn.Conv2d(C, C, 3, padding=1, groups=C)

    def forward(self, x):
        return self.pool(self.conv(x))


def decomposed(spec, *, channel=None, spatial=None) -> nn.Module:
    block = Block(nn.Conv2d(C, C, 3, padding=1)).eval()
    structured = sc.structurize(block, overrides={"stem": None, "body": spec})
    dec = sc.decompose(structured)
    set_sum_pool_backends(dec, channel=channel, spatial=spatial)
    return dec.eval()


def candidates() -> dict[str, nn.Module]:
    return {
        "dense 3x3": Block(nn.Conv2d(C, C, 3, padding=1)).eval(),
        "channel pool (c=C/2), 1x1 ones conv": decomposed((C // 2, 3), channel="conv"),
        "channel pool (c=C/2), matmul": decomposed((C // 2, 3), channel="matmul"),
        "channel pool (c=C/2), shifted adds": decomposed((C // 2, 3), channel="sum"),
        "spatial pool (n=2), depthwise ones, input side": decomposed((C, 2), spatial="conv"),
        "spatial pool (n=2), avg_pool x4, input side": decomposed((C, 2), spatial="pool"),
        "spatial pool (n=2), shifted adds, input side": decomposed((C, 2), spatial="shift"),
        "spatial pool (n=2), depthwise ones, output side": Block(OutputSidePool()).eval(),
        "control: 1x1 conv then 3x3 depthwise": Block(PointwiseThenDepthwise()).eval(),
    }


def executed_nodes(model: nn.Module, precision: str) -> list[dict]:
    x = torch.randn(BATCH, C, HW, HW)
    calibration = [torch.randn(BATCH, C, HW, HW) for _ in range(4)]
    compiled = compile_openvino(model, x, precision, threads=1, calibration=calibration)
    compiled.create_infer_request().infer({0: x.numpy()})
    nodes = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = str(info["layerType"].astype(str))
        if kind in ("Parameter", "Result", "Const", "Input", "Output"):
            continue
        fused = [n for n in str(info["originalLayersNames"].astype(str)).split(",") if n]
        nodes.append({"type": kind, "precision": str(info["runtimePrecision"].astype(str)), "fuses": fused})
    return nodes


def _is_pool(op: str) -> bool:
    return "/pool/" in op or op.startswith("pool") or "_pool" in op


def summarize(nodes: list[dict]) -> dict:
    pool_nodes = [n for n in nodes if any(_is_pool(op) for op in n["fuses"])]
    fused = [n for n in pool_nodes if any(("Conv" in op or "conv" in op) and not _is_pool(op) for op in n["fuses"])]
    return {
        "executed_nodes": len(nodes),
        "pool_nodes": len(pool_nodes),
        "pool_fused_into_a_conv": bool(pool_nodes) and len(fused) == len(pool_nodes),
        "pool_node_types": sorted({n["type"] for n in pool_nodes}),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precisions", default="fp32,bf16,int8")
    p.add_argument("--json", default=None)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args()
    precisions = args.precisions.split(",")
    bad = [q for q in precisions if q not in ("fp32", "bf16", "int8")]
    if bad:
        raise SystemExit(f"openvino_fusion_probe.py: --precisions {','.join(bad)} not one of fp32, bf16, int8")
    if args.json and Path(args.json).exists() and not args.overwrite:
        raise SystemExit(f"openvino_fusion_probe.py: --json {args.json} exists; pass --overwrite to replace it")
    flags = cpu_flags()
    print(f"CPU: {cpu_name()}; avx512f={'avx512f' in flags} amx_bf16={'amx_bf16' in flags}; "
          f"OpenVINO {ov.get_version()}; block: stem conv, then the layer, "
          f"{C} channels, {HW}x{HW}, batch {BATCH}")  # fmt: skip
    results = []
    for label, model in candidates().items():
        for precision in precisions:
            nodes = executed_nodes(model, precision)
            row = {"candidate": label, "precision": precision, **summarize(nodes), "nodes": nodes}
            results.append(row)
            verdict = "fused" if row["pool_fused_into_a_conv"] else f"{row['pool_nodes']} node(s) of its own"
            if not row["pool_nodes"]:
                verdict = "no pool"
            print(f"{label:50s} {precision:5s} nodes {row['executed_nodes']:2d}  pool: {verdict} "
                  f"{' '.join(row['pool_node_types'])}", flush=True)  # fmt: skip
    if args.json:
        atomic_write_json(
            {"cpu": cpu_name(), "flags": sorted(flags), "openvino": ov.get_version(), "results": results}, args.json
        )


if __name__ == "__main__":
    main()
