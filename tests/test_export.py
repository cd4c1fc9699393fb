import json

import onnxruntime as ort  # a dev dependency: missing must fail, not skip
import pytest
import torch
from torch import nn

import structconv as sc
from structconv.deploy import fold_batchnorm
from structconv.export import export_onnx, export_torchscript, onnx_opset, prepare_for_export, verify_onnx

from .conftest import rel_err


def _run_ort(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


def _tiny_resnet():
    from structconv.models import create_model

    torch.manual_seed(0)
    model = create_model("cifar_resnet20", struct="A").eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model


def test_decomposed_resnet_exports_to_onnx_and_torchscript(tmp_path):
    model = _tiny_resnet()
    deployed = prepare_for_export(model)
    assert not any(isinstance(m, (nn.BatchNorm2d, sc.StructuredLayer)) for m in deployed.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        projected = sc.decompose(model)(x)  # same function as the deployed form
        assert rel_err(deployed(x), projected) < 1e-5
    path = tmp_path / "m.onnx"
    export_onnx(deployed, x, path)
    assert onnx_opset(path) >= 17
    # dynamic batch: another batch size runs and matches within 1e-4
    x5 = torch.randn(5, 3, 32, 32)
    assert verify_onnx(path, deployed, x5, rtol=1e-4) <= 1e-4
    traced = export_torchscript(deployed, x, tmp_path / "m.pt")
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    with torch.no_grad():
        assert rel_err(loaded(x5), deployed(x5)) < 1e-6
        assert rel_err(traced(x), deployed(x)) < 1e-6


LAYER_CONFIGS = [
    dict(cls=sc.StructuredConv2d, args=(16, 8, 3), kw=dict(stride=2, padding=1, c=8, n=3)),
    dict(cls=sc.StructuredConv2d, args=(12, 6, (3, 5)), kw=dict(padding=(1, 2), dilation=(1, 2), c=6, n=(2, 3))),
    dict(cls=sc.StructuredConv2d, args=(8, 4, 3), kw=dict(padding=1, groups=2, c=2, n=2)),
    dict(cls=sc.StructuredConv2d, args=(6, 4, 3), kw=dict(padding=1, padding_mode="reflect", c=3, n=2)),
    dict(cls=sc.StructuredConv2d, args=(6, 4, 3), kw=dict(padding=1, padding_mode="replicate", c=4, n=2)),
    dict(cls=sc.StructuredConv2d, args=(6, 4, 3), kw=dict(padding=1, padding_mode="circular", c=2, n=3)),
    dict(cls=sc.StructuredConv2d, args=(32, 16, 1), kw=dict(stride=2, c=8, n=1)),
    dict(cls=sc.StructuredConv1d, args=(10, 4, 5), kw=dict(padding=2, c=5, n=3)),
    dict(cls=sc.StructuredConv3d, args=(6, 4, 3), kw=dict(padding=1, c=3, n=2)),
    dict(cls=sc.StructuredLinear, args=(24, 7), kw=dict(r=10)),
]


@pytest.mark.parametrize("cfg", LAYER_CONFIGS, ids=lambda c: f"{c['cls'].__name__}{c['args']}{sorted(c['kw'].items())}")
def test_decomposed_layer_onnx_matches_pytorch(cfg, tmp_path):
    torch.manual_seed(0)
    layer = cfg["cls"](*cfg["args"], **cfg["kw"]).project_()
    dec = layer.decompose().eval()
    nd = {sc.StructuredConv1d: 1, sc.StructuredConv2d: 2, sc.StructuredConv3d: 3}.get(cfg["cls"])
    x = torch.randn(2, cfg["args"][0]) if nd is None else torch.randn(2, cfg["args"][0], *([9] * nd))
    path = tmp_path / "layer.onnx"
    export_onnx(dec, x, path)
    with torch.no_grad():
        expected = layer(x)
    assert rel_err(_run_ort(path, x), expected) <= 1e-4
    assert rel_err(_run_ort(path, x.repeat(2, *([1] * (x.dim() - 1)))), layer(x.repeat(2, *([1] * (x.dim() - 1)))).detach()) <= 1e-4


def test_verify_onnx_detects_a_mismatch(tmp_path):
    layer = sc.StructuredConv2d(8, 4, 3, padding=1, c=4, n=3).project_()
    dec = layer.decompose().eval()
    x = torch.randn(1, 8, 6, 6)
    export_onnx(dec, x, tmp_path / "a.onnx")
    with torch.no_grad():
        dec.conv.weight.mul_(2)
    with pytest.raises(ValueError, match="differs"):
        verify_onnx(tmp_path / "a.onnx", dec, x)


def test_export_rejects_old_opsets(tmp_path):
    with pytest.raises(ValueError, match="opset"):
        export_onnx(nn.Conv2d(1, 1, 1), torch.randn(1, 1, 2, 2), tmp_path / "a.onnx", opset=13)


def test_fold_batchnorm_keeps_layers_decomposed_and_function():
    model = _tiny_resnet()
    dec = sc.decompose(model).eval()
    folded = fold_batchnorm(dec)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, sc.DecomposedConv2d) for m in folded.modules()) == sum(
        isinstance(m, sc.DecomposedConv2d) for m in dec.modules()
    )
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(folded(x), dec(x)) < 1e-5
    with pytest.raises(ValueError, match="training"):
        fold_batchnorm(dec.train())


def test_export_cli_writes_verified_files(tmp_path, capsys):
    from structconv.cli import main

    status = main(["export", "--arch", "cifar_resnet20", "--struct", "A", "-o", str(tmp_path), "--json"])
    assert status == 0
    summary = json.loads(capsys.readouterr().out)
    onnx_entry, ts_entry = summary["files"]["onnx"], summary["files"]["torchscript"]
    assert onnx_entry["opset"] >= 17 and onnx_entry["rel_err"] <= 1e-4
    assert ts_entry["rel_err"] <= 1e-4
    assert (tmp_path / "cifar_resnet20_structA.onnx").exists() and (tmp_path / "cifar_resnet20_structA.pt").exists()


def test_export_cli_reports_bad_format(tmp_path, capsys):
    from structconv.cli import main

    assert main(["export", "--arch", "cifar_resnet20", "--struct", "A", "--format", "tflite", "-o", str(tmp_path)]) == 2
    assert "tflite" in capsys.readouterr().err


@pytest.mark.parametrize("spatial", ["pool", "conv"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_one_kernel_spatial_pools_export_with_the_torchscript_exporter(tmp_path, spatial, channels_last):
    """Channel GEMM then a one-kernel spatial pool (avg_pool with divisor 1, or a depthwise
    conv of ones): ONNX has no divisor and the ones kernel must be a constant of known shape."""
    torch.manual_seed(3)
    model = nn.Sequential(sc.StructuredConv2d(16, 8, 3, padding=1, c=12, n=2), nn.ReLU()).eval()
    model[0].project_()
    dec = sc.decompose(model)
    dec[0].pool.channel_method, dec[0].pool.spatial_method = "matmul", spatial
    x = torch.randn(2, 16, 9, 9)
    if channels_last:
        dec, x = dec.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    path = tmp_path / "m.onnx"
    assert export_onnx(dec, x, path, dynamic_batch=False) == "torchscript"
    assert verify_onnx(path, dec, x) < 1e-5
    assert rel_err(_run_ort(path, x), model(x)) < 1e-5


def test_exporter_diagnostics_do_not_reach_stdout(capfd):
    """``bench --json`` prints JSON on stdout; exporter messages written to fd 1 go to stderr."""
    import os

    from structconv.export import _stdout_to_stderr

    with _stdout_to_stderr():
        os.write(1, b"Torch IR graph at exception\n")
    print("after")
    out, err = capfd.readouterr()
    assert "Torch IR graph" in err and "Torch IR graph" not in out
    assert out == "after\n"


def test_conv_channel_pool_exports_as_a_convolution(tmp_path):
    """The ``conv`` channel backend (for blocked-layout runtimes) is one Conv node per channel
    pool in ONNX, no MatMul, and the same function in ONNX Runtime and OpenVINO."""
    import onnx
    import openvino as ov

    from structconv.layers import set_sum_pool_backends

    torch.manual_seed(4)
    model = nn.Sequential(sc.StructuredConv2d(16, 8, 3, padding=1, c=12, n=2), nn.ReLU()).eval()
    model[0].project_()
    dec = sc.decompose(model)
    assert set_sum_pool_backends(dec, channel="conv") == 1
    x = torch.randn(2, 16, 9, 9)
    path = tmp_path / "m.onnx"
    export_onnx(dec, x, path, dynamic_batch=False)
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert "MatMul" not in ops and "Gemm" not in ops and ops.count("Conv") >= 2
    assert rel_err(_run_ort(path, x), model(x)) < 1e-5
    compiled = ov.Core().compile_model(ov.convert_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert rel_err(torch.from_numpy(compiled(x.numpy())[0]), model(x)) < 1e-5


def test_export_cli_writes_an_openvino_ir_that_openvino_loads_on_its_own(tmp_path, capsys):
    """The documented path for OpenVINO users: ``structconv export --format openvino`` gives an
    IR (f32 weights, 1x1-conv channel pools) that a plain ``openvino.Core`` runs like PyTorch."""
    import numpy as np
    import openvino as ov

    from structconv.cli import main

    argv = ["export", "--arch", "cifar_resnet20", "--struct", "A", "--format", "openvino", "-o", str(tmp_path)]
    assert main([*argv, "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)["files"]["openvino"]
    xml = tmp_path / "cifar_resnet20_structA.xml"
    assert entry["path"] == str(xml) and entry["rel_err"] <= 1e-4 and xml.with_suffix(".bin").exists()
    model = ov.Core().read_model(str(xml))
    types = [op.get_type_name() for op in model.get_ops()]
    assert types.count("MatMul") == 1 and "Convolution" in types  # the classifier's only: no channel-pool MatMul
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)  # batch stays dynamic
    assert compiled(x)[0].shape == (3, 10)
    assert main(argv) == 2  # the files exist: not overwritten unless asked
    assert "--overwrite" in capsys.readouterr().err
