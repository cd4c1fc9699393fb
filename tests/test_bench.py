import json

import pytest
import torch

import structconv as sc
from structconv import benchmark
from structconv._timing import fixed_threads, interleaved_times
from structconv.allocator import glibc_malloc_available
from structconv.cli import bench


def _args(*extra):
    return bench.get_args_parser().parse_args(
        ["--arch", "cifar_resnet20", "--struct", "A", "--image-size", "16", "--batch", "1,2", "--threads", "1",
         "--warmup", "0", "--repeats", "2", "--min-time", "0", "--no-layers", *extra]
    )  # fmt: skip


def test_bench_json_has_the_required_fields(tmp_path, capsys):
    args = _args("--json", "--cache", str(tmp_path / "c.json"), "--no-onnx")
    assert bench.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["threads"] == 1
    assert out["malloc"] == ("retain" if glibc_malloc_available() else "system (glibc mallopt unavailable)")
    assert [r["batch"] for r in out["results"]] == [1, 2]
    for row in out["results"]:
        assert row["dense_ms"] > 0 and row["decomposed_ms"] > 0
        assert row["speedup"] == pytest.approx(row["dense_ms"] / row["decomposed_ms"])
        assert row["dense_layout"] in ("contiguous", "channels_last")
        assert row["max_rel_err"] < 1e-4  # the timed decomposed model is the projected model
        assert row["rounds"] >= 2
        assert {l["choice"] for l in row["layers"]} <= {"decomposed", "dense"}
        assert row["dense_page_faults"] >= 0 and row["decomposed_page_faults"] >= 0
        assert "compiled" not in row  # only with --compile
    assert out["paper_mults_ratio"] > 1.5


def test_bench_speed_plan_for_a_struct_keeps_its_compression(tmp_path, capsys):
    args = _args("--json", "--plan", "speed", "--batch", "2", "--cache", str(tmp_path / "c.json"), "--no-onnx")
    assert bench.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert "SpeedPlan" in out["speed_plan"]
    row = out["results"][0]
    assert row["max_rel_err"] < 1e-4
    assert row["speedup_paired"] > 0
    # Struct-A of ResNet20 is about 2x; the speed plan may compress a layer at most 15 % more
    dense, structured = benchmark.build_models("cifar_resnet20", struct="A")
    from structconv.complexity import count_ops

    reference = count_ops(dense, (1, 3, 16, 16)).mults / count_ops(sc.decompose(structured), (1, 3, 16, 16)).mults
    assert reference <= out["paper_mults_ratio"] <= reference * 1.15


def test_bench_with_onnxruntime_and_without_autotune(tmp_path, capsys):
    import onnxruntime  # noqa: F401 - a dev dependency: missing must fail, not skip
    args = _args("--json", "--no-autotune", "--layout", "channels_last", "--batch", "2")
    bench.main(args)
    row = json.loads(capsys.readouterr().out)["results"][0]
    assert row["decomposed_layout"] == "channels_last"
    assert "layers" not in row
    ort_row = row["onnxruntime"]
    assert ort_row["dense_ms"] > 0 and ort_row["decomposed_ms"] > 0
    assert ort_row["rel_err_vs_torch"] < 1e-4


@pytest.mark.slow
def test_bench_times_both_models_compiled(tmp_path, capsys):
    args = _args("--json", "--compile", "--layout", "channels_last", "--batch", "2", "--no-onnx", "--no-autotune",
                 "--malloc", "system")  # fmt: skip
    assert bench.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["malloc"] == "system"
    compiled = out["results"][0]["compiled"]
    assert compiled["dense_ms"] > 0 and compiled["decomposed_ms"] > 0
    assert compiled["speedup"] == pytest.approx(compiled["dense_ms"] / compiled["decomposed_ms"])
    assert compiled["decomposed_layout"] == "channels_last"
    assert compiled["max_rel_err"] < 1e-4  # Inductor's code computes the projected model's function
    assert set(compiled["compile_s"]) == {"dense/channels_last", "decomposed/channels_last"}


def test_bench_text_output_through_the_cli(tmp_path, capsys):
    from structconv.cli import main

    argv = ["bench", "--arch", "cifar_resnet20", "--struct", "A", "--image-size", "16", "--batch", "1", "--threads", "1",
            "--warmup", "0", "--repeats", "1", "--min-time", "0", "--no-onnx", "--cache", str(tmp_path / "c.json")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "threads: 1" in out and "speedup (dense / decomposed)" in out and "Autotune" in out


def test_bench_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"batches item 0 must be an integer >= 1"):
        benchmark.run_benchmark(benchmark.BenchmarkConfig("cifar_resnet20", struct="A", batches=(0,)))
    with pytest.raises(ValueError, match="struct"):
        benchmark.build_models("cifar_resnet20")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            benchmark.run_benchmark(benchmark.BenchmarkConfig("cifar_resnet20", struct="A", device="cuda"))


def test_interleaved_times_alternates_and_counts():
    calls = []
    times = interleaved_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, repeats=3)
    assert len(times["a"]) == len(times["b"]) == 3
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then A B / B A / A B


def test_fixed_threads_restores():
    before = torch.get_num_threads()
    with fixed_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError):
        with fixed_threads(0):
            pass


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_event_timing():
    x = torch.randn(256, 256, device="cuda")
    times = interleaved_times({"mm": lambda: x @ x}, warmup=1, repeats=3, device="cuda")
    assert len(times["mm"]) == 3 and all(t > 0 for t in times["mm"])
