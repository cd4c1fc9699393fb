"""int8 weight rounding that compensates its error from data (GPTQ), before a runtime's own
post-training quantizer.

A decomposed model loses more accuracy than its dense model to the same relative int8 weight
rounding (BENCHMARKS.md, "int8: accuracy and weight memory").  GPTQ (Frantar et al., 2023)
rounds one input column at a time and moves the remaining columns to cancel the output error,
weighted by the Gram matrix of the layer's input.  NNCF, ONNX Runtime and PT2E quantize
convolution weights by round-to-nearest only (NNCF's GPTQ is for MatMul weight compression),
so this module does it in PyTorch.  The weights land on the symmetric per-output-channel int8
grid of the original weights (scale ``max|w| / 127``); a runtime that derives its scale from
the rounded weights keeps a row exactly when that row still reaches 127 steps, and re-rounds
it on a slightly finer grid otherwise.
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import validation as v
from ._hooks import capture, default_device, forward_order, read_batches

__all__ = ["gptq_int8_weights", "gptq_int8_weights_", "int8_grid_scale"]

_LEVELS = 127  # symmetric int8, narrow range: -127..127
_CHUNK = 16  # images per im2col block when accumulating a Gram matrix


def int8_grid_scale(weight: Tensor) -> Tensor:
    """The symmetric per-output-channel int8 scale ``max|w| / 127`` (one per output channel)."""
    return weight.detach().abs().flatten(1).amax(1).clamp_min(torch.finfo(weight.dtype).tiny) / _LEVELS


def _columns(module: nn.Module, x: Tensor, group: int) -> Tensor:
    """The rows the layer multiplies by its weight's flattened input axis (im2col for a conv)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    per_group = module.in_channels // module.groups
    x = x[:, group * per_group : (group + 1) * per_group]
    if module.padding_mode != "zeros":
        pad = [p for p in reversed(module.padding) for _ in range(2)]
        x, padding = F.pad(x, pad, mode=module.padding_mode), 0
    else:
        padding = module.padding
    cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _gptq(weight: Tensor, gram: Tensor, damping: float) -> Tensor:
    """GPTQ's column-by-column rounding of ``weight`` (out, in) given the input Gram matrix."""
    w = weight.clone()
    scale = int8_grid_scale(w).unsqueeze(1)
    gram = gram.clone()
    dead = gram.diagonal() == 0  # an input that is always zero: its weight does not matter
    gram[dead, dead] = 1.0
    gram += damping * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    # the upper Cholesky factor of H^-1 gives each step's error propagation (GPTQ, Alg. 1)
    inv_chol = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(gram)), upper=True)
    out = torch.empty_like(w)
    for j in range(w.shape[1]):
        q = (w[:, j : j + 1] / scale).round().clamp(-_LEVELS, _LEVELS) * scale
        out[:, j : j + 1] = q
        err = (w[:, j : j + 1] - q) / inv_chol[j, j]
        w[:, j + 1 :] -= err @ inv_chol[j : j + 1, j + 1 :]
    return out


def gptq_int8_weights_(
    model: nn.Module, data: Iterable, *, max_batches: int = 4, damping: float = 0.01
) -> dict[str, float]:
    """Round every ``nn.Conv2d`` / ``nn.Linear`` weight of ``model`` onto its int8 grid, in
    place, with GPTQ's error compensation, layer by layer in forward order on the inputs the
    already-rounded earlier layers produce.

    ``data`` yields input batches (or ``(inputs, targets)``); ``max_batches`` of them are read
    (at least 2).  Cost: one forward per layer over those batches, the captured input of one
    layer at a time, and per layer and group a float64 Gram matrix of side
    ``in/groups * prod(kernel)`` (accumulated 16 images at a time).  Biases and other modules (the
    sum-pools, BatchNorm) are left as they are, so the result is ready for a runtime's int8
    quantizer (``structconv.deploy(..., precision="int8")``) with BatchNorm already folded.
    Returns each layer's relative output error ``||X (W_q - W)|| / ||X W||`` on the batches.
    """
    v.integer(max_batches, "max_batches", low=2, owner="gptq_int8_weights_")
    v.number(damping, "damping", low=0.0, low_open=True, owner="gptq_int8_weights_")
    device = default_device(model)
    fit, held = read_batches(data, max_batches, 0.0, device, "gptq_int8_weights_")
    x = torch.cat(fit + held)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    errors: dict[str, float] = {}
    was_training = model.training
    model.eval()
    try:
        for name in forward_order(model, layers, x):
            module = layers[name]
            inputs = capture(model, module, x, output=False).double()
            groups = getattr(module, "groups", 1)
            weight = module.weight.detach().double()
            per_group = weight.shape[0] // groups
            rounded, num, den = torch.empty_like(weight), 0.0, 0.0
            for g in range(groups):
                w = weight[g * per_group : (g + 1) * per_group].flatten(1)
                # the Gram matrix accumulated a few images at a time: im2col of a whole
                # calibration set at 224 px would not fit in memory
                gram = torch.zeros(w.shape[1], w.shape[1], dtype=torch.float64, device=device)
                for chunk in inputs.split(_CHUNK):
                    cols = _columns(module, chunk, g)
                    gram += cols.T @ cols
                q = _gptq(w, gram, damping)
                rounded[g * per_group : (g + 1) * per_group] = q.view_as(weight[g * per_group : (g + 1) * per_group])
                # ||X dW||^2 = tr(dW H dW^T), from the same Gram matrix
                diff = q - w
                num += float(((diff @ gram) * diff).sum())
                den += float(((w @ gram) * w).sum())
            with torch.no_grad():
                module.weight.copy_(rounded.to(module.weight.dtype))
            errors[name] = (num / den) ** 0.5 if den > 0 else 0.0
    finally:
        model.train(was_training)
    return errors


def gptq_int8_weights(model: nn.Module, data: Iterable, **kwargs) -> nn.Module:
    """A copy of ``model`` with :func:`gptq_int8_weights_` applied."""
    model = copy.deepcopy(model)
    gptq_int8_weights_(model, data, **kwargs)
    return model
