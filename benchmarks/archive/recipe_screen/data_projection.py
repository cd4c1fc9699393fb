"""Data-aware projection onto the structured subspace (for fine-tuning a trained dense model).

The Frobenius projection ``A A^+ W`` keeps the weight closest to ``W``; what matters is the
layer's output.  Layer by layer, in forward order, this picks the structured weight ``A alpha``
that best reproduces the DENSE model's pre-activation outputs from the inputs the layer sees in
the (already partly projected) model:

    alpha = argmin_alpha || Xhat A alpha - X W^T ||_F^2 + ridge,     Xhat: inputs in the projected model,
                                                                     X: inputs in the dense model,
    i.e. (A^T G A + rho I) alpha = A^T C W^T,   G = Xhat^T Xhat,  C = Xhat^T X   (accumulated over batches).

Rows of X are unfolded input patches (``F.unfold``) for a conv and input vectors for a Linear
layer.  Layers with groups > 1 fall back to the Frobenius projection.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from structconv.layers import StructuredLayer


class _Stop(Exception):
    pass


def _patches(x: torch.Tensor, m: nn.Module) -> torch.Tensor:
    if isinstance(m, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    cols = F.unfold(x.contiguous(), m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _capture(model: nn.Module, layer: nn.Module, xb: torch.Tensor) -> torch.Tensor:
    box = {}

    def hook(mod, inp):
        box["x"] = inp[0].detach()
        raise _Stop

    h = layer.register_forward_pre_hook(hook)
    try:
        model(xb)
    except _Stop:
        pass
    finally:
        h.remove()
    return box["x"]


@torch.no_grad()
def structured_layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, StructuredLayer)]


def data_aware_project_(model: nn.Module, dense: nn.Module, x: torch.Tensor, n_images: int = 2048, bs: int = 256,
                        ridge: float = 1e-3, seed: int = 0) -> dict:
    """Replace every structured layer's weight (groups == 1) by the output-matching structured weight."""

    model.eval()
    dense.eval()
    dense_mods = dict(dense.named_modules())
    g = torch.Generator().manual_seed(seed + 11)
    calib = x[torch.randperm(len(x), generator=g)[:n_images]].contiguous(memory_format=torch.channels_last)
    report = {}
    for name, m in structured_layers(model):
        if getattr(m, "groups", 1) != 1:
            m.project_()
            report[name] = "frobenius (groups > 1)"
            continue
        dm = dense_mods[name]
        G = C = None
        for i in range(0, n_images, bs):
            xb = calib[i:i + bs]
            ph = _patches(_capture(model, m, xb), m).double()
            pd = _patches(_capture(dense, dm, xb), dm).double()
            G = ph.T @ ph if G is None else G.add_(ph.T @ ph)
            C = ph.T @ pd if C is None else C.add_(ph.T @ pd)
        A = m.basis.matrix(dtype=torch.float64)                     # (d, M)
        W = dm.weight.detach().double().reshape(dm.weight.shape[0], -1)  # (out, d)
        lhs = A.T @ G @ A
        lhs.diagonal().add_(ridge * lhs.diagonal().mean())
        rhs = A.T @ C @ W.T                                            # (M, out)
        alpha = torch.linalg.solve(lhs, rhs)                           # (M, out)
        new = (A @ alpha).T.reshape(m.weight.shape)
        before = float(torch.linalg.vector_norm(W.reshape(m.weight.shape) - m.basis.project(W.reshape(m.weight.shape))))
        m.weight.copy_(new.to(m.weight.dtype))
        report[name] = {"rel_change": float(torch.linalg.vector_norm(new - W.reshape(m.weight.shape)) / torch.linalg.vector_norm(W)),
                        "frob_rel_change": before / float(torch.linalg.vector_norm(W))}
    return report
