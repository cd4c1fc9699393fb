"""Bad input and faults, as a new user meets them: every case gets one clear line (exit status
2, no traceback, at most 3 lines of stderr naming the culprit), and nothing destroys earlier work.

The command-line cases run the real ``structconv`` entry point in-process (``cli.main``, what
the console script calls); the ones that need a real process (signals, exit codes, a full
disk) run it as a subprocess.  The data are tiny files in Fashion-MNIST's real on-disk format.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import structconv as sc
from structconv.cli import main as cli

from ._synthetic import make_fashion_mnist

TINY = ["--batch-size", "32", "--eval-subset", "32", "--no-progress", "--quiet", "--threads", "1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    return make_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=128, n_test=32)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fmnist):
    """A finished Struct-A run and a finished baseline run, trained once for the module."""
    root = tmp_path_factory.mktemp("runs")
    for mode in ("sr", "baseline"):
        assert cli(["train", "--mode", mode, "--dataset", "fashion-mnist", "--data-path", str(fmnist),
                    "--output-dir", str(root / mode), "--max-steps", "2", *TINY]) == 0  # fmt: skip
    return root


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def one_line_error(capsys, argv, culprit: str) -> str:
    status = cli(argv)
    err = capsys.readouterr().err
    assert status == 2, f"exit status {status} for {argv}: {err}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 3, err
    assert "Traceback" not in err
    assert culprit.lower() in err.lower(), f"{culprit!r} not named in: {err}"
    return err


# ---- argument checks, before any work ------------------------------------------------------
def _train(data, out, *extra):
    return ["train", "--dataset", "fashion-mnist", "--data-path", str(data), "--output-dir", str(out), *TINY, *extra]


TRAIN_CASES = [
    ("print-freq 0", ["--print-freq", "0"], "--print-freq"),
    ("threads -1", ["--threads", "-1"], "--threads"),
    ("threads 0", ["--threads", "0"], "--threads"),
    ("label smoothing 1.5", ["--label-smoothing", "1.5"], "--label-smoothing"),
    ("lam nan", ["--lam", "nan"], "--lam"),
    ("lam negative", ["--lam", "-1"], "--lam"),
    ("max-steps -5", ["--max-steps", "-5"], "--max-steps"),
    ("max-steps 0", ["--max-steps", "0"], "--max-steps"),
    ("image-size 0", ["--image-size", "0"], "--image-size"),
    ("epochs 0", ["--epochs", "0"], "--epochs"),
    ("lr 0", ["--lr", "0"], "--lr"),
    ("lr inf", ["--lr", "inf"], "--lr"),
    ("momentum 1", ["--momentum", "1"], "--momentum"),
    ("train-subset 0", ["--train-subset", "0"], "--train-subset"),
    ("device tpu9", ["--device", "tpu9"], "tpu9"),
    ("ratio 0.5", ["--ratio", "0.5"], "--ratio"),
    ("in-chans 2", ["--in-chans", "2"], "--in-chans"),
    ("batch-size 0", ["--batch-size", "0"], "--batch-size"),
    ("init-from without finetune", ["--init-from", "x.pth"], "--init-from"),
]


@pytest.mark.parametrize("argv,culprit", [c[1:] for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES])
def test_train_argument_errors_are_one_line(tmp_path, fmnist, capsys, argv, culprit):
    one_line_error(capsys, _train(fmnist, tmp_path / "out", *argv), culprit)
    assert not (tmp_path / "out").exists()  # refused before any work


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without a GPU")
def test_cuda_without_a_gpu_is_one_line(tmp_path, fmnist, capsys):
    one_line_error(capsys, _train(fmnist, tmp_path / "out", "--device", "cuda"), "cuda")


def test_other_commands_argument_errors(tmp_path, runs, capsys):
    model = str(runs / "sr" / "model.pth")
    cases = [
        (["eval", model, "--device", "tpu9"], "tpu9"),
        (["eval", model, "--in-chans", "3"], "in-chans"),
        (["eval", model, "--eval-subset", "0"], "--eval-subset"),
        (["eval", model, "--eval-subset", "-5"], "--eval-subset"),
        (["export", "--arch", "cifar_resnet20", "--struct", "A", "--image-size", "0", "-o", str(tmp_path)], "--image-size"),
        (["export", "--arch", "cifar_resnet20", "--struct", "A", "--opset", "11", "-o", str(tmp_path)], "--opset"),
        (["profile", "--arch", "cifar_resnet20", "--num-classes", "-1"], "--num-classes"),
        (["profile", "--arch", "cifar_resnet20", "--num-classes", "0"], "--num-classes"),
        (["profile", "--arch", "resnet_nope"], "resnet_nope"),
        (["bench", "--arch", "cifar_resnet20", "--struct", "A", "--batch", "0"], "--batch"),
        (["bench", "--arch", "cifar_resnet20", "--struct", "A", "--min-time", "nan"], "--min-time"),
        (["decompose", str(runs / "baseline" / "model.pth"), "-o", str(tmp_path / "d.pth")], "no structured layers"),
    ]
    for argv, culprit in cases:
        one_line_error(capsys, argv, culprit)


# ---- files and paths ---------------------------------------------------------------------
def test_corrupt_and_wrong_checkpoints(tmp_path, runs, fmnist, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x80\x02not a checkpoint at all" * 10)
    one_line_error(capsys, ["eval", str(bad)], "corrupt")
    one_line_error(capsys, ["decompose", str(bad), "-o", str(tmp_path / "d.pth")], "corrupt")
    one_line_error(capsys, ["export", "--checkpoint", str(tmp_path / "missing.pth")], "missing.pth")
    # resuming from a final model instead of the training checkpoint
    out = tmp_path / "resumed"
    one_line_error(capsys, _train(fmnist, out, "--mode", "sr", "--max-steps", "2", "--resume",
                                  str(runs / "sr" / "model.pth")), "checkpoint.pth")  # fmt: skip


def test_output_directory_problems_are_found_before_training(tmp_path, fmnist, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    one_line_error(capsys, _train(fmnist, a_file, "--max-steps", "2"), str(a_file))
    one_line_error(capsys, _train(fmnist, a_file / "sub", "--max-steps", "2"), str(a_file))
    one_line_error(capsys, ["decompose", str(tmp_path / "nope.pth"), "-o", str(tmp_path)], "nope.pth")


def test_decompose_refuses_a_directory_and_its_own_input(tmp_path, runs, capsys):
    model = runs / "sr" / "model.pth"
    before = digest(runs / "sr")
    one_line_error(capsys, ["decompose", str(model), "-o", str(model)], "input checkpoint")
    one_line_error(capsys, ["decompose", str(runs / "sr" / "checkpoint.pth"), "-o", str(runs / "sr" / "checkpoint.pth")],
                   "input checkpoint")  # fmt: skip
    one_line_error(capsys, ["decompose", str(model), "-o", str(tmp_path)], "directory")
    out = tmp_path / "d.pth"
    assert cli(["decompose", str(model), "-o", str(out)]) == 0
    first = out.read_bytes()
    one_line_error(capsys, ["decompose", str(model), "-o", str(out)], "--overwrite")
    assert out.read_bytes() == first
    assert digest(runs / "sr") == before


def test_training_into_an_earlier_run_is_refused_and_changes_nothing(tmp_path, runs, fmnist, capsys):
    run = runs / "sr"
    before = digest(run)
    one_line_error(capsys, _train(fmnist, run, "--mode", "sr", "--max-steps", "2"), "--resume")
    assert digest(run) == before
    # asked explicitly, it is replaced (a copy, so the module's run stays)
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in run.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    assert cli(_train(fmnist, copy, "--mode", "sr", "--max-steps", "1", "--overwrite")) == 0
    assert json.loads((copy / "results.json").read_text())["steps"] == 1
    assert len((copy / "metrics.csv").read_text().splitlines()) == 2  # not appended to the old one


def test_resume_refuses_changed_settings(tmp_path, fmnist, capsys):
    out = tmp_path / "run"
    assert cli(_train(fmnist, out, "--mode", "sr", "--epochs", "2", "--stop-after", "1")) == 0
    before = digest(out)
    for flag, value in (("--lr", "0.05"), ("--lam", "3"), ("--epochs", "3"), ("--train-subset", "64")):
        err = one_line_error(capsys, _train(fmnist, out, "--mode", "sr", "--epochs", "2", "--resume", flag, value), flag)
        assert "resume" in err
    assert digest(out) == before
    assert cli(_train(fmnist, out, "--mode", "sr", "--epochs", "2", "--resume")) == 0


def test_stale_temporary_files_are_removed(tmp_path, fmnist):
    out = tmp_path / "run"
    assert cli(_train(fmnist, out, "--mode", "sr", "--epochs", "2", "--stop-after", "1")) == 0
    stale = out / ".checkpoint.pth.abcd1234.tmp"
    stale.write_bytes(b"")
    assert cli(_train(fmnist, out, "--mode", "sr", "--epochs", "2", "--resume")) == 0
    assert not stale.exists()


def test_export_takes_the_input_shape_from_a_trained_checkpoint(tmp_path, runs, capsys):
    for name in ("model.pth", "model_decomposed.pth"):
        assert cli(["export", "--checkpoint", str(runs / "sr" / name), "-o", str(tmp_path / name), "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["input"] == [1, 1, 28, 28]
        assert summary["files"]["onnx"]["rel_err"] < 1e-4
    one_line_error(capsys, ["export", "--checkpoint", str(runs / "sr" / "model.pth"), "-o", str(tmp_path / "model.pth")],
                   "--overwrite")  # fmt: skip


# ---- signals and faults (real processes) ---------------------------------------------------
def _cmd(out, data, *extra):
    return [sys.executable, "-m", "structconv.cli", *_train(data, out, *extra)]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_checkpoints_then_exits_130(tmp_path, fmnist, sig):
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(out, fmnist, "--mode", "sr", "--epochs", "50", "--print-freq", "1"), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while not (out / "log.jsonl").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "--resume" in err and len(err.strip().splitlines()) <= 3
    step = torch.load(out / "checkpoint.pth", weights_only=True)["global_step"]
    logged = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert step >= max(logged) >= 1  # nothing trained after the last checkpoint is lost


def test_a_full_disk_is_one_line_and_keeps_the_old_checkpoint(tmp_path, fmnist):
    out = tmp_path / "run"
    assert subprocess.run(_cmd(out, fmnist, "--mode", "sr", "--epochs", "2", "--stop-after", "1"), env=ENV).returncode == 0
    before = digest(out)
    # a file size limit makes every write past it fail with EFBIG, as a full disk fails with ENOSPC
    limit = "import resource, signal, sys, runpy; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); " \
            "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)); sys.argv = ['structconv'] + sys.argv[1:]; " \
            "runpy.run_module('structconv.cli', run_name='__main__')"  # fmt: skip
    argv = _cmd(out, fmnist, "--mode", "sr", "--epochs", "2", "--resume")[3:]
    run = subprocess.run([sys.executable, "-c", limit, *argv], env=ENV, capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) <= 3
    assert "checkpoint.pth" in run.stderr
    after = digest(out)
    assert after["checkpoint.pth"] == before["checkpoint.pth"]  # the atomic write kept the old one
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


# ---- the API ----------------------------------------------------------------------------------
def test_structure_arguments_take_integer_like_values_only():
    conv = sc.StructuredConv2d(8, 4, 3, c=np.int64(4), n=torch.tensor(2))
    assert (conv.c, conv.n) == (4, (2, 2))
    assert sc.StructureSpec(np.int32(3), (np.int64(2), 2)).n == (2, 2)
    for bad in [{"n": (2.7, 2.7)}, {"n": True}, {"n": "22"}, {"c": 2.0}, {"c": True}]:
        kwargs = {"c": 4, "n": 2, **bad}
        with pytest.raises(ValueError, match="must be an int"):
            sc.StructuredConv2d(8, 4, 3, **kwargs)
        with pytest.raises(ValueError):
            sc.DecomposedConv2d(8, 4, 3, **kwargs)
    with pytest.raises(ValueError, match="must be an int"):
        sc.StructureSpec(2, (2.5, 2))


def test_count_ops_input_size_errors():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(ValueError, match=r"input_size=\(1, 3, 2.5, 32\)"):
        sc.count_ops(model, (1, 3, 2.5, 32))
    with pytest.raises(ValueError, match="batch dimension"):
        sc.count_ops(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), (3, 4))


def test_structurize_twice_and_load_into_a_structured_model(tmp_path):
    model = sc.structurize(nn.Sequential(nn.Conv2d(8, 8, 3)), 2.0)
    with pytest.raises(ValueError, match="already a StructuredConv2d"):
        sc.structurize(model, 4.0)
    sc.save(model, tmp_path / "m.pth")
    with pytest.raises(ValueError, match="dense model"):
        sc.load(tmp_path / "m.pth", sc.structurize(nn.Sequential(nn.Conv2d(8, 8, 3)), 2.0))
    # a decomposed layer's own small conv is never structurized again
    dec = sc.decompose(model, on_unstructured="ignore")
    assert not sc.plan(dec, 2.0).structured


def test_layer_shape_errors_name_the_layer():
    dec = sc.StructuredConv2d(16, 8, 3, padding=1, c=8, n=3).decompose()
    with pytest.raises(ValueError, match="DecomposedConv2d: expected 16 input channels, got 17"):
        dec(torch.randn(1, 17, 5, 5))
    with pytest.raises(ValueError, match="expected 32 input features, got 31"):
        sc.StructuredLinear(32, 4, r=8).decompose()(torch.randn(2, 31))
    with pytest.raises(ValueError, match=r"channel_window=9 must be in \[1, 4\]"):
        sc.sum_pool(torch.randn(1, 4, 5, 5), 9, (1, 1))
    with pytest.raises(ValueError, match="c=9 must satisfy 1 <= c <= C"):
        sc.StructuredConv2d(4, 4, 3, c=9, n=3)


def test_tampered_autotune_cache_is_ignored_with_a_warning(tmp_path):
    from structconv.autotune import optimize

    layer = sc.StructuredConv2d(8, 8, 3, padding=1, c=4, n=3).project_()
    model = nn.Sequential(layer.decompose())
    x = torch.randn(1, 8, 6, 6)
    cache = tmp_path / "cache.json"
    optimize(model, x, cache=cache, repeats=1, warmup=0, min_time_s=0, whole_model=False)
    data = json.loads(cache.read_text())
    for entry in data.values():
        entry.pop("dense_ms")
    cache.write_text(json.dumps({**data, "junk": 3}))
    with pytest.warns(RuntimeWarning, match="malformed"):
        _, report = optimize(model, x, cache=cache, repeats=1, warmup=0, min_time_s=0, whole_model=False)
    assert not any(c.cached for c in report.layers)  # re-measured
    assert all("dense_ms" in e for e in json.loads(cache.read_text()).values() if isinstance(e, dict))
    cache.write_text("{not json")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        optimize(model, x, cache=cache, repeats=1, warmup=0, min_time_s=0, whole_model=False)
    json.loads(cache.read_text())  # rebuilt


def test_results_json_is_strict(runs):
    text = (runs / "sr" / "results.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_decompose_warns_on_unconverged_layers_and_can_refuse():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 4))
    structured = sc.structurize(model, 2.0)
    with pytest.warns(sc.StructureWarning, match=r"2 of 2 layers .*'3' 0\.\d+"):
        sc.decompose(structured)
    with pytest.raises(sc.UnstructuredError) as info:
        sc.decompose(structured, on_unstructured="raise")
    assert set(info.value.errors) == {"0", "3"}
    for layer in structured.modules():
        if isinstance(layer, sc.StructuredLayer):
            layer.project_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sc.decompose(structured)  # converged: silent


def test_more_bad_inputs_found_by_trying(tmp_path, runs, capsys):
    """Beyond the issue's list: cases found by trying more inputs the same way."""
    model = str(runs / "sr" / "model.pth")
    cases = [
        (["train", "--arch", "vit_b_16", "--struct", "A", "--output-dir", str(tmp_path / "v")], "no Struct-A preset"),
        (["compare", "--arch", "vit_b_16", "--output-dir", str(tmp_path / "c")], "no Struct-A/B preset"),
        (["decompose", model, "-o", "/proc/structconv-test.pth"], "/proc/structconv-test.pth"),
        (["profile", "--arch", "cifar_resnet20", "--input-size", "3", "0", "32"], "--input-size"),
        (["bench", "--arch", "cifar_resnet20", "--ratio", "inf"], "--ratio"),
        (["export", "--checkpoint", model, "--format", ",", "-o", str(tmp_path / "e")], "--format"),
        (["train", "--workers", "-1", "--output-dir", str(tmp_path / "w")], "--workers"),
        (["compare", "--seeds", "0", "--output-dir", str(tmp_path / "s")], "--seeds"),
    ]
    for argv, culprit in cases:
        one_line_error(capsys, argv, culprit)
    assert not any((tmp_path / d).exists() for d in ("v", "c", "w", "s"))
    with pytest.raises(ValueError, match="pad=.* must have 2 entries per spatial axis"):
        sc.sum_pool(torch.randn(1, 4, 6, 6), 2, (3, 3), pad=(1,))


@pytest.mark.parametrize("command", sorted(__import__("structconv.cli", fromlist=["COMMANDS"]).COMMANDS))
def test_every_command_prints_its_help(command, capsys):
    # argparse %-formats help strings: a literal "%" in a recipe summary once broke `train --help`
    assert cli([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"usage: structconv {command}" in out and "--" in out


def _typed_arguments(kinds):
    """``(command, flag or None for a positional, type)`` for every argument whose type is one of ``kinds``."""
    import structconv.cli as cli_pkg

    found = []
    for command in sorted(cli_pkg.COMMANDS):
        parser = cli_pkg._command_parser(cli_pkg.build_parser(command), command)  # noqa: SLF001
        for action in parser._actions:  # noqa: SLF001
            if getattr(action.type, "__name__", None) in kinds:
                found.append((command, action.option_strings[0] if action.option_strings else None, action.type))
    return found


PATH_ARGUMENTS = _typed_arguments({"path_arg"})
LIST_ARGUMENTS = _typed_arguments({"int_list", "step_list", "name_list", "float_list"})


def test_the_rules_cover_arguments_of_every_command():
    assert {c for c, _, _ in PATH_ARGUMENTS} >= {"train", "compare", "bench", "eval", "export", "decompose"}
    assert len(LIST_ARGUMENTS) >= 4


def _ids(arguments):
    return [f"{command} {flag or '<positional>'}" for command, flag, _ in arguments]


@pytest.mark.parametrize(("command", "flag", "_"), PATH_ARGUMENTS, ids=_ids(PATH_ARGUMENTS))
def test_an_empty_path_is_refused_for_every_path_argument(command, flag, _, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an accepted "" would write here
    argv = [command, flag, ""] if flag else [command, ""]
    err = one_line_error(capsys, argv, flag or "empty")
    assert "empty" in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(("command", "flag", "kind"), LIST_ARGUMENTS, ids=_ids(LIST_ARGUMENTS))
def test_a_list_with_an_empty_item_is_refused_for_every_list_argument(command, flag, kind, capsys):
    item = "fp32" if kind.__name__ == "name_list" else "1"
    one_line_error(capsys, [command, flag, f"{item},,{item}"], flag)


@pytest.mark.parametrize(
    "build",
    [
        lambda: sc.training.TrainConfig(output_dir=""),
        lambda: sc.training.TrainConfig(data_path=""),
        lambda: sc.training.TrainConfig(eval_at=(0, None)),
    ],
)
def test_library_configs_name_the_python_argument(build):
    with pytest.raises(ValueError) as info:
        build().validate()
    message = str(info.value)
    assert "--" not in message and any(n in message for n in ("output_dir", "data_path", "eval_at"))
