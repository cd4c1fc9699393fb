"""Runtime targets: where a model is deployed, and in which precision (``structconv deploy``).

A :class:`Runtime` turns an ``nn.Module`` and an example input into a callable that runs it in
that runtime at a precision (``fp32``, ``bf16``, ``int8``), and writes the deployable artifact.
:mod:`structconv.deployment` uses the same callables to measure each layer where it will run.

The table :data:`RUNTIMES` is the one registry; a new runtime is one :func:`register_runtime`
call.  Each wraps the maintained tool and adds only what structconv needs:

* ``eager``: PyTorch as is (bf16: the model cast to ``torch.bfloat16``);
* ``compile``: ``torch.compile`` (Inductor, frozen weights); int8 through PyTorch's PT2E flow
  with torchao's ``X86InductorQuantizer``;
* ``onnxruntime``: the ONNX export in ONNX Runtime's CPU provider; int8 through
  ``onnxruntime.quantization.quantize_static`` (QDQ, per-channel weights);
* ``openvino``: the ONNX export read by ``openvino.convert_model``, compiled for the CPU with
  ``INFERENCE_PRECISION_HINT``; int8 through ``nncf.quantize`` (post-training, on calibration data);
* ``executorch``: ``torch.export`` lowered to the XNNPACK delegate, fp32.

Unknown runtimes, runtimes whose package is missing and precisions this CPU cannot run are
refused with one line before any work starts (:func:`check_target`).
"""

from __future__ import annotations

import copy
import importlib.util
import os
import tempfile
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "Runtime",
    "RUNTIMES",
    "PRECISIONS",
    "register_runtime",
    "get_runtime",
    "check_target",
    "compile_openvino",
    "cpu_flags",
    "RuntimeUnavailable",
]

PRECISIONS = ("fp32", "bf16", "int8")

#: precision -> CPU flags of which one must be present (``/proc/cpuinfo``)
_ISA = {
    "bf16": ("amx_bf16", "avx512_bf16"),
    "int8": ("amx_int8", "avx512_vnni", "avx_vnni"),
}


class RuntimeUnavailable(ImportError):
    """The runtime's package is not installed (the message names the extra to install)."""


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's ISA flags from ``/proc/cpuinfo`` (empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


Compiled = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Runtime:
    """One deployment runtime.

    ``build(model, example, precision, threads, calibration)`` returns a callable that runs
    ``model`` in the runtime on a CPU tensor and returns a float32 CPU tensor; ``calibration``
    (a list of input tensors) is used by int8 only.  ``save(model, example, precision, path,
    calibration)`` writes the artifact and returns the paths written.  ``lowerings`` says which
    sum-pool lowerings are worth measuring there: ``"all"`` (every applicable backend) or
    ``"auto"`` (the eager default only, where building one variant costs seconds).
    """

    name: str
    summary: str
    precisions: tuple[str, ...]
    packages: tuple[str, ...]
    extra: str
    build: Callable[..., Compiled]
    save: Callable[..., list[str]]
    suffix: str
    lowerings: str = "all"

    def available(self) -> bool:
        return all(importlib.util.find_spec(p) is not None for p in self.packages)


RUNTIMES: dict[str, Runtime] = {}


def register_runtime(runtime: Runtime) -> Runtime:
    """Add ``runtime`` to :data:`RUNTIMES` (its name must be new); returns it."""
    if runtime.name in RUNTIMES:
        raise ValueError(f"runtime {runtime.name!r} is already registered")
    unknown = set(runtime.precisions) - set(PRECISIONS)
    if unknown:
        raise ValueError(f"runtime {runtime.name!r}: unknown precisions {sorted(unknown)}; use {PRECISIONS}")
    RUNTIMES[runtime.name] = runtime
    return runtime


def get_runtime(name: str) -> Runtime:
    if name not in RUNTIMES:
        raise ValueError(f"runtime={name!r} is not one of {', '.join(RUNTIMES)}")
    return RUNTIMES[name]


def default_precision(runtime: str) -> str:
    """The precision ``runtime`` runs a model in when nobody asks for one: OpenVINO's CPU plugin
    picks bf16 on CPUs with AMX (its ``INFERENCE_PRECISION_HINT`` default), so a plain
    ``ov.Core().compile_model(xml)`` runs the artifact in bf16 there; every other runtime fp32."""
    rt = get_runtime(runtime)
    if runtime == "openvino" and rt.available():
        import openvino as ov

        hint = str(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))
        return "bf16" if "bf16" in hint or "bfloat16" in hint else "fp32"
    return "fp32"


def check_target(runtime: str, precision: str) -> Runtime:
    """The :class:`Runtime` for ``runtime`` after checking that it is installed and that this
    CPU runs ``precision`` there; one-line ``ValueError`` / :class:`RuntimeUnavailable` otherwise."""
    rt = get_runtime(runtime)
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision not in rt.precisions:
        raise ValueError(
            f"precision={precision!r} is not offered by runtime {runtime!r} (it runs {', '.join(rt.precisions)})"
        )
    if not rt.available():
        missing = [p for p in rt.packages if importlib.util.find_spec(p) is None]
        raise RuntimeUnavailable(
            f"runtime {runtime!r} needs the package(s) {', '.join(missing)}: pip install 'structconv[{rt.extra}]'"
        )
    flags = cpu_flags()
    needed = _ISA.get(precision)
    if needed and flags and not flags & set(needed):
        raise ValueError(
            f"precision={precision!r} needs one of the CPU flags {', '.join(needed)}, which this CPU "
            f"({cpu_name()}) lacks"
        )
    return rt


# ------------------------------------------------------------------------------------------
# shared pieces
# ------------------------------------------------------------------------------------------
def _to_numpy(x: Tensor) -> np.ndarray:
    return x.detach().cpu().float().numpy()


def _export_onnx(model: nn.Module, example: Tensor, path: Path) -> Path:
    from .export import export_onnx

    export_onnx(model, example, path)
    return path


class _OnnxFile:
    """A temporary ONNX export of ``model`` (deleted with the object)."""

    def __init__(self, model: nn.Module, example: Tensor):
        self._dir = tempfile.TemporaryDirectory(prefix="structconv-rt-")
        self.path = _export_onnx(model, example, Path(self._dir.name) / "model.onnx")


def _calibration_arrays(calibration: Sequence[Tensor] | None, example: Tensor) -> list[np.ndarray]:
    items = list(calibration) if calibration else [example]
    return [_to_numpy(x) for x in items]


# ------------------------------------------------------------------------------------------
# eager and torch.compile
# ------------------------------------------------------------------------------------------
def _cast(model: nn.Module, precision: str) -> tuple[nn.Module, torch.dtype]:
    model = copy.deepcopy(model).eval()
    if precision == "bf16":
        return model.to(torch.bfloat16), torch.bfloat16
    return model, torch.float32


def _build_eager(model, example, precision, threads, calibration=None) -> Compiled:
    m, dtype = _cast(model, precision)

    def run(x: Tensor) -> Tensor:
        with torch.inference_mode():
            return m(x.to(dtype)).float()

    return run


def _pt2e_int8(model: nn.Module, example: Tensor, calibration) -> nn.Module:
    """PyTorch's PT2E post-training quantization for x86 (torchao's X86InductorQuantizer):
    int8 weights (per channel) and activations, int32 accumulation in oneDNN."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    # strict (TorchDynamo) export: it records each call's source, so a ReLU module called twice
    # (every torchvision/CIFAR BasicBlock) stays two partitions; torch 2.14's non-strict export
    # groups them by module name and X86InductorQuantizer raises "more than one output node"
    exported = torch.export.export(copy.deepcopy(model).eval(), (example,), strict=True).module()
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for x in _rebatch(calibration or [example], example.shape[0]):
            prepared(x)
    return convert_pt2e(prepared)


def _rebatch(batches: Sequence[Tensor], size: int) -> list[Tensor]:
    """The calibration images in batches of ``size``: the exported graph is specialized to the
    example's batch size, so a last, smaller batch would fail its shape guard."""
    images = torch.cat(list(batches))
    if len(images) < size:
        images = images.repeat((size + len(images) - 1) // len(images), *[1] * (images.dim() - 1))
    return list(images[: len(images) - len(images) % size].split(size))


def _build_compile(model, example, precision, threads, calibration=None) -> Compiled:
    if precision == "int8":
        from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86

        # torchao's own x86 lowering: Inductor's freezing passes, which fuse each
        # dequantize-conv-quantize into one oneDNN int8 conv (with its ReLU / add).
        # torch.compile(freezing=True) of the same graph raises UnsupportedOperatorException
        # (onednn.qconv_prepack) with torch 2.14 + torchao 0.18, and Inductor refuses the lowered
        # graph ("packed_weight must be a graph constant"), so it runs as lowered.
        q = _pt2e_int8(model, example, calibration)
        with torch.no_grad():
            compiled = lower_pt2e_quantized_to_x86(q, (example,))
        dtype = torch.float32
    else:
        m, dtype = _cast(model, precision)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = torch.compile(m, options={"freezing": True}, dynamic=False)

    def run(x: Tensor) -> Tensor:
        with torch.no_grad():
            return compiled(x.to(dtype)).float()

    run(example)  # compile now, not inside the first timed call
    return run


def _save_torch_export(model, example, precision, path, calibration=None) -> list[str]:
    from ._io import atomic_write

    if precision == "int8":
        m, dtype = _pt2e_int8(model, example, calibration), torch.float32
    else:
        m, dtype = _cast(model, precision)
    program = torch.export.export(m, (example.to(dtype),))
    atomic_write(path, lambda f: torch.export.save(program, f), "wb")
    return [str(path)]


register_runtime(
    Runtime(
        "eager",
        "PyTorch eager mode",
        ("fp32", "bf16"),
        ("torch",),
        "export",
        _build_eager,
        _save_torch_export,
        ".pt2",
    )
)
register_runtime(
    Runtime(
        "compile",
        "torch.compile (Inductor, frozen weights); int8 by PT2E + X86InductorQuantizer, lowered to oneDNN",
        ("fp32", "bf16", "int8"),
        ("torch", "torchao"),
        "deploy",
        _build_compile,
        _save_torch_export,
        ".pt2",
        lowerings="auto",
    )
)


# ------------------------------------------------------------------------------------------
# ONNX Runtime
# ------------------------------------------------------------------------------------------
def _ort_quantize(src: Path, dst: Path, example: Tensor, calibration) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    arrays = _calibration_arrays(calibration, example)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(arrays)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {"x": x}

    pre = dst.with_name(dst.stem + "_pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    quantize_static(
        str(pre),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    pre.unlink(missing_ok=True)


def _ort_session(path: Path, threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _build_ort(model, example, precision, threads, calibration=None) -> Compiled:
    onnx = _OnnxFile(model, example)
    path = onnx.path
    if precision == "int8":
        path = path.with_name("model_int8.onnx")
        _ort_quantize(onnx.path, path, example, calibration)
    sess = _ort_session(path, threads)

    def run(x: Tensor, _keep=onnx) -> Tensor:
        return torch.from_numpy(sess.run(None, {"x": _to_numpy(x)})[0])

    return run


def _save_ort(model, example, precision, path, calibration=None) -> list[str]:
    path = Path(path)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        staged = _export_onnx(model, example, Path(tmp) / "model.onnx")
        if precision == "int8":
            quantized = Path(tmp) / "model_int8.onnx"
            _ort_quantize(staged, quantized, example, calibration)
            staged = quantized
        os.replace(staged, path)
    return [str(path)]


register_runtime(
    Runtime(
        "onnxruntime",
        "ONNX Runtime, CPU execution provider; int8 by quantize_static (QDQ)",
        ("fp32", "int8"),
        ("onnxruntime", "onnx"),
        "export",
        _build_ort,
        _save_ort,
        ".onnx",
    )
)


# ------------------------------------------------------------------------------------------
# OpenVINO
# ------------------------------------------------------------------------------------------
_OV_HINT = {"fp32": "f32", "bf16": "bf16"}


def _ov_model(model: nn.Module, example: Tensor, precision: str, calibration):
    """``openvino.Model`` of ``model`` through the ONNX export (OpenVINO's PyTorch frontend
    refuses ``avg_pool`` with ``divisor_override``); int8 quantized by NNCF."""
    import openvino as ov

    onnx = _OnnxFile(model, example)
    converted = ov.convert_model(str(onnx.path))
    if precision == "int8":
        import nncf

        arrays = _calibration_arrays(calibration, example)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted = nncf.quantize(
                converted, nncf.Dataset(arrays), subset_size=len(arrays), fast_bias_correction=True
            )
    return converted


def _ov_config(precision: str, threads: int | None) -> dict:
    config = {"PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    if precision in _OV_HINT:
        config["INFERENCE_PRECISION_HINT"] = _OV_HINT[precision]
    return config  # int8: the quantized graph decides; the rest runs in the CPU's default


def compile_openvino(model: nn.Module, example: Tensor, precision: str, threads: int | None = None,
                     calibration: Sequence[Tensor] | None = None):  # fmt: skip
    """The ``openvino.CompiledModel`` the ``openvino`` runtime runs for ``model``: exported
    through ONNX, NNCF-quantized for int8 (on ``calibration``, else ``example``), compiled for
    the CPU with ``threads`` and ``precision``'s inference hint.  Public so that a study of what
    OpenVINO made of the model (its executed graph, its profiler) reads the deployed form."""
    import openvino as ov

    return ov.Core().compile_model(
        _ov_model(model, example, precision, calibration), "CPU", _ov_config(precision, threads)
    )


def _build_openvino(model, example, precision, threads, calibration=None) -> Compiled:
    request = compile_openvino(model, example, precision, threads, calibration).create_infer_request()

    def run(x: Tensor) -> Tensor:
        return torch.from_numpy(np.array(request.infer({0: _to_numpy(x)})[0]))

    return run


def _save_openvino(model, example, precision, path, calibration=None) -> list[str]:
    """IR ``.xml`` + ``.bin``; fp32 weights for fp32 and bf16 (OpenVINO converts at compile
    time from ``INFERENCE_PRECISION_HINT``, recorded in the decisions file), int8 weights for int8."""
    import openvino as ov

    path = Path(path)
    converted = _ov_model(model, example, precision, calibration)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        ov.save_model(converted, str(staged), compress_to_fp16=False)
        os.replace(staged.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(staged, path)  # the .xml last: a complete pair, or the old one
    return [str(path), str(path.with_suffix(".bin"))]


register_runtime(
    Runtime(
        "openvino",
        "OpenVINO CPU plugin; bf16 by INFERENCE_PRECISION_HINT, int8 by NNCF post-training quantization",
        ("fp32", "bf16", "int8"),
        ("openvino", "nncf", "onnx"),
        "deploy",
        _build_openvino,
        _save_openvino,
        ".xml",
    )
)


# ------------------------------------------------------------------------------------------
# ExecuTorch (XNNPACK)
# ------------------------------------------------------------------------------------------
def _executorch_program(model: nn.Module, example: Tensor):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    exported = torch.export.export(copy.deepcopy(model).eval(), (example,))
    return to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()


def _build_executorch(model, example, precision, threads, calibration=None) -> Compiled:
    from executorch.runtime import Runtime as EtRuntime

    # the loaded program points into ``buffer`` without owning it: keep both alive with ``run``
    buffer = _executorch_program(model, example).buffer
    program = EtRuntime.get().load_program(buffer)
    method = program.load_method("forward")

    def run(x: Tensor, _keep=(buffer, program)) -> Tensor:
        return method.execute([x.float().contiguous()])[0]

    return run


def _save_executorch(model, example, precision, path, calibration=None) -> list[str]:
    from ._io import atomic_write

    buffer = _executorch_program(model, example).buffer
    atomic_write(path, lambda f: f.write(buffer), "wb")
    return [str(path)]


register_runtime(
    Runtime(
        "executorch",
        "ExecuTorch with the XNNPACK delegate (fixed input shape)",
        ("fp32",),
        ("executorch",),
        "deploy",
        _build_executorch,
        _save_executorch,
        ".pte",
    )
)
