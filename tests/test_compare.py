"""``structconv compare`` on a tiny budget: every method runs, matches its target's cost, and the
study resumes without redoing finished runs."""

import json

import pytest

from structconv.cli import main as cli
from structconv.compare import CompareConfig, plan_runs

from ._synthetic import make_fashion_mnist

ARGS = ["--seeds", "1", "--targets", "A", "--dense-steps", "4", "--finetune-fraction", "0.5", "--batch-size", "32",
        "--eval-subset", "32", "--latency-batches", "1", "--no-compile", "--threads", "1", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    return make_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=256, n_test=32)


def test_compare_pipeline_end_to_end(tmp_path, fmnist, capsys):
    out = tmp_path / "study"
    assert cli(["compare", "--data-path", str(fmnist), "--output-dir", str(out), *ARGS, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    methods = {r["method"] for r in summary["summary"]}
    assert methods == {"dense", "struct_sr", "struct_ft", "struct_direct", "prune", "svd_weight", "svd_spatial", "narrow"}
    target = summary["target_mults"]["A"]
    for r in summary["runs"]:
        assert 0 <= r["accuracy"] <= 100 and r["params"] > 0
        if r["method"] != "dense":
            assert abs(r["mults"] / target - 1) <= 0.03, r  # matched cost
        if r["method"] in ("struct_ft", "prune", "svd_weight", "svd_spatial"):
            assert [p["step"] for p in r["curve"]] == [0, 1, 2]  # the fine-tune curve, from step 0
    dense = next(r for r in summary["runs"] if r["method"] == "dense")
    assert all(r["mults"] < 0.6 * dense["mults"] for r in summary["runs"] if r["method"] != "dense")
    table = summary["latency"]["tables"][0]
    assert table["mode"] == "eager" and set(table["median_ms"]) == {"dense", "struct-A", "struct-A untuned", "prune-A",
                                                                     "svd_weight-A", "svd_spatial-A", "narrow-A"}  # fmt: skip
    assert all(v > 0 for v in table["median_ms"].values())
    assert sorted(p.rsplit("/", 1)[-1] for p in summary["figures"]) == [
        "accuracy_vs_finetune_steps.png", "accuracy_vs_latency.png", "accuracy_vs_mults.png"]
    assert (out / "compare.csv").read_text().count("\n") == 1 + len(summary["runs"])
    assert (out / "runs" / "prune" / "A" / "s0" / "pruned_init.pth").exists()  # Torch-Pruning's own format

    # a second invocation keeps every finished run (byte-identical) and adds a seed
    before = {p: p.read_bytes() for p in (out / "runs").rglob("results.json")}
    assert cli(["compare", "--data-path", str(fmnist), "--output-dir", str(out), *ARGS, "--no-latency", "--no-plots",
                "--methods", "struct_sr", "--seeds", "2"]) == 0  # fmt: skip
    log = capsys.readouterr().out
    assert "finished earlier, kept" in log and "struct_sr/A/s1" in log
    assert all(p.read_bytes() == data for p, data in before.items())
    # other settings in the same directory are refused
    assert cli(["compare", "--data-path", str(fmnist), "--output-dir", str(out), *ARGS, "--dense-steps", "5"]) == 2
    assert "--dense-steps" in capsys.readouterr().err


def test_a_study_continues_when_its_directory_is_named_another_way(tmp_path, fmnist, capsys, monkeypatch):
    # started with an absolute --output-dir, continued with a relative one: the fine-tune's
    # --init-from (the study's own dense model) is the same file, so its finished run is kept
    args = ["compare", "--data-path", str(fmnist), *ARGS, "--methods", "struct_ft", "--no-latency", "--no-plots"]
    assert cli([*args, "--output-dir", str(tmp_path / "study")]) == 0
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    assert cli([*args, "--output-dir", "study"]) == 0
    log = capsys.readouterr().out
    assert log.count("finished earlier, kept") == 2, log


def test_compare_validates_before_any_work(tmp_path, capsys):
    for argv, culprit in ((["--methods", "magic"], "--methods"), (["--targets", "C"], "--targets"),
                          (["--finetune-fraction", "2"], "--finetune-fraction"), (["--distill", "1.5"], "--distill")):  # fmt: skip
        assert cli(["compare", "--output-dir", str(tmp_path / "o"), *argv]) == 2
        assert culprit in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_study_order_trains_dense_first():
    runs = plan_runs(CompareConfig(methods=("prune", "struct"), targets=("A", "B"), seeds=2))
    assert runs[0].method == "dense" and runs[0].seed == 0
    assert [r.name for r in runs if r.seed == 0][:3] == ["dense/s0", "struct_sr/A/s0", "struct_sr/B/s0"]
    assert len(runs) == 2 * (1 + 4 * 2)
