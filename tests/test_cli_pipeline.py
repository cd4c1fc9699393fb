"""End-to-end CLI: kill -9 and --resume, 2-process DDP with torchrun (gloo), decompose and eval."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from structconv.cli import main as cli
from structconv.serialization import read_checkpoint

from ._synthetic import load_example, make_fashion_mnist

TINY = ["--batch-size", "32", "--eval-subset", "32", "--no-progress", "--quiet", "--print-freq", "4"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    return make_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=128, n_test=32)


def train_cmd(out, data, *extra):
    return [sys.executable, "-m", "structconv.cli", "train", "--dataset", "fashion-mnist", "--data-path", str(data),
            "--output-dir", str(out), "--threads", "1", *TINY, *extra]  # fmt: skip


def test_kill_9_then_resume_reaches_the_uninterrupted_state(tmp_path, fmnist):
    args = ["--mode", "sr", "--struct", "A", "--epochs", "10", "--ckpt-every", "2"]
    subprocess.run(train_cmd(tmp_path / "full", fmnist, *args), check=True, env=ENV, capture_output=True)
    proc = subprocess.Popen(train_cmd(tmp_path / "cut", fmnist, *args), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    ckpt = tmp_path / "cut" / "checkpoint.pth"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "cut" / "results.json").exists()
    killed_at = read_checkpoint(ckpt)["global_step"]  # an atomic write: never a torn file
    assert 0 < killed_at < 40
    done = subprocess.run(train_cmd(tmp_path / "cut", fmnist, *args, "--resume"), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    full = read_checkpoint(tmp_path / "full" / "model.pth")["state_dict"]
    resumed = read_checkpoint(tmp_path / "cut" / "model.pth")["state_dict"]
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    a = json.loads((tmp_path / "full" / "results.json").read_text())
    b = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert a["accuracy_after_decomposition"] == b["accuracy_after_decomposition"] and b["steps"] == 40


def test_torchrun_two_processes_gloo(tmp_path, fmnist):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "structconv.cli", "train", "--dataset", "fashion-mnist", "--data-path", str(fmnist),
           "--output-dir", str(tmp_path), "--device", "cpu", "--mode", "sr", "--epochs", "2", *TINY]  # fmt: skip
    run = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["world_size"] == 2
    assert res["steps"] == 2 * (128 // 2 // 32)  # each rank sees half of the data per epoch
    assert res["accuracy_after_decomposition"] is not None
    assert read_checkpoint(tmp_path / "checkpoint.pth")["global_step"] == res["steps"]


def test_decompose_and_eval_commands(tmp_path, fmnist, capsys):
    out = tmp_path / "run"
    assert cli(["train", "--dataset", "fashion-mnist", "--data-path", str(fmnist), "--output-dir", str(out),
                "--mode", "sr", "--lam", "20", "--epochs", "2", "--threads", "1", *TINY]) == 0  # fmt: skip
    res = json.loads((out / "results.json").read_text())
    capsys.readouterr()
    assert cli(["decompose", str(out / "model.pth"), "-o", str(tmp_path / "dec.pth"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["params_after"] < summary["params_before"] and summary["layers"] > 10
    assert cli(["eval", str(tmp_path / "dec.pth"), "--json"]) == 0  # dataset and path come from the checkpoint
    ev = json.loads(capsys.readouterr().out)
    assert ev["accuracy"] == pytest.approx(res["accuracy_after_decomposition"])
    assert ev["params"] == res["params"]
    assert cli(["eval", str(out / "model.pth"), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["accuracy"] == pytest.approx(res["accuracy_before_decomposition"])
    assert ev["accuracy_decomposed"] == pytest.approx(res["accuracy_after_decomposition"])
    # errors: corrupt checkpoint, nothing to decompose, missing file
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    assert cli(["decompose", str(tmp_path / "bad.pth"), "-o", str(tmp_path / "x.pth")]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert cli(["decompose", str(tmp_path / "dec.pth"), "-o", str(tmp_path / "x.pth")]) == 2
    assert "no structured layers" in capsys.readouterr().err
    assert cli(["eval", str(tmp_path / "none.pth")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_demo_main_job_prints_the_comparison_table(tmp_path, fmnist, capsys):
    demo = load_example("demo")

    args = demo.get_args_parser().parse_args(["--steps", "2", "--data-path", str(fmnist), "--eval-subset", "32",
                                              "--output-dir", str(tmp_path), "--threads", "1", "--no-progress"])  # fmt: skip
    assert demo.main(args) == 0
    out = capsys.readouterr().out
    assert "acc. before decomp. (%)" in out and "ResNet20 baseline" in out and "Struct-A" in out
    base = json.loads((tmp_path / "baseline" / "results.json").read_text())
    struct = json.loads((tmp_path / "struct_a" / "results.json").read_text())
    assert f"{base['params']:,}" in out and f"{struct['params']:,}" in out
    assert struct["params"] < 0.6 * base["params"]
    assert f"Budget: {struct['steps']} steps x 128 images" in out and struct["steps"] == base["steps"] == 1
