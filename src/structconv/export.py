"""A decomposed model to TorchScript and ONNX, verified in ONNX Runtime (``structconv export``).

The deployment form exports with ordinary operators only: pad, slices and adds (or one
``MatMul`` with a constant 0/1 matrix for a wide channel pool), and a small ``Conv``.

* TorchScript: ``torch.jit.trace`` (the sum-pool's Python logic depends only on shapes, which
  tracing fixes; the batch size stays free).
* ONNX: ``torch.onnx.export`` at opset 17 by default with the TorchScript-based exporter
  (``dynamo=False``, fast and exact-opset), falling back to the ``torch.export``-based one;
  ``--dynamo`` asks for the latter first.  The batch axis is dynamic.
* OpenVINO (``openvino``): IR ``name.xml`` + ``name.bin`` in float32, converted from the ONNX
  export with every channel sum-pool lowered as a 1x1 convolution (the ``conv`` backend: a
  MatMul on the channel axis makes OpenVINO's CPU plugin convert layouts around it, which cost
  more than the convolutions saved; BENCHMARKS.md, "OpenVINO"); verified in OpenVINO at f32.
* Verification (default on): ONNX Runtime's output must match PyTorch's within ``--rtol``
  (relative Frobenius error, default 1e-4) on a random input, and the traced TorchScript
  module must match too; a mismatch is an error.
"""

from __future__ import annotations

import os
import sys
import warnings
from contextlib import contextmanager

import torch
from torch import nn

from . import validation as v
from .convert import decompose
from .deploy import fold_batchnorm
from .layers import StructuredLayer
from .reporting import relative_error

__all__ = [
    "export_torchscript",
    "export_onnx",
    "verify_onnx",
    "onnx_opset",
    "prepare_for_export",
    "checkpoint_input_size",
    "export_openvino",
    "export_model",
    "FORMATS",
]

FORMATS = ("onnx", "torchscript", "openvino")


# ------------------------------------------------------------------------------------------
# library functions
# ------------------------------------------------------------------------------------------
def prepare_for_export(model: nn.Module, *, fold_bn: bool = True) -> nn.Module:
    """Eval-mode copy in deployment form: structured layers decomposed, BatchNorm folded."""
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


def export_onnx(
    model: nn.Module,
    example_input: torch.Tensor,
    path,
    *,
    opset: int = 17,
    dynamic_batch: bool = True,
    dynamo: bool = False,
) -> str:
    """Export to ONNX at ``opset`` (>= 17) with input ``x`` and output ``y``; returns the exporter used.

    Tries the TorchScript-based exporter (``dynamo=False``) unless ``dynamo``, then the other.
    """
    v.integer(opset, "opset", low=17)
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
                torch.onnx.export(
                    model,
                    (example_input,),
                    str(path),
                    input_names=["x"],
                    output_names=["y"],
                    opset_version=opset,
                    dynamo=use_dynamo,
                    **kwargs,
                )
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


def export_openvino(
    model: nn.Module,
    example_input: torch.Tensor,
    path,
    *,
    opset: int = 17,
    check: torch.Tensor | None = None,
    rtol: float = 1e-4,
) -> dict:
    """OpenVINO IR (``path`` = ``name.xml``, weights beside it in ``name.bin``, float32) of
    ``model`` with its channel sum-pools lowered as 1x1 convolutions; with ``check`` it is run
    in OpenVINO (CPU, f32) against PyTorch.  Returns ``{"path", "rel_err"}``."""
    import copy
    import tempfile
    from pathlib import Path

    try:
        import openvino as ov
    except ImportError as err:  # optional dependency
        raise ImportError("the openvino format needs OpenVINO: pip install 'structconv[export]'") from err
    from .layers import set_sum_pool_backends

    lowered = copy.deepcopy(model).eval()
    set_sum_pool_backends(lowered, channel="conv")
    path = Path(path)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(lowered, example_input, onnx_path, opset=opset)
        converted = ov.convert_model(str(onnx_path))
        staged = Path(tmp) / path.name
        ov.save_model(converted, str(staged), compress_to_fp16=False)  # keep it exact: f32 weights
        os.replace(staged.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(staged, path)  # the .xml last: a complete pair, or the old one
    entry = {"path": str(path)}
    if check is not None:
        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        got = torch.from_numpy(compiled(check.numpy())[0])
        with torch.no_grad():
            err = relative_error(got, model(check))
        if not err <= rtol:
            raise ValueError(f"OpenVINO output differs from PyTorch: relative error {err:.2e} > {rtol:g}")
        entry["rel_err"] = err
    return entry


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
    err = relative_error(y_ort, y)
    if not err <= rtol:
        raise ValueError(f"ONNX Runtime output differs from PyTorch: relative error {err:.2e} > rtol={rtol:g} ({path})")
    return err


def onnx_opset(path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx"))


# ------------------------------------------------------------------------------------------
# whole export
# ------------------------------------------------------------------------------------------
def checkpoint_input_size(ckpt: dict, default: tuple[int, int, int]) -> tuple[int, int, int]:
    """``(C, H, W)`` the model in ``ckpt`` was trained on: recorded by ``structconv train``
    (``model_args['input_size']``), else derived from its training dataset and options, else
    ``default`` with the recorded input channels."""
    from .data import NATIVE, input_size

    model_args = ckpt.get("model") or {}
    if model_args.get("input_size"):
        return tuple(int(v) for v in model_args["input_size"])
    trained = ckpt.get("args") or {}
    if trained.get("dataset") in NATIVE:
        return input_size(
            trained["dataset"],
            image_size=trained.get("image_size"),
            in_chans=trained.get("in_chans") or model_args.get("in_chans"),
        )
    chans = model_args.get("in_chans") or default[0]
    return (int(chans), default[1], default[2])


def export_model(
    model: nn.Module,
    input_size,
    output_dir,
    *,
    name: str,
    formats=FORMATS,
    batch: int = 1,
    opset: int = 17,
    dynamo: bool = False,
    fold_bn: bool = True,
    autotune: bool = False,
    threads: int | None = None,
    verify: bool = True,
    rtol: float = 1e-4,
    overwrite: bool = False,
) -> dict:
    """Export ``model`` (structured or decomposed) for inputs ``(batch, *input_size)`` into
    ``output_dir/name.{onnx,pt}``; with ``verify`` ONNX Runtime and the TorchScript module must
    match PyTorch within ``rtol``.  Existing files are replaced only with ``overwrite``.
    Returns a summary (paths, exporter, opset, errors)."""
    formats = v.items(formats, "formats", each=lambda f, n: v.choice(f, n, FORMATS))
    v.integer(batch, "batch", low=1)
    size = tuple(input_size)
    if len(size) != 3 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in size):
        raise v.ArgumentError("{input_size}={value} must be three positive ints (C, H, W)", value=repr(size))
    v.integer(opset, "opset", low=17)
    v.number(rtol, "rtol", low=0.0, low_open=True)
    v.text(name, "name")
    out = v.path(output_dir, "output_dir")
    if out.exists() and not out.is_dir():
        raise v.ArgumentError("{output_dir}={path} is a file, not a directory", path=repr(str(out)))
    paths = {"onnx": out / f"{name}.onnx", "torchscript": out / f"{name}.pt", "openvino": out / f"{name}.xml"}
    taken = [str(paths[f]) for f in formats if paths[f].exists()]
    if taken and not overwrite:
        raise v.ArgumentError(
            "{files} already exist(s); pass {overwrite} to replace, or choose another {output_dir} or {name}",
            files=", ".join(taken),
        )
    model = prepare_for_export(model, fold_bn=fold_bn)
    chans, h, w = size
    x = torch.randn(batch, chans, h, w)
    report = None
    if autotune:
        from .autotune import optimize

        model, report = optimize(model, x, threads=threads)
    try:
        with torch.no_grad():
            model(x)
    except (RuntimeError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise v.ArgumentError(
            "the model cannot run on inputs of shape {shape} ({why}); check {input_size}",
            shape=(batch, *size),
            why=first,
        ) from None
    out.mkdir(parents=True, exist_ok=True)
    summary = {"model": name, "input": [batch, chans, h, w], "files": {}}
    check = torch.randn(max(batch, 2), chans, h, w)
    if "torchscript" in formats:
        traced = export_torchscript(model, x, paths["torchscript"])
        entry = {"path": str(paths["torchscript"])}
        if verify:
            with torch.no_grad():
                err = relative_error(traced(check), model(check))
            if not err <= rtol:
                raise ValueError(f"TorchScript output differs from PyTorch: relative error {err:.2e} > {rtol:g}")
            entry["rel_err"] = err
        summary["files"]["torchscript"] = entry
    if "onnx" in formats:
        exporter = export_onnx(model, x, paths["onnx"], opset=opset, dynamo=dynamo)
        entry = {"path": str(paths["onnx"]), "exporter": exporter, "opset": onnx_opset(paths["onnx"])}
        if verify:
            entry["rel_err"] = verify_onnx(paths["onnx"], model, check, rtol=rtol)
        summary["files"]["onnx"] = entry
    if "openvino" in formats:
        summary["files"]["openvino"] = export_openvino(
            model, x, paths["openvino"], opset=opset, check=check if verify else None, rtol=rtol
        )
    if report is not None:
        summary["autotune_dense_layers"] = report.dense_layers
        summary["_report"] = report
    return summary
