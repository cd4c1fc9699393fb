"""Per-runtime deployment (structconv.runtimes, structconv.deployment): the deployed artifact
computes the structured model's function in every runtime and precision, within the stated
tolerance; decisions are saved; refusals are one line.  No wall-clock time is asserted."""

import json

import pytest
import torch
from torch import nn

import structconv as sc
from structconv import runtimes
from structconv.deployment import TOLERANCE, deploy
from structconv.export import prepare_for_export
from structconv.reporting import relative_error


def _tiny(seed=0):
    torch.manual_seed(seed)
    dense = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, stride=2),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    with torch.no_grad():
        for m in dense.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return sc.structurize(dense.eval(), 2.0).eval()


def _precisions(rt):
    flags = runtimes.cpu_flags()
    out = []
    for p in rt.precisions:
        need = runtimes._ISA.get(p)
        if need is None or not flags or flags & set(need):
            out.append(p)
    return out


CASES = [(name, p) for name, rt in runtimes.RUNTIMES.items() if rt.available() for p in _precisions(rt)]


def test_dev_install_has_the_deployment_runtimes():
    # the dev extra installs them: a missing one must fail here, not skip silently below
    for name in ("eager", "onnxruntime", "openvino", "compile"):
        assert runtimes.RUNTIMES[name].available(), name


@pytest.mark.parametrize("runtime,precision", [c for c in CASES if c[0] != "compile"])
def test_deployed_artifact_matches_pytorch_within_the_stated_tolerance(runtime, precision, tmp_path):
    model = _tiny()
    x = torch.randn(4, 3, 16, 16)
    calibration = [torch.randn(8, 3, 16, 16) for _ in range(2)]
    d = deploy(
        model,
        x,
        runtime=runtime,
        precision=precision,
        threads=1,
        rounds=1,
        whole_model_rounds=1,
        calibration=calibration if precision == "int8" else None,
    )
    # whatever was chosen per layer, the PyTorch form is the structured model's function (float64)
    ref, got = prepare_for_export(model).double(), d.model.double()
    xd = x.double()
    with torch.no_grad():
        assert relative_error(got(xd), ref(xd)) < 1e-6  # recomposed kernels are rounded to float32 once
    d.model.float()
    tol = TOLERANCE[precision]
    if tol is not None:
        assert d.rel_error <= tol
    else:  # int8 changes the function: bounded, not exact
        assert d.rel_error < 0.25
    dense = d.dense_model().double()
    assert not any(isinstance(m, sc.DecomposedLayer) for m in dense.modules())
    with torch.no_grad():  # the reference to time against is the same function, every layer dense
        assert relative_error(dense(xd), ref(xd)) < 1e-6
    d.model.float()
    files = d.save(tmp_path, "m")
    assert all(__import__("pathlib").Path(f).stat().st_size > 0 for f in files["artifact"] + files["dense"])
    saved = json.loads(open(files["decisions"]).read())
    assert saved["runtime"] == runtime and saved["precision"] == precision
    assert {entry["name"] for entry in saved["layers"]} == {
        n for n, m in d.model.named_modules() if n in {e.name for e in d.layers}
    }
    assert "Deployment for" in open(files["report"]).read()
    with pytest.raises(ValueError, match="already exist"):
        d.save(tmp_path, "m")


def test_default_precision_is_what_the_runtime_runs_unasked():
    import openvino as ov

    hint = str(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))
    assert runtimes.default_precision("openvino") == ("bf16" if "bf" in hint else "fp32")
    assert runtimes.default_precision("onnxruntime") == "fp32"
    for name in runtimes.RUNTIMES:
        assert runtimes.default_precision(name) in runtimes.RUNTIMES[name].precisions


def test_whole_model_check_never_ships_a_model_measured_slower(monkeypatch):
    # a runtime whose decomposed form is made slow on purpose must ship all-dense
    import time

    from structconv.layers import DecomposedLayer

    def slow_build(model, example, precision, threads, calibration=None):
        slow = any(isinstance(m, DecomposedLayer) for m in model.modules())

        def run(x):
            if slow:
                time.sleep(0.002)
            with torch.no_grad():
                return model(x)

        return run

    fake = runtimes.Runtime("slowdec", "test", ("fp32",), ("torch",), "deploy", slow_build, lambda *a: [], ".x")
    monkeypatch.setitem(runtimes.RUNTIMES, "slowdec", fake)
    d = deploy(_tiny(), torch.randn(2, 3, 16, 16), runtime="slowdec", rounds=3, whole_model_rounds=3)
    assert all(layer.choice == "dense" for layer in d.layers)
    assert not any(isinstance(m, DecomposedLayer) for m in d.model.modules())
    assert d.whole_model["choice"] == "all_dense" and d.whole_model["speedup"] == 1.0


def _requantizing_runtime(monkeypatch, slow="recomposed"):
    """A runtime in which decomposed layers round their pooled sums onto a coarse grid (the int8
    requantization, exaggerated) and recomposed layers are exact; the ``slow`` form costs 5 ms
    per layer.  Returns the list of models it built."""
    import time

    from structconv.layers import DecomposedConvNd, DecomposedLayer

    def coarse(module, args, out):
        step = 0.5 * out.abs().amax()
        return torch.round(out / step) * step

    built = []

    def build(model, example, precision, threads, calibration=None):
        built.append(model)
        n_decomposed = 0
        for m in model.modules():
            if isinstance(m, DecomposedConvNd):
                m.pool.register_forward_hook(coarse)
            n_decomposed += isinstance(m, DecomposedLayer)
        n_slow = max(0, 3 - n_decomposed) if slow == "recomposed" else n_decomposed  # of the 3 layers

        def run(x):
            time.sleep(0.005 * n_slow)
            with torch.no_grad():
                return model(x)

        return run

    fake = runtimes.Runtime("requant", "test", ("int8",), ("torch",), "deploy", build, lambda *a: [], ".x")
    monkeypatch.setitem(runtimes.RUNTIMES, "requant", fake)
    return built


def _discriminating(seed=0):
    """A structured model whose predictions vary with the input (no global pooling before the
    head, unlike ``_tiny``): accuracy can then be lost."""
    torch.manual_seed(seed)
    dense = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, stride=2), nn.Flatten(),
        nn.Linear(1024, 10),
    )  # fmt: skip
    return sc.structurize(dense.eval(), 2.0).eval()


def _self_labelled(model, n=96, batch=32, seed=1):
    """Inputs labelled by ``model``'s own float32 predictions: its reference accuracy is 100 %."""
    torch.manual_seed(seed)
    images = torch.randn(n, 3, 16, 16)
    with torch.no_grad():
        labels = prepare_for_export(model)(images).argmax(1)
    return [(images[i : i + batch], labels[i : i + batch]) for i in range(0, n, batch)]


def test_accuracy_guard_recomposes_layers_until_the_artifact_is_within_the_allowed_drop(monkeypatch):
    _requantizing_runtime(monkeypatch)
    model = _discriminating()
    x, data = torch.randn(5, 3, 16, 16), _self_labelled(model, n=98)  # 98 = 19 batches of 5 and a rest
    # search=False: the lowering search times forms that tie here (both 0 ms), so each run would
    # adopt a coin-flip lowering whose summation order can flip a coarse prediction, and the two
    # runs compared below would not measure the same artifact.
    kw = dict(
        runtime="requant", precision="int8", threads=1, rounds=3, whole_model_rounds=3, search=False, validation=data
    )
    unguarded = deploy(model, x, **kw)
    assert unguarded.accuracy["reference"] == 100.0 and unguarded.accuracy["met"] is None
    assert unguarded.accuracy["drop"] > 5  # the coarse pooled sums cost accuracy: something to guard
    assert not unguarded.dense_layers  # and decomposed layers are faster there, so speed keeps them
    guarded = deploy(model, x, **kw, max_accuracy_drop=5.0)
    a = guarded.accuracy
    assert a["met"] and a["drop"] <= 5.0 and a["deployed"] > unguarded.accuracy["deployed"]
    reverted = [d for d in guarded.layers if d.reason == "accuracy"]
    assert reverted and all(d.choice == "dense" for d in reverted)
    assert guarded.whole_model["before_guard"]["guard"] == "ran"  # it was faster than all-dense
    assert a["steps"][0]["accuracy"] == unguarded.accuracy["deployed"]
    assert "for accuracy" in str(guarded) and "validation images" in str(guarded)
    # the recorded accuracy is the shipped artifact's, measured again here
    shipped = runtimes.RUNTIMES["requant"].build(guarded.model, x, "int8", 1)
    images = torch.cat([b[0] for b in data])
    labels = torch.cat([b[1] for b in data])
    padded = torch.cat([images, images.new_zeros(2, 3, 16, 16)])
    preds = torch.cat([shipped(padded[i : i + 5]) for i in range(0, 100, 5)])[:98].argmax(1)
    assert a["deployed"] == pytest.approx(100.0 * (preds == labels).float().mean().item())


def test_accuracy_guard_is_skipped_when_the_artifact_is_not_faster_than_all_dense(monkeypatch):
    # decomposed layers that lose accuracy and are slow too: all-dense ships whatever the guard
    # would recompose, so it must not spend its one build per group
    built = _requantizing_runtime(monkeypatch, slow="decomposed")
    model = _discriminating()
    x, data = torch.randn(5, 3, 16, 16), _self_labelled(model, n=40)
    d = deploy(
        model, x, runtime="requant", precision="int8", threads=1, rounds=3, whole_model_rounds=3,
        validation=data, max_accuracy_drop=5.0, search=False,
    )  # fmt: skip
    assert all(layer.choice == "dense" and layer.reason is None for layer in d.layers)
    assert d.whole_model["choice"] == "all_dense"
    before = d.whole_model["before_guard"]
    assert before["guard"] == "skipped" and before["per_layer_speedup"] < 1.0
    assert any("skipped" in step for step in d.accuracy["steps"])
    assert not any("recomposed_alone" in step for step in d.accuracy["steps"])
    assert d.accuracy["met"] and d.accuracy["deployed"] == 100.0  # the exact dense form ships
    assert "guard was skipped" in str(d)
    # builds: the decomposed artifact's accuracy, the speed check's two, the whole-model check's
    # one and the shipped artifact's: none per group
    assert len(built) <= 5


def test_accuracy_guard_refuses_bad_validation_in_one_line():
    model, x = _tiny(), torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="max_accuracy_drop needs validation"):
        deploy(model, x, runtime="eager", max_accuracy_drop=0.5)
    with pytest.raises(ValueError, match=r"max_accuracy_drop=-1\.0 must be a finite number >= 0"):
        deploy(model, x, runtime="eager", validation=_self_labelled(model), max_accuracy_drop=-1.0)
    with pytest.raises(ValueError, match="validation is empty"):
        deploy(model, x, runtime="eager", validation=[])
    wrong = [(torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(ValueError, match=r"validation batch 0 has inputs \(4, 3, 8, 8\).*\(N, 3, 16, 16\)"):
        deploy(model, x, runtime="eager", validation=wrong)
    with pytest.raises(ValueError, match="validation batch 0 is not an"):
        deploy(model, x, runtime="eager", validation=[torch.randn(4, 3, 16, 16)])


def test_refusals_are_one_line(monkeypatch):
    with pytest.raises(ValueError, match="runtime='tensorflow' is not one of"):
        runtimes.check_target("tensorflow", "fp32")
    with pytest.raises(ValueError, match="not offered by runtime 'eager'"):
        runtimes.check_target("eager", "int8")
    fake = runtimes.Runtime("absent", "test", ("fp32",), ("no_such_package_xyz",), "deploy", None, None, ".x")
    monkeypatch.setitem(runtimes.RUNTIMES, "absent", fake)
    with pytest.raises(runtimes.RuntimeUnavailable, match=r"pip install 'structconv\[deploy\]'"):
        runtimes.check_target("absent", "fp32")
    monkeypatch.setattr(runtimes, "cpu_flags", lambda: frozenset({"sse2", "avx2"}))
    with pytest.raises(ValueError, match="amx_bf16, avx512_bf16"):
        runtimes.check_target("openvino", "bf16")


@pytest.mark.slow
def test_export_cli_writes_the_openvino_deployment(tmp_path, capsys):
    from structconv.cli import main

    args = ["export", "--arch", "cifar_resnet20", "--struct", "A", "--runtime", "openvino", "-o", str(tmp_path)]
    assert main([*args, "--batch", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "whole model in openvino" in out or "0 layers decomposed" in out
    assert (tmp_path / "cifar_resnet20_structA.xml").exists() and (tmp_path / "cifar_resnet20_structA.bin").exists()
    decisions = json.loads((tmp_path / "cifar_resnet20_structA.decisions.json").read_text())
    # no --precision: decided in the precision a plain compile_model will run it in
    precision = decisions["precision"]
    assert precision == runtimes.default_precision("openvino")
    assert decisions["rel_error_vs_torch_fp32"] <= TOLERANCE[precision]
    import openvino as ov  # a plain OpenVINO loads the artifact on its own

    core, x = ov.Core(), torch.randn(2, 3, 32, 32).numpy()
    deployed = core.compile_model(str(tmp_path / "cifar_resnet20_structA.xml"), "CPU")(x)[0]
    dense = core.compile_model(str(tmp_path / "cifar_resnet20_structA.dense.xml"), "CPU")(x)[0]
    assert deployed.shape == (2, 10)
    assert relative_error(torch.from_numpy(deployed), torch.from_numpy(dense)) <= 2 * TOLERANCE[precision]
    assert main([*args, "--precision", "int8"]) == 2
    assert "--calibration-dataset" in capsys.readouterr().err
    assert main(args) == 2  # refused before the search: nothing is overwritten unless asked
    assert "already exist" in capsys.readouterr().err
    assert main(args[:5] + ["--precision", "bf16", "-o", str(tmp_path)]) == 2
    assert "apply to --runtime" in capsys.readouterr().err


def test_export_cli_guards_accuracy_on_held_out_training_images(tmp_path, capsys):
    from structconv.cli import main

    from ._synthetic import make_fashion_mnist

    data = make_fashion_mnist(tmp_path / "data", n_train=96, n_test=8)
    out = tmp_path / "out"
    args = ["export", "--arch", "cifar_resnet20", "--struct", "A", "--runtime", "onnxruntime", "--precision", "int8"]
    args += ["--batch", "4", "--threads", "1", "-o", str(out), "--data-path", str(data)]
    assert main([*args, "--max-accuracy-drop", "0.5"]) == 2  # no labelled images to validate on
    assert "--max-accuracy-drop needs --calibration-dataset" in capsys.readouterr().err
    args += ["--calibration-dataset", "fashion-mnist", "--calibration-images", "32", "--validation-images", "40"]
    assert main([*args, "--max-accuracy-drop", "-1"]) == 2
    assert "--max-accuracy-drop=-1 must be >= 0" in capsys.readouterr().err
    assert main([*args, "--calibration-images", "96", "--max-accuracy-drop", "1"]) == 2
    assert "no images left for validation" in capsys.readouterr().err
    assert main([*args, "--max-accuracy-drop", "100"]) == 0
    accuracy = json.loads((out / "cifar_resnet20_structA.decisions.json").read_text())["accuracy"]
    assert accuracy["images"] == 40 and accuracy["max_drop"] == 100 and accuracy["met"]
    assert 0 <= accuracy["deployed"] <= 100 and accuracy["drop"] == accuracy["reference"] - accuracy["deployed"]


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_compile_target_matches_pytorch(precision):
    model = _tiny()
    x = torch.randn(2, 3, 16, 16)
    d = deploy(model, x, runtime="compile", precision=precision, threads=1, whole_model_rounds=1)
    tol = TOLERANCE[precision]
    assert d.rel_error <= (tol if tol is not None else 0.25)


def test_openvino_int8_runs_the_sum_pool_exactly_in_the_integer_domain():
    # NNCF quantizes the pool's input like any conv input and its 0/1 kernel to int8; the pool
    # stays exact in the integer domain when every nonzero weight of an output channel is the
    # same integer: then it is an int32 sum of the int8 inputs times one per-channel scale.
    # (NNCF stores 1 as 126 x 1/127: the scale is 0.992, measured here, not assumed to be 1.)
    import numpy as np

    from structconv.layers import set_sum_pool_backends

    model = prepare_for_export(sc.decompose(_tiny()).eval())
    set_sum_pool_backends(model, channel="conv", spatial="conv")
    calibration = [torch.randn(8, 3, 16, 16) for _ in range(3)]
    quantized = runtimes._ov_model(model, calibration[0], "int8", calibration)
    pools = [
        op
        for op in quantized.get_ordered_ops()
        if "/pool/" in op.get_friendly_name() and op.get_type_name() in ("Convolution", "GroupConvolution")
    ]
    assert pools, "no sum-pool convolutions in the exported graph"
    for op in pools:
        assert op.input_value(0).get_node().get_type_name() == "FakeQuantize", op.get_friendly_name()
        scale = op.input_value(1).get_node()  # Multiply(Convert(int8 Constant), scale)
        assert scale.get_type_name() == "Multiply", op.get_friendly_name()
        values = [scale.input_value(i).get_node() for i in range(2)]
        convert = next(n for n in values if n.get_type_name() == "Convert")
        factor = next(n for n in values if n.get_type_name() == "Constant").get_data()
        int8 = convert.input_value(0).get_node().get_data()
        assert int8.dtype == np.int8
        weights = int8.astype(np.int64).reshape(int8.shape[0], -1)
        assert weights.min() >= 0 and weights.max() > 0, op.get_friendly_name()
        for row in weights:  # one integer per output channel: an exact int32 box sum
            assert len(set(row[row != 0].tolist())) == 1, op.get_friendly_name()
        dequantized = (int8.astype(np.float64) * factor.astype(np.float64)).reshape(int8.shape[0], -1)
        np.testing.assert_allclose(dequantized.max(axis=1), 1.0, rtol=0.01)


@pytest.mark.slow
def test_bench_cli_times_the_deployment_in_the_runtime(capsys):
    from structconv.cli import main

    args = ["bench", "--arch", "cifar_resnet20", "--struct", "A", "--batch", "2", "--threads", "1", "--repeats", "3"]
    assert main([*args, "--runtime", "onnxruntime", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["batch"], r["precision"]) for r in rows] == [(2, "fp32")]
    w = rows[0]["whole_model"]
    assert w["speedup"] >= 1.0 or w["choice"] == "per_layer"  # all-dense ships unless per-layer was faster
    assert rows[0]["rel_error_vs_torch_fp32"] <= TOLERANCE["fp32"]
    assert main([*args, "--runtime", "onnxruntime", "--precision", "bf16"]) == 2
    assert "not offered by runtime 'onnxruntime'" in capsys.readouterr().err
    assert main([*args, "--precision", "int8"]) == 2
    assert "applies to --runtime" in capsys.readouterr().err
    assert main([*args, "--runtime", "onnxruntime", "--plan", "speed"]) == 2  # refused, not silently ignored
    assert "--plan" in capsys.readouterr().err
