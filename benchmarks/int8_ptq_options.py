"""NNCF's own options against the decomposed model's int8 drop (issue 17): full bias correction,
the mixed (asymmetric-activation) preset, and ``quantize_with_accuracy_control``, which returns
the most sensitive quantizers to float until a validation metric is within ``--max-drop``.

Struct-A is built from each converged ResNet20 teacher by the recipe of
``benchmarks/int8_accuracy.py`` (the same steps, seeds, calibration images and pinned
ones-convolution sum-pools), so the ``default`` row reproduces that study's OpenVINO int8 column.
Accuracy control validates on ``--validation-images`` training images disjoint from the
calibration images (never on the test set); the test accuracy is reported for every variant.
``gptq`` rounds the weights first with ``structconv.quantization.gptq_int8_weights`` on the
calibration images, then runs NNCF's default (``gptq_<variant>``: that variant).
``pools_float`` leaves the sum-pool convolutions out of quantization (NNCF ``IgnoredScope``), so
the pooled sums are quantized once, at the small convolution's input, instead of after every
pool; ``recomposed`` quantizes the same function with every layer recomposed dense (the
structured kernels as ordinary convolutions, no pooled sums to requantize): it separates what
int8 costs the structured *weights* from what it costs the decomposed *form*.
``histogram_ranges`` / ``quantile_ranges`` set NNCF's activation range estimator to its
``HISTOGRAM`` (range chosen from the histogram to minimize quantization error) or
``MEAN_QUANTILE`` (1e-4 outliers clipped) sets instead of min/max: a pooled sum of k inputs has
a range about k times its input's, so min/max ranges make its int8 step about k times coarser.
Each int8 model is timed against the int8 dense model and the fp32-IR model of the same
network, compiled in OpenVINO (interleaved medians, fixed threads).

    python benchmarks/int8_ptq_options.py --seeds 0,1,2 --threads 1 \
        --json benchmarks/results/runtimes/int8_ptq_options.json
"""

from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

# one recipe, one place; run from benchmarks/
from int8_accuracy import calibration_and_validation, struct_a_from_teacher
from torch.utils.data import DataLoader

from structconv._io import atomic_write_json
from structconv.autotune import tunable
from structconv.data import build_datasets
from structconv.export import export_onnx
from structconv.quantization import gptq_int8_weights
from structconv.runtimes import cpu_name

NNCF_VARIANTS = (
    "default", "full_bias_correction", "mixed_preset", "accuracy_control", "accuracy_control_mixed",
    "pools_float", "recomposed", "histogram_ranges", "quantile_ranges",
)  # fmt: skip
# gptq_<nncf variant>: the weights rounded by gptq_int8_weights first, then that NNCF variant
VARIANTS = (*NNCF_VARIANTS, "gptq", *(f"gptq_{name}" for name in NNCF_VARIANTS[1:]))


def recomposed(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with every decomposed layer replaced by its recomposed dense layer."""
    out = copy.deepcopy(model)
    for name in [n for n, m in out.named_modules() if tunable(m) and n]:
        out.set_submodule(name, out.get_submodule(name).recompose().eval())
    return out


def ov_accuracy(compiled, loader) -> float:
    request = compiled.create_infer_request()
    correct = total = 0
    for images, targets in loader:
        logits = np.array(request.infer({0: images.numpy()})[0])
        correct += int((logits.argmax(1) == targets.numpy()).sum())
        total += targets.numel()
    return 100.0 * correct / total


def quantize(ov_model, variant: str, calib: list[np.ndarray], validation, max_drop: float):
    """``variant``'s NNCF int8 model of ``ov_model``."""
    import nncf
    import openvino as ov

    variant = "default" if variant == "gptq" else variant.removeprefix("gptq_")
    dataset = nncf.Dataset(calib)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if variant in ("default", "recomposed"):  # what structconv.runtimes ships
            return nncf.quantize(ov_model, dataset, subset_size=len(calib), fast_bias_correction=True)
        if variant == "pools_float":  # the pools' ones-convolutions are named <layer>/pool/Conv*
            scope = nncf.IgnoredScope(patterns=[".*/pool/Conv.*"], validate=False)
            return nncf.quantize(
                ov_model, dataset, subset_size=len(calib), fast_bias_correction=True, ignored_scope=scope
            )
        if variant in ("histogram_ranges", "quantile_ranges"):
            from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
            from nncf.quantization.range_estimator import RangeEstimatorParametersSet as Ranges

            ranges = Ranges.HISTOGRAM if variant == "histogram_ranges" else Ranges.MEAN_QUANTILE
            return nncf.quantize(
                ov_model, dataset, subset_size=len(calib), fast_bias_correction=True,
                advanced_parameters=AdvancedQuantizationParameters(activations_range_estimator_params=ranges),
            )  # fmt: skip
        if variant == "full_bias_correction":
            return nncf.quantize(ov_model, dataset, subset_size=len(calib), fast_bias_correction=False)
        if variant == "mixed_preset":
            return nncf.quantize(ov_model, dataset, subset_size=len(calib), preset=nncf.QuantizationPreset.MIXED)
        if variant.startswith("accuracy_control"):
            preset = nncf.QuantizationPreset.MIXED if variant.endswith("_mixed") else None

            def validate(compiled, data) -> float:  # NNCF's OpenVINO backend passes a CompiledModel
                if isinstance(compiled, ov.Model):
                    compiled = ov.Core().compile_model(compiled, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
                request = compiled.create_infer_request()
                correct = total = 0
                for images, targets in data:
                    logits = np.array(request.infer({0: images})[0])
                    correct += int((logits.argmax(1) == targets).sum())
                    total += len(targets)
                return 100.0 * correct / total

            return nncf.quantize_with_accuracy_control(
                ov_model, dataset, nncf.Dataset(validation), validate, max_drop=max_drop,
                subset_size=len(calib), preset=preset,
            )  # fmt: skip
    raise ValueError(f"unknown variant {variant!r}")


def time_compiled(models: dict, example: np.ndarray, rounds: int, calls: int = 5) -> dict[str, float]:
    """Median ms per call of each compiled model, interleaved round by round, after a warm-up."""
    requests = {name: m.create_infer_request() for name, m in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(rounds + 2):
        for name, request in requests.items():
            tic = time.perf_counter()
            for _ in range(calls):
                request.infer({0: example})
            if r >= 2:
                times[name].append(1e3 * (time.perf_counter() - tic) / calls)
    return {name: statistics.median(t) for name, t in times.items()}


def ov_config(precision: str, threads: int) -> dict:
    """What ``structconv.deploy`` compiles with: latency hint, fixed threads; int8 as quantized."""
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    return config if precision == "int8" else {**config, "INFERENCE_PRECISION_HINT": "f32"}


def count_fake_quantize(ov_model) -> int:
    return sum(op.get_type_name() == "FakeQuantize" for op in ov_model.get_ops())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--steps", type=int, default=140, help="fine-tune steps (1%% of the teachers' 14,040)")
    p.add_argument("--calibration-images", type=int, default=512)
    p.add_argument("--validation-images", type=int, default=2000)
    p.add_argument("--max-drop", type=float, default=0.4, help="accuracy control: points on the validation images")
    p.add_argument("--time-batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-path", default="data")
    p.add_argument("--json", required=True)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"int8_ptq_options.py: --variants {','.join(unknown)} not one of {', '.join(VARIANTS)}")
    if Path(args.json).exists() and not args.overwrite:
        raise SystemExit(f"{args.json} exists; pass --overwrite to replace it")
    import openvino as ov

    torch.set_num_threads(args.threads)
    train_ds, test_ds, info = build_datasets("fashion-mnist", args.data_path, seed=0)
    test = DataLoader(test_ds, batch_size=250)
    calib, validation = calibration_and_validation(train_ds, args.calibration_images, args.validation_images)
    calib = [x.numpy() for x in calib]  # NNCF's OpenVINO backend takes arrays
    validation = [(x.numpy(), y.numpy()) for x, y in validation]
    example = torch.from_numpy(calib[0])
    timing_input = np.ascontiguousarray(calib[0][: args.time_batch])
    core = ov.Core()
    rows = []
    tmp = tempfile.mkdtemp(prefix="int8_ptq_options-")
    for seed in args.seeds.split(","):
        dense, deployed = struct_a_from_teacher(int(seed), train_ds, info, args.steps)
        compiled, seed_rows = {}, []
        for name, model in {"dense": dense, "struct_A": deployed}.items():
            onnx = Path(tmp) / f"s{seed}_{name}.onnx"
            export_onnx(model, example, onnx)
            fp32 = ov.convert_model(str(onnx))
            compiled[f"{name}/fp32"] = core.compile_model(fp32, "CPU", ov_config("fp32", args.threads))
            row = {"seed": int(seed), "model": name, "fp32": ov_accuracy(compiled[f"{name}/fp32"], test)}
            for variant in variants if name == "struct_A" else ("default",):
                tic = time.perf_counter()
                source, form = onnx, recomposed(model) if variant.endswith("recomposed") else model
                if variant.startswith("gptq"):  # weights rounded with error compensation, then NNCF
                    form = gptq_int8_weights(form, [torch.from_numpy(c) for c in calib])
                if form is not model:
                    source = Path(tmp) / f"s{seed}_{name}_{variant}.onnx"
                    export_onnx(form, example, source)
                q = quantize(ov.convert_model(str(source)), variant, calib, validation, args.max_drop)
                row[f"{variant}_seconds"] = time.perf_counter() - tic
                row[f"{variant}_fake_quantize"] = count_fake_quantize(q)
                compiled[f"{name}/{variant}"] = core.compile_model(q, "CPU", ov_config("int8", args.threads))
                row[variant] = ov_accuracy(compiled[f"{name}/{variant}"], test)
            seed_rows.append(row)
        ms = time_compiled(compiled, timing_input, args.rounds)  # dense and struct interleaved
        for row in seed_rows:
            row["ms"] = {key.split("/")[1]: t for key, t in ms.items() if key.startswith(row["model"] + "/")}
            print(row, flush=True)
            rows.append(row)
            command = "python benchmarks/int8_ptq_options.py " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("json", "overwrite")
            )
            atomic_write_json({"command": command, "cpu": cpu_name(), "rows": rows}, args.json, indent=1)
    shutil.rmtree(tmp, ignore_errors=True)
    for name in ("dense", "struct_A"):
        sel = [r for r in rows if r["model"] == name]
        for key in ("fp32", *variants):
            vals = [r[key] for r in sel if key in r]
            if vals:
                spread = statistics.stdev(vals) if len(vals) > 1 else 0.0
                print(f"{name} {key}: {statistics.mean(vals):.2f} +- {spread:.2f} ({len(vals)} seeds)")


if __name__ == "__main__":
    main()
