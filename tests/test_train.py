"""`structconv train` modes, checkpoints and resume, in-process on tiny generated datasets."""

import json

import pytest
import torch

import structconv as sc
from structconv.cli import main as cli
from structconv.serialization import read_checkpoint

from ._synthetic import make_cifar10, make_fashion_mnist

TINY = ["--batch-size", "32", "--eval-subset", "32", "--no-progress", "--quiet", "--threads", "1", "--print-freq", "2"]


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    return make_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=128, n_test=32)


def train(out, data, *extra):
    return cli(["train", "--dataset", "fashion-mnist", "--data-path", str(data), "--output-dir", str(out), *TINY, *extra])


def results(out):
    return json.loads((out / "results.json").read_text())


def test_sr_mode_reports_before_and_after_decomposition(tmp_path, fmnist):
    assert train(tmp_path, fmnist, "--mode", "sr", "--struct", "A", "--lam", "2", "--epochs", "2") == 0
    res = results(tmp_path)
    for key in ("accuracy_before_decomposition", "accuracy_after_decomposition", "adds", "mults", "params"):
        assert res[key] is not None, key
    assert res["steps"] == 8 and res["structure_error_mean"] > 0
    assert len(res["history"]) == 2 and "accuracy_decomposed" in res["history"][0]
    deployed = sc.load(tmp_path / "model_decomposed.pth")
    assert not any(isinstance(m, sc.StructuredLayer) for m in deployed.modules())
    ops = sc.count_ops(deployed, (1, 1, 28, 28))
    assert (ops.adds, ops.mults, ops.params) == (res["adds"], res["mults"], res["params"])
    dense = sc.count_ops(sc.load(tmp_path / "model.pth"), (1, 1, 28, 28))
    assert res["params"] < 0.7 * dense.params  # the deployed Struct-A model is ~2x smaller
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(lines) == 3 and "accuracy_decomposed" in lines[0]
    kinds = {json.loads(line)["kind"] for line in (tmp_path / "log.jsonl").read_text().splitlines()}
    assert kinds == {"train", "eval"}


def test_regularizer_lowers_structure_error_versus_control(tmp_path, fmnist):
    train(tmp_path / "sr", fmnist, "--mode", "sr", "--lam", "30", "--max-steps", "6")
    train(tmp_path / "ctl", fmnist, "--mode", "control", "--lam", "5", "--max-steps", "6")
    sr, ctl = results(tmp_path / "sr"), results(tmp_path / "ctl")
    assert ctl["lam"] == 0.0
    assert sr["structure_error_mean"] < 0.8 * ctl["structure_error_mean"]


def test_direct_mode_trains_the_decomposed_form(tmp_path, fmnist):
    assert train(tmp_path, fmnist, "--mode", "direct", "--struct", "B", "--max-steps", "3") == 0
    res = results(tmp_path)
    model = sc.load(tmp_path / "model.pth")
    assert any(isinstance(m, sc.DecomposedConv2d) for m in model.modules())
    assert not any(isinstance(m, sc.StructuredLayer) for m in model.modules())
    assert res["accuracy_before_decomposition"] == res["accuracy_after_decomposition"]
    assert not (tmp_path / "model_decomposed.pth").exists()


def test_finetune_from_a_dense_checkpoint(tmp_path, fmnist, capsys):
    assert train(tmp_path / "base", fmnist, "--mode", "baseline", "--max-steps", "2") == 0
    base = results(tmp_path / "base")
    assert base["accuracy_after_decomposition"] is None and base["struct"] is None
    ckpt = tmp_path / "base" / "model.pth"
    # without the projected finish, so the weights show where fine-tuning started
    assert train(tmp_path / "ft", fmnist, "--mode", "finetune", "--init-from", str(ckpt), "--max-steps", "2",
                 "--projected-fraction", "0", "--calibration-batches", "0") == 0  # fmt: skip
    dense_w = read_checkpoint(ckpt)["state_dict"]["layer1.0.conv1.weight"]
    assert results(tmp_path / "ft")["steps"] == 2
    # fine-tuning started from the dense weights: one conv barely moved in 2 steps
    ft_w = read_checkpoint(tmp_path / "ft" / "model.pth")["state_dict"]["layer1.0.conv1.weight"]
    assert torch.linalg.vector_norm(ft_w - dense_w) < 0.5 * torch.linalg.vector_norm(dense_w)
    assert train(tmp_path / "ft2", fmnist, "--mode", "finetune", "--init-from", str(tmp_path / "ft" / "model.pth")) == 2
    assert "holds a structured" in capsys.readouterr().err
    assert cli(["train", "--mode", "finetune", "--data-path", str(fmnist), "--output-dir", str(tmp_path / "x")]) == 2


def test_stop_and_resume_matches_an_uninterrupted_run(tmp_path, fmnist):
    args = ["--mode", "sr", "--epochs", "2", "--lam", "1"]
    assert train(tmp_path / "full", fmnist, *args) == 0
    assert train(tmp_path / "cut", fmnist, *args, "--stop-after", "3") == 0  # mid-epoch 1
    assert not (tmp_path / "cut" / "results.json").exists()
    assert read_checkpoint(tmp_path / "cut" / "checkpoint.pth")["global_step"] == 3
    assert train(tmp_path / "cut", fmnist, *args, "--resume") == 0  # continues at step 3
    full = read_checkpoint(tmp_path / "full" / "model.pth")["state_dict"]
    resumed = read_checkpoint(tmp_path / "cut" / "model.pth")["state_dict"]
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    a, b = results(tmp_path / "full"), results(tmp_path / "cut")
    assert a["accuracy_after_decomposition"] == b["accuracy_after_decomposition"] and b["steps"] == 8


def test_cifar10_format_trains_with_3_channels(tmp_path, monkeypatch):
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args, **kwargs: True)
    root = make_cifar10(tmp_path / "c10", n_train=64, n_test=32)
    assert cli(["train", "--dataset", "cifar10", "--data-path", str(root), "--output-dir", str(tmp_path / "o"),
                "--max-steps", "2", *TINY]) == 0  # fmt: skip
    res = results(tmp_path / "o")
    assert res["input_size"] == [3, 32, 32]
    assert res["adds"] == sc.count_ops(sc.load(tmp_path / "o" / "model_decomposed.pth"), (1, 3, 32, 32)).adds


def test_bad_input_is_a_clear_error(tmp_path, fmnist, capsys, monkeypatch):
    monkeypatch.setattr("structconv.data.DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    assert cli(["train", "--data-path", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "o")]) == 2
    assert "fashion-mnist dataset not found" in capsys.readouterr().err
    assert train(tmp_path / "o", fmnist, "--arch", "resnet_nope") == 2
    assert "unknown architecture 'resnet_nope'" in capsys.readouterr().err
    bad = tmp_path / "o" / "checkpoint.pth"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"not a checkpoint")
    assert train(tmp_path / "o", fmnist, "--resume") == 2
    assert "corrupt" in capsys.readouterr().err
    assert train(tmp_path / "o2", fmnist, "--resume") == 2
    assert "does not exist" in capsys.readouterr().err
    assert train(tmp_path / "o3", fmnist, "--mode", "baseline", "--struct", "A") == 2


def test_default_recipe_ends_structured_and_paper_recipe_is_kept(tmp_path, fmnist):
    assert train(tmp_path / "new", fmnist, "--mode", "sr", "--struct", "A", "--max-steps", "8") == 0
    new = results(tmp_path / "new")
    assert new["structure_error_max"] < 1e-5  # the projected finish: exact whatever the budget
    assert new["accuracy_before_decomposition"] == new["accuracy_after_decomposition"]
    assert train(tmp_path / "paper", fmnist, "--mode", "sr", "--struct", "A", "--max-steps", "8", "--sr", "eq3",
                 "--projected-fraction", "0") == 0  # fmt: skip
    paper = results(tmp_path / "paper")
    assert paper["structure_error_max"] > 1e-2  # 8 steps of Eq. 3 do not converge
    assert paper["args"]["sr"] == "eq3" and new["args"]["sr"] == "normalized"


def test_finetune_calibrates_by_default_and_records_it(tmp_path, fmnist, capsys):
    assert train(tmp_path / "base", fmnist, "--mode", "baseline", "--max-steps", "2") == 0
    ckpt = str(tmp_path / "base" / "model.pth")
    assert train(tmp_path / "ft", fmnist, "--mode", "finetune", "--init-from", ckpt, "--max-steps", "1") == 0
    report = results(tmp_path / "ft")["calibration"]
    assert report["batches_fit"] + report["batches_held_out"] == 4  # the 128 images in batches of 32
    layers = report["layers"]
    assert len(layers) == 20 and all(row["error_calibrated"] <= row["error_projection"] for row in layers)
    assert results(tmp_path / "ft")["accuracy_after_decomposition"] is not None
    assert all(row["candidates"] >= 1 and row["structure"] for row in layers)  # structures searched by default
    blocks = results(tmp_path / "ft")["reconstruction"]  # then blocks reconstructed, by default
    assert [row["name"] for row in blocks][:2] == ["layer1.0", "layer1.1"] and len(blocks) == 9
    assert all(row["error_after"] < row["error_before"] for row in blocks if row["kept"])
    for argv, culprit in [
        (["--mode", "sr", "--calibration-batches", "4"], "--calibration-batches"),
        (["--mode", "finetune", "--init-from", ckpt, "--calibration-batches", "1"], "--calibration-batches=1"),
        (["--mode", "sr", "--calibration-structure", "search"], "--calibration-structure"),
        (["--mode", "finetune", "--init-from", ckpt, "--calibration-batches", "0", "--reconstruction-steps", "5"],
         "--reconstruction-steps"),  # fmt: skip
        (["--mode", "finetune", "--init-from", ckpt, "--calibration-batches", "0", "--calibration-structure",
          "search"], "--calibration-batches=0"),  # fmt: skip
    ]:
        capsys.readouterr()
        assert train(tmp_path / "bad", fmnist, *argv) == 2
        assert culprit in capsys.readouterr().err


@pytest.mark.parametrize("calibration", ["0", "2"])
def test_finetune_step0_evaluation_sees_the_projected_model(tmp_path, fmnist, calibration):
    # the step-0 point of a fine-tune curve is where training starts: already on the structure
    assert train(tmp_path / "base", fmnist, "--mode", "baseline", "--max-steps", "2") == 0
    ckpt = str(tmp_path / "base" / "model.pth")
    argv = ["--mode", "finetune", "--init-from", ckpt, "--max-steps", "2", "--calibration-batches", calibration,
            "--reconstruction-steps", "0" if calibration == "0" else "2"]  # fmt: skip
    assert train(tmp_path / "ft", fmnist, *argv, "--eval-at", "0") == 0
    first = results(tmp_path / "ft")["history"][0]
    assert first["step"] == 0 and first["structure_error_max"] < 1e-4
    assert first["accuracy"] == first["accuracy_decomposed"]


def test_finetune_resumes_with_the_structures_its_checkpoint_records(tmp_path, fmnist):
    """Structures chosen from data are not the preset's: a resumed run must rebuild them from
    the checkpoint (here one is changed by hand to one the preset never picks), or it would
    project the weights onto the preset's and decompose a different model."""
    assert train(tmp_path / "base", fmnist, "--mode", "baseline", "--max-steps", "2") == 0
    ckpt = str(tmp_path / "base" / "model.pth")
    argv = ["--mode", "finetune", "--init-from", ckpt, "--max-steps", "4", "--calibration-batches", "2",
            "--reconstruction-steps", "2"]  # fmt: skip
    assert train(tmp_path / "ft", fmnist, *argv, "--stop-after", "2") == 0
    path = tmp_path / "ft" / "checkpoint.pth"
    saved = torch.load(path, weights_only=True)
    assert saved["layers"]["layer1.0.conv1"]["kind"] == "structured"
    saved["layers"]["layer1.0.conv1"].update(c=12, n=[3, 2])  # same size as the preset's 8x3x3
    torch.save(saved, path)
    assert train(tmp_path / "ft", fmnist, *argv, "--resume", "auto") == 0
    res = results(tmp_path / "ft")
    assert res["steps"] == 4 and res["structure_error_max"] < 1e-4
    final = read_checkpoint(tmp_path / "ft" / "model.pth")["layers"]["layer1.0.conv1"]
    assert (final["c"], list(final["n"])) == (12, [3, 2])
    assert res["accuracy_before_decomposition"] == res["accuracy_after_decomposition"]
