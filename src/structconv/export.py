"""``structconv export``: a decomposed model to TorchScript and ONNX, verified in ONNX Runtime.

The deployment form exports with ordinary operators only: pad, slices and adds (or one
``MatMul`` with a constant 0/1 matrix for a wide channel pool), and a small ``Conv``.

* TorchScript: ``torch.jit.trace`` (the sum-pool's Python logic depends only on shapes, which
  tracing fixes; the batch size stays free).
* ONNX: ``torch.onnx.export`` at opset 17 by default with the TorchScript-based exporter
  (``dynamo=False``, fast and exact-opset), falling back to the ``torch.export``-based one;
  ``--dynamo`` asks for the latter first.  The batch axis is dynamic.
* Verification (default on): ONNX Runtime's output must match PyTorch's within ``--rtol``
  (relative Frobenius error, default 1e-4) on a random input, and the traced TorchScript
  module must match too; a mismatch is an error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

__all__ = ["get_args_parser", "main", "export_torchscript", "export_onnx", "verify_onnx", "prepare_for_export"]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="export a decomposed model to TorchScript and ONNX", add_help=add_help)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a structconv checkpoint (structured or decomposed; see structconv.save)")
    src.add_argument("--arch", help="build this architecture with random weights (for trying the pipeline)")
    p.add_argument("--struct", choices=("A", "B"), help="with --arch: the paper's Struct-A/B plan")
    p.add_argument("--ratio", type=float, help="with --arch: uniform ratio instead of --struct")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None, help="input height=width (default: the model's)")
    p.add_argument("--batch", type=int, default=1, help="batch size of the example input (the exported batch is dynamic)")
    p.add_argument("--output", "-o", default="exported", help="output directory (default ./exported)")
    p.add_argument("--name", default=None, help="file stem (default: the architecture or checkpoint name)")
    p.add_argument("--format", default="onnx,torchscript", help="comma-separated: onnx, torchscript")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    p.add_argument("--dynamo", action="store_true", help="use the torch.export-based ONNX exporter first")
    p.add_argument("--fold-bn", action=argparse.BooleanOptionalAction, default=True,
                   help="fold BatchNorm into the preceding convs before exporting (default on)")
    p.add_argument("--autotune", action="store_true",
                   help="run layers measured slower decomposed as recomposed dense kernels (exact either way)")
    p.add_argument("--threads", type=int, default=None, help="threads for --autotune measurements")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                   help="check ONNX Runtime and TorchScript against PyTorch (default on)")
    p.add_argument("--rtol", type=float, default=1e-4, help="relative error allowed by --verify")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    return p


# ------------------------------------------------------------------------------------------
# library functions
# ------------------------------------------------------------------------------------------
def prepare_for_export(model: nn.Module, *, fold_bn: bool = True) -> nn.Module:
    """Eval-mode copy in deployment form: structured layers decomposed, BatchNorm folded."""
    from .convert import decompose
    from .deploy import fold_batchnorm
    from .layers import StructuredLayer

    model = model.eval()
    if any(isinstance(m, StructuredLayer) for m in model.modules()):
        model = decompose(model)
    return fold_batchnorm(model) if fold_bn else model


def export_torchscript(model: nn.Module, example_input: torch.Tensor, path) -> torch.jit.ScriptModule:
    """Trace ``model`` on ``example_input`` and save it to ``path``; returns the traced module."""
    model = model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, (example_input,), check_trace=False)
    traced.save(str(path))
    return traced


def export_onnx(model: nn.Module, example_input: torch.Tensor, path, *, opset: int = 17, dynamic_batch: bool = True,
                dynamo: bool = False) -> str:  # fmt: skip
    """Export to ONNX at ``opset`` (>= 17) with input ``x`` and output ``y``; returns the exporter used.

    Tries the TorchScript-based exporter (``dynamo=False``) unless ``dynamo``, then the other.
    """
    if opset < 17:
        raise ValueError(f"opset={opset}: structconv exports at opset 17 or newer")
    model = model.eval()
    order = (True, False) if dynamo else (False, True)
    errors = []
    for use_dynamo in order:
        kwargs = {}
        if dynamic_batch:
            if use_dynamo:
                kwargs["dynamic_shapes"] = {"x": {0: torch.export.Dim("batch")}}
            else:
                kwargs["dynamic_axes"] = {"x": {0: "batch"}, "y": {0: "batch"}}
        try:
            with torch.no_grad(), warnings.catch_warnings(), _stdout_to_stderr():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (example_input,), str(path), input_names=["x"], output_names=["y"],
                                  opset_version=opset, dynamo=use_dynamo, **kwargs)  # fmt: skip
            return "dynamo" if use_dynamo else "torchscript"
        except Exception as err:  # noqa: BLE001 - try the other exporter, report both
            errors.append(f"{'dynamo' if use_dynamo else 'torchscript'} exporter: {type(err).__name__}: {err}")
    raise RuntimeError("ONNX export failed:\n" + "\n".join(errors))


@contextmanager
def _stdout_to_stderr():
    """Send file descriptor 1 to stderr: the exporters print diagnostics (e.g. the TorchScript
    IR graph on failure) from C++, which would corrupt ``structconv bench --json`` output."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def verify_onnx(path, model: nn.Module, x: torch.Tensor, *, rtol: float = 1e-4, threads: int | None = None) -> float:
    """Relative error ``||y_ort - y_torch|| / ||y_torch||``; raises ``ValueError`` above ``rtol``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    y_ort = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.detach().cpu().numpy()})[0])
    with torch.no_grad():
        y = model.eval()(x).float().cpu()
    err = float((y_ort.double() - y.double()).norm() / y.double().norm().clamp_min(1e-30))
    if not err <= rtol:
        raise ValueError(f"ONNX Runtime output differs from PyTorch: relative error {err:.2e} > rtol={rtol:g} ({path})")
    return err


def onnx_opset(path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx"))


# ------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------
def _load_model(args) -> tuple[nn.Module, str, tuple[int, int, int]]:
    from .bench import input_size_for

    if args.checkpoint:
        from .serialization import load, read_checkpoint

        if not Path(args.checkpoint).exists():
            raise FileNotFoundError(f"checkpoint {args.checkpoint!r} does not exist")
        model = load(args.checkpoint)
        info = read_checkpoint(args.checkpoint).get("model") or {}
        arch = info.get("name") or info.get("arch") or Path(args.checkpoint).stem
        size = input_size_for(arch, args.image_size) if info else (3, args.image_size or 224, args.image_size or 224)
        return model, Path(args.checkpoint).stem if args.name is None else args.name, size
    from .bench import build_models

    if args.struct is None and args.ratio is None:
        raise ValueError("with --arch, give --struct A|B or --ratio R")
    _, structured = build_models(args.arch, struct=args.struct, ratio=args.ratio, num_classes=args.num_classes)
    stem = args.name or f"{args.arch}_struct{args.struct}" if args.struct else f"{args.arch}_r{args.ratio:g}"
    return structured, args.name or stem, input_size_for(args.arch, args.image_size)


def main(args) -> int:
    formats = {f.strip() for f in args.format.split(",") if f.strip()}
    bad = formats - {"onnx", "torchscript"}
    if bad or not formats:
        raise ValueError(f"--format={args.format!r}: choose from onnx, torchscript")
    model, stem, (chans, h, w) = _load_model(args)
    model = prepare_for_export(model, fold_bn=args.fold_bn)
    x = torch.randn(args.batch, chans, h, w)
    report = None
    if args.autotune:
        from .autotune import optimize

        model, report = optimize(model, x, threads=args.threads)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"model": stem, "input": [args.batch, chans, h, w], "files": {}}
    if "torchscript" in formats:
        path = out / f"{stem}.pt"
        traced = export_torchscript(model, x, path)
        entry = {"path": str(path)}
        if args.verify:
            x2 = torch.randn(max(args.batch, 2), chans, h, w)
            with torch.no_grad():
                y, yt = model(x2), traced(x2)
            err = float((yt - y).norm() / y.norm().clamp_min(1e-30))
            if not err <= args.rtol:
                raise ValueError(f"TorchScript output differs from PyTorch: relative error {err:.2e} > {args.rtol:g}")
            entry["rel_err"] = err
        summary["files"]["torchscript"] = entry
    if "onnx" in formats:
        path = out / f"{stem}.onnx"
        exporter = export_onnx(model, x, path, opset=args.opset, dynamo=args.dynamo)
        entry = {"path": str(path), "exporter": exporter, "opset": onnx_opset(path)}
        if args.verify:
            entry["rel_err"] = verify_onnx(path, model, torch.randn(max(args.batch, 2), chans, h, w), rtol=args.rtol)
        summary["files"]["onnx"] = entry
    if report is not None:
        summary["autotune_dense_layers"] = report.dense_layers
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        if report is not None:
            print(report)
        for fmt, entry in summary["files"].items():
            extra = f", opset {entry['opset']} ({entry['exporter']} exporter)" if fmt == "onnx" else ""
            check = f", verified: rel. error {entry['rel_err']:.1e}" if "rel_err" in entry else ""
            print(f"{fmt}: {entry['path']}{extra}{check}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(get_args_parser().parse_args()))
