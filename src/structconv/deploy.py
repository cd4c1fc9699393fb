"""Inference-only rewrites that keep a model's function: BatchNorm folding.

``fold_batchnorm`` folds every eval-mode ``BatchNorm`` that directly follows a convolution
(dense ``nn.ConvNd``, structured or decomposed) into that convolution's weight and bias, the
standard deployment step that ONNX Runtime, TensorRT and ``torch.compile`` also apply.  For a
decomposed layer the scale goes into ``alpha`` (the small conv), so the layer stays decomposed
and its structure is kept: ``s * (A alpha) == A (s * alpha)``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .convert import set_submodule
from .layers import DecomposedConvNd, DecomposedLayer, StructuredLayer, SumPool

__all__ = ["fold_batchnorm"]

_DENSE_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class _LeafTracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (DecomposedLayer, StructuredLayer, SumPool)):
            return True
        return super().is_leaf_module(m, qualname)


def _conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    try:
        graph = _LeafTracer().trace(model)
    except Exception:  # noqa: BLE001 - untraceable model: fall back to Sequential neighbours
        return _sequential_pairs(model)
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BatchNorm):
            continue
        if len(node.args) != 1 or not isinstance(node.args[0], torch.fx.Node):
            continue
        prev = node.args[0]
        if prev.op == "call_module" and len(prev.users) == 1 and _foldable(modules.get(prev.target)):
            pairs.append((prev.target, node.target))
    return pairs


def _sequential_pairs(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (a, ma), (b, mb) in zip(children, children[1:]):
                if _foldable(ma) and isinstance(mb, _BatchNorm):
                    prefix = f"{name}." if name else ""
                    pairs.append((prefix + a, prefix + b))
    return pairs


def _foldable(m) -> bool:
    return isinstance(m, DecomposedConvNd) or (isinstance(m, _DENSE_CONVS) and not isinstance(m, StructuredLayer))


@torch.no_grad()
def _fold(conv: nn.Module, bn: _BatchNorm) -> None:
    target = conv.conv if isinstance(conv, DecomposedConvNd) else conv
    w = target.weight
    mean = bn.running_mean if bn.running_mean is not None else torch.zeros(w.shape[0], device=w.device)
    var = bn.running_var if bn.running_var is not None else torch.ones(w.shape[0], device=w.device)
    scale = torch.rsqrt(var.to(torch.float64) + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.to(torch.float64)
    shift = -mean.to(torch.float64) * scale
    if bn.bias is not None:
        shift = shift + bn.bias.to(torch.float64)
    bias = target.bias.to(torch.float64) * scale + shift if target.bias is not None else shift
    shape = (-1,) + (1,) * (w.dim() - 1)
    target.weight.copy_((w.to(torch.float64) * scale.reshape(shape)).to(w.dtype))
    if target.bias is None:
        target.bias = nn.Parameter(bias.to(w.dtype))
    else:
        target.bias.copy_(bias.to(w.dtype))


def fold_batchnorm(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Fold each eval-mode BatchNorm that follows a conv into that conv; same function.

    Pairs are found by tracing with ``torch.fx`` (structured/decomposed layers are leaves); a
    model that cannot be traced falls back to ``Conv, BatchNorm`` neighbours inside
    ``nn.Sequential``.  The BatchNorm becomes ``nn.Identity``.  Only for inference: raises
    ``ValueError`` on a model in training mode, since training BatchNorm uses batch statistics.
    """
    if model.training:
        raise ValueError("fold_batchnorm: the model is in training mode; call model.eval() first")
    if not inplace:
        model = copy.deepcopy(model)
    for conv_name, bn_name in _conv_bn_pairs(model):
        bn = model.get_submodule(bn_name)
        if not bn.track_running_stats and bn.running_mean is None:
            continue
        _fold(model.get_submodule(conv_name), bn)
        set_submodule(model, bn_name, nn.Identity())
    return model
