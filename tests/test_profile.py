"""`structconv profile` against the paper's Tables 1-4."""

import json

import pytest

from structconv.cli import main as cli
from structconv.models.paper import PAPER_ROWS, paper_row
from structconv.profiling import profile

BASELINES = ["cifar_resnet20", "cifar_resnet32", "cifar_resnet56", "resnet18", "resnet34", "resnet50", "mobilenet_v2"]


@pytest.mark.parametrize("arch", BASELINES)
def test_baseline_rows_match_the_paper_within_1_percent(arch):
    result = profile(arch)
    row = paper_row(arch)
    assert result["paper"]["comparable"]
    for key in ("adds", "mults", "params"):
        ref = getattr(row, key)
        assert abs(result[key] - ref) <= 0.01 * ref, (key, result[key], ref)
        assert abs(result["paper"]["gap"][key]) <= 0.01


@pytest.mark.parametrize("arch", ["cifar_resnet20", "cifar_resnet56", "resnet18"])
def test_struct_a_rows_are_about_2x_smaller_and_near_the_paper(arch):
    base, a = profile(arch), profile(arch, struct="A")
    assert 1.8 < base["params"] / a["params"] < 2.2
    gap = a["paper"]["gap"]
    assert abs(gap["params"]) < 0.10 and abs(gap["mults"]) < 0.10


def test_struct_b_rows_compress_more_than_a():
    a, b = profile("cifar_resnet20", struct="A"), profile("cifar_resnet20", struct="B")
    assert b["params"] < a["params"] and b["mults"] < a["mults"]
    assert b["paper"]["label"] == "Struct-20-B"


def test_every_paper_arch_resolves():
    assert {r.arch for r in PAPER_ROWS} >= {"cifar_resnet20", "resnet50", "hrnet_w18_small_v2_seg"}


def test_cli_json_and_text(capsys):
    assert cli(["profile", "--arch", "cifar_resnet20", "--struct", "A", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"adds", "mults", "params"} <= set(out) and out["paper"]["label"] == "Struct-20-A"
    assert out["params"] < 0.6 * profile("cifar_resnet20")["params"]
    assert cli(["profile", "--arch", "cifar_resnet20", "--input-size", "1", "28", "28"]) == 0
    text = capsys.readouterr().out
    assert "adds" in text and "no gap is computed" in text


def test_cli_unknown_arch_exits_2(capsys):
    assert cli(["profile", "--arch", "no_such_net"]) == 2
    assert "unknown architecture 'no_such_net'" in capsys.readouterr().err


@pytest.mark.slow
def test_table5_hrnet_segmentation_rows():
    base = profile("hrnet_w18_small_v2_seg")
    assert base["input_size"] == [3, 1024, 2048]
    assert abs(base["paper"]["gap"]["adds"]) < 0.01 and abs(base["paper"]["gap"]["mults"]) < 0.01
    assert abs(base["paper"]["gap"]["params"]) < 0.015  # the paper prints 3.9M (2 digits)
    a = profile("hrnet_w18_small_v2_seg", struct="A")
    assert 1.8 < base["params"] / a["params"] < 2.2  # "about 2x smaller"


def test_classification_hrnet_is_not_compared_with_table5():
    out = profile("hrnet_w18_small_v2", input_size=[64])
    assert "paper" not in out  # Table 5 belongs to the segmentation model
