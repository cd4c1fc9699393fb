import math

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import structconv as sc


def test_resnet18_baseline_matches_paper_table3():
    report = sc.count_ops(torchvision.models.resnet18(), (1, 3, 224, 224))
    # Table 3: 1.81 G adds, 1.82 G mults, 11.69 M params
    assert report.adds / 1e9 == pytest.approx(1.81, rel=0.01)
    assert report.mults / 1e9 == pytest.approx(1.82, rel=0.01)
    assert report.params / 1e6 == pytest.approx(11.69, rel=0.01)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_conv_and_linear_mults_agree_with_torch_flop_counter(name):
    model = torchvision.models.get_model(name).eval()
    report = sc.count_ops(model, (1, 3, 96, 96))
    weighted = sum(r.mults for r in report.rows if r.layer_type in ("Conv2d", "Linear"))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 96, 96))
    assert counter.get_total_flops() == 2 * weighted  # torch counts a multiply-add as 2 flops


def test_counts_are_invariant_to_structurizing_and_follow_sec_4_2_after_decomposition():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3, stride=1, padding=1, bias=False)
    dense = sc.count_ops(conv, (1, 16, 10, 10))
    structured = sc.structurize(conv, overrides={"": sc.StructureSpec(8, (2, 2))})
    assert sc.count_ops(structured, (1, 16, 10, 10)).mults == dense.mults
    deployed = sc.count_ops(sc.decompose(structured), (1, 16, 10, 10))
    # Sec. 4.2 with C=16, N=3, c=8, n=2, C_out=32, H'=W'=10; the pool runs on the padded
    # 12x12 input, so H1 = W1 = 12 - (N - n) = 11.
    big_c, big_n, c, n, c_out, out_hw, pooled_hw = 16, 3, 8, 2, 32, 100, 121
    assert deployed.mults == c * n * n * c_out * out_hw
    pool_adds = ((big_c - c + 1) * (big_n - n + 1) ** 2 - 1) * c * pooled_hw
    assert deployed.adds == pool_adds + (c * n * n - 1) * c_out * out_hw
    assert deployed.params == c_out * c * n * n
    assert dense.mults / deployed.mults == pytest.approx(big_c * big_n**2 / (c * n * n))


def test_linear_counts_follow_sec_4_3():
    lin = nn.Linear(100, 10)
    q, p, r = 100, 10, 40
    dense = sc.count_ops(lin, (1, q))
    assert (dense.adds, dense.mults, dense.params) == ((q - 1) * p + p, q * p, q * p + p)
    deployed = sc.count_ops(sc.decompose(sc.structurize(lin, overrides={"": sc.StructureSpec(r)})), (1, q))
    assert deployed.mults == r * p
    assert deployed.adds == r * (q - r) + (r - 1) * p + p
    assert deployed.params == r * p + p


def test_composite_decomposition_counts_follow_eq_2():
    # Fig. 1(b)-like basis: four 2x2 patches in a 3x3 kernel: sum(beta_m) - 1 = 3 adds each
    masks = sc.StructuredBasis(1, (3, 3), 1, (2, 2)).masks()
    layer = sc.CompositeConv2d(1, 4, 3, bias=False, basis=masks)
    report = sc.count_ops(layer.decompose(), (1, 1, 5, 5))
    positions = 3 * 3
    m = 4
    assert report.mults == m * 4 * positions
    assert report.adds == (4 * 3) * positions + (m - 1) * 4 * positions  # mask sums + alpha combination


def test_batchnorm_counts_one_mult_and_one_add_per_element_and_uncounted_ops_are_listed():
    model = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))
    report = sc.count_ops(model, (2, 3, 4, 4))
    elements = 2 * 4 * 4 * 4
    assert report.mults == 3 * elements + elements
    assert report.adds == 2 * elements + elements
    assert report.uncounted == {"ReLU": 1, "MaxPool2d": 1}
    assert [r.layer_type for r in report.rows] == ["Conv2d", "BatchNorm2d"]
    assert report.to_dict() == {"adds": report.adds, "mults": report.mults, "params": report.params}
    assert "total" in str(report)


def test_count_ops_restores_training_mode_and_rejects_bad_sizes():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    sc.count_ops(model, (1, 3, 8, 8))
    assert model.training
    with pytest.raises(ValueError, match=r"input_size=\(1, 0, 8\)"):
        sc.count_ops(model, (1, 0, 8))


def test_shared_parameters_counted_once():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    model = nn.Sequential(conv, conv)
    assert sc.count_ops(model, (1, 4, 5, 5)).params == sum(p.numel() for p in conv.parameters())
    assert math.isclose(sc.count_ops(model, (1, 4, 5, 5)).mults, 2 * sc.count_ops(conv, (1, 4, 5, 5)).mults)


def test_pooled_map_conventions_differ_only_where_the_decomposition_skips_work():
    # 3x3 pad 1 with n = N: the pool is channel-only and the padding is left to the small conv
    conv = sc.structurize(nn.Conv2d(8, 4, 3, padding=1, bias=False), overrides={"": sc.StructureSpec(4, 3)})
    deployed = sc.decompose(conv)
    paper = sc.count_ops(deployed, (1, 8, 6, 6))
    executed = sc.count_ops(deployed, (1, 8, 6, 6), pooled_map="executed")
    window_adds = (8 - 4 + 1) - 1
    assert paper.adds - executed.adds == window_adds * 4 * (8 * 8 - 6 * 6)
    assert paper.mults == executed.mults
    # 1x1 stride 2: the executed pool reads every other position only
    down = sc.decompose(sc.structurize(nn.Conv2d(8, 4, 1, stride=2, bias=False), 2.0))
    paper = sc.count_ops(down, (1, 8, 6, 6))
    executed = sc.count_ops(down, (1, 8, 6, 6), pooled_map="executed")
    assert paper.adds - executed.adds == 4 * 4 * (36 - 9)
    with pytest.raises(ValueError, match="pooled_map='exact'"):
        sc.count_ops(down, (1, 8, 6, 6), pooled_map="exact")
