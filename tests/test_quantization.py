"""GPTQ int8 weight rounding (structconv.quantization): on the int8 grid, no worse than
round-to-nearest on the layer's output, every conv option, and bad input refused."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import structconv as sc
from structconv.quantization import gptq_int8_weights, gptq_int8_weights_, int8_grid_scale
from structconv.validation import ArgumentError


def _rtn(weight: torch.Tensor) -> torch.Tensor:
    scale = int8_grid_scale(weight).view(-1, *[1] * (weight.dim() - 1))
    return (weight / scale).round().clamp(-127, 127) * scale


def _on_grid(weight: torch.Tensor, scale: torch.Tensor) -> bool:
    steps = weight / scale.view(-1, *[1] * (weight.dim() - 1))
    return bool(torch.allclose(steps, steps.round(), atol=1e-6) and steps.abs().max() <= 127 + 1e-6)


@settings(max_examples=25, deadline=None)
@given(
    in_per_group=st.integers(1, 4),
    out_per_group=st.integers(1, 4),
    groups=st.integers(1, 3),
    kernel=st.integers(1, 3),
    stride=st.integers(1, 2),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    padding_mode=st.sampled_from(["zeros", "reflect", "circular"]),
    seed=st.integers(0, 2**16),
)
def test_gptq_conv_is_on_the_int8_grid_and_close_to_rounding_at_worst(
    in_per_group, out_per_group, groups, kernel, stride, padding, dilation, padding_mode, seed
):
    torch.manual_seed(seed)
    size = 9
    if padding_mode != "zeros":
        padding = min(padding, size - 1)
    conv = nn.Conv2d(in_per_group * groups, out_per_group * groups, kernel, stride=stride, padding=padding,
                     dilation=dilation, groups=groups, padding_mode=padding_mode).double()  # fmt: skip
    model = nn.Sequential(conv)
    data = [torch.randn(8, conv.in_channels, size, size, dtype=torch.float64) for _ in range(3)]
    original = conv.weight.detach().clone()
    scale = int8_grid_scale(original)
    x = torch.cat(data)
    reference = model(x).detach()
    bias = conv.bias.detach()
    rtn_model = copy.deepcopy(model)
    with torch.no_grad():
        rtn_model[0].weight.copy_(_rtn(original))
    errors = gptq_int8_weights_(model, data)
    assert set(errors) == {"0"}
    assert _on_grid(conv.weight.detach(), scale)
    gptq_error = (model(x) - reference).norm()
    rtn_error = (rtn_model(x) - reference).norm()
    # greedy, so not below round-to-nearest on every tiny layer, but never far above it
    assert gptq_error <= 1.25 * rtn_error + 1e-12
    assert torch.equal(conv.bias.detach(), bias)  # biases are left to the runtime's quantizer


def test_gptq_on_a_decomposed_model_keeps_the_sum_pools_and_beats_rounding_end_to_end():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 8 * 8, 5)).double()  # fmt: skip
    decomposed = sc.decompose(sc.structurize(dense, 2.0)).eval()
    data = [torch.randn(16, 4, 8, 8, dtype=torch.float64) for _ in range(4)]
    x = torch.cat(data)
    reference = decomposed(x).detach()
    rtn = copy.deepcopy(decomposed)
    for m in rtn.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            with torch.no_grad():
                m.weight.copy_(_rtn(m.weight))
    gptq = gptq_int8_weights(decomposed, data)  # a copy: the original is kept
    assert torch.equal(decomposed(x), reference)
    pools_before = [m for m in decomposed.modules() if type(m).__name__ == "SumPool"]
    pools_after = [m for m in gptq.modules() if type(m).__name__ == "SumPool"]
    assert len(pools_after) == len(pools_before) > 0
    assert (gptq(x) - reference).norm() < (rtn(x) - reference).norm()


def test_gptq_clearly_beats_rounding_on_a_wide_layer_with_correlated_inputs():
    torch.manual_seed(1)
    conv = nn.Conv2d(32, 16, 3, padding=1).double()
    mixing = torch.randn(32, 4, dtype=torch.float64)  # inputs on a 4-dim subspace: correlated channels
    data = [torch.einsum("ck,bkhw->bchw", mixing, torch.randn(8, 4, 10, 10, dtype=torch.float64)) for _ in range(3)]
    x = torch.cat(data)
    model = nn.Sequential(conv)
    reference = model(x).detach()
    rtn = copy.deepcopy(model)
    with torch.no_grad():
        rtn[0].weight.copy_(_rtn(conv.weight))
    errors = gptq_int8_weights_(model, data)
    gptq_error = (model(x) - reference).norm() / (reference - conv.bias.view(1, -1, 1, 1)).norm()
    assert gptq_error < 0.5 * (rtn(x) - reference).norm() / (reference - conv.bias.view(1, -1, 1, 1)).norm()
    assert errors["0"] == pytest.approx(float(gptq_error), rel=1e-6)


def test_gptq_refuses_bad_arguments_in_one_line():
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ArgumentError, match="max_batches"):
        gptq_int8_weights_(model, [torch.randn(2, 3)] * 3, max_batches=1)
    with pytest.raises(ArgumentError, match="damping"):
        gptq_int8_weights_(model, [torch.randn(2, 3)] * 3, damping=0.0)
    with pytest.raises(ArgumentError, match="at least 2"):
        gptq_int8_weights_(model, [torch.randn(2, 3)])
