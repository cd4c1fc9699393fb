"""Adds / multiplications / parameters in the paper's accounting.

The convention, reverse-engineered from the paper's baseline rows (it reproduces CIFAR
ResNet56's 125.49M adds / 126.02M mults and ResNet18's 1.81G / 1.82G, see ``docs/ops.md``):

* Conv (dense or structured training form), per output element: ``C/g * prod(k)`` mults and
  ``C/g * prod(k) - 1`` adds, plus one add for a bias.
* Linear ``P x Q``: ``Q`` mults and ``Q - 1`` adds per output, plus one add for a bias.
* BatchNorm (an affine map at inference): 1 mult + 1 add per element.
* Sum-pool (Sec. 4.2): ``prod(window) - 1`` adds per pooled element, where the window is
  ``(C-c+1) x (N-n+1) x ...``; no mults.  Decomposed Linear (Sec. 4.3): ``Q - r`` adds for
  each of the ``r`` pooled features.
* Composite decomposition (Eq. 2): ``sum(beta_m) - 1`` adds per mask sum.
* ReLU, max/avg pooling, residual additions and upsampling are not counted (the paper's
  tables leave them out); they are listed in ``OpsReport.uncounted``.

Counts are for the whole ``input_size`` given (include the batch dimension; use batch 1 for
the paper's per-image numbers).  Parameters are counted once per unique tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .functional import conv_padding
from .layers import DecomposedCompositeConv, DecomposedConvNd, DecomposedLinear, SumPool

__all__ = ["LayerOps", "OpsReport", "count_ops"]


@dataclass
class LayerOps:
    """Counts for one counted module."""

    name: str
    layer_type: str
    adds: int
    mults: int
    params: int


@dataclass
class OpsReport:
    """Totals and per-layer rows of :func:`count_ops`."""

    adds: int
    mults: int
    params: int
    rows: list[LayerOps] = field(default_factory=list)
    uncounted: dict[str, int] = field(default_factory=dict)

    def to_dict(self, *, rows: bool = False) -> dict:
        out = {"adds": self.adds, "mults": self.mults, "params": self.params}
        if rows:
            out["layers"] = [vars(r) for r in self.rows]
        return out

    def __str__(self) -> str:
        lines = [f"{'layer':40s} {'type':22s} {'adds':>14s} {'mults':>14s} {'params':>10s}"]
        for r in self.rows:
            lines.append(f"{r.name[:40]:40s} {r.layer_type[:22]:22s} {r.adds:14,d} {r.mults:14,d} {r.params:10,d}")
        lines.append(f"{'total':63s} {self.adds:14,d} {self.mults:14,d} {self.params:10,d}")
        return "\n".join(lines)


def _own_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


def _conv_ops(module: nn.modules.conv._ConvNd, out: torch.Tensor) -> tuple[int, int]:
    per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
    outputs = out.numel()
    adds = (per_output - 1) * outputs + (outputs if module.bias is not None else 0)
    return adds, per_output * outputs


def _linear_ops(module: nn.Linear, out: torch.Tensor) -> tuple[int, int]:
    outputs = out.numel()
    adds = (module.in_features - 1) * outputs + (outputs if module.bias is not None else 0)
    return adds, module.in_features * outputs


def _paper_pool_adds(module: DecomposedConvNd, inp: torch.Tensor) -> int:
    """Sec. 4.2's pool adds: ``(prod(window) - 1) * c * H1 * W1`` with ``H1 = H + 2p - d(N - n)``,
    the stride-1 pooled map of the padded input (what the paper counts for every layer)."""
    pads = conv_padding(module.padding, module.kernel_size, module.dilation, module.stride)
    pooled = 1
    for size, (before, after), d, k, m in zip(inp.shape[2:], pads, module.dilation, module.kernel_size, module.n):
        pooled *= size + before + after - d * (k - m)
    window = math.prod(module.basis.pool_window)
    return (window - 1) * module.c * module.groups * pooled * inp.shape[0]


def _ops_of(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> tuple[int, int] | None:
    if isinstance(module, nn.modules.conv._ConvNd) and not isinstance(module, nn.modules.conv._ConvTransposeNd):
        return _conv_ops(module, out)
    if isinstance(module, nn.Linear):
        return _linear_ops(module, out)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return out.numel(), out.numel()
    if isinstance(module, SumPool):
        window = module.channel_window * math.prod(module.window)
        return (window - 1) * out.numel(), 0
    if isinstance(module, DecomposedLinear):
        # the pool is inline; its inner nn.Linear is counted on its own
        rows = inp.numel() // module.in_features
        return rows * module.r * (module.window - 1), 0
    if isinstance(module, DecomposedCompositeConv):
        # mask sums E_m: sum(beta_m) - 1 adds each, per output position (Eq. 2, first term)
        masks = module.basis.masks
        per_position = int(masks.reshape(masks.shape[0], -1).sum(1).sub(1).sum().item()) * module.groups
        positions = out.numel() // module.out_channels
        return per_position * positions, 0
    return None


_UNCOUNTED_LEAVES = (
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.GELU,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.Upsample,
    nn.Dropout,
)


_HOOKED = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.modules.batchnorm._BatchNorm,
    SumPool,
    DecomposedLinear,
    DecomposedCompositeConv,
    *_UNCOUNTED_LEAVES,
)


@torch.no_grad()
def count_ops(model: nn.Module, input_size, *, pooled_map: str = "paper") -> OpsReport:
    """Count adds, mults and params of ``model`` on an input of shape ``input_size``.

    ``input_size`` includes the batch dimension, e.g. ``(1, 3, 224, 224)``.  The model runs
    once in eval mode (restored afterwards) on zeros with its parameters' device and dtype.
    See the module docstring for the convention.  ``pooled_map`` chooses how many pooled
    elements a decomposed conv's sum-pool is charged for: ``"paper"`` (Sec. 4.2, the stride-1
    map of the padded input) or ``"executed"`` (the positions the implementation computes,
    fewer for strided layers and where zero padding is left to the small conv).  Returns an
    :class:`OpsReport` with ``.adds``, ``.mults``, ``.params`` and per-layer ``.rows``.
    """
    if pooled_map not in ("paper", "executed"):
        raise ValueError(f"count_ops: pooled_map={pooled_map!r} must be 'paper' or 'executed'")
    try:
        sizes = tuple(input_size)
    except TypeError:
        raise ValueError(
            f"count_ops: input_size={input_size!r} must be a sequence of ints, e.g. (1, 3, 224, 224)"
        ) from None
    if not sizes or any(isinstance(v, bool) or not hasattr(v, "__index__") or v < 1 for v in sizes):
        raise ValueError(
            f"count_ops: input_size={input_size!r} must be positive ints, batch first, e.g. (1, 3, 224, 224)"
        )
    input_size = tuple(int(v) for v in sizes)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    rows: list[LayerOps] = []
    uncounted: dict[str, int] = {}

    # In the paper's convention a decomposed conv's pool is charged by the conv (it knows the
    # padding and kernel), so its SumPool child is not counted on its own.
    paper_pools = (
        {id(m.pool): m for m in model.modules() if isinstance(m, DecomposedConvNd)} if pooled_map == "paper" else {}
    )

    def hook(name):
        def fn(module, args, out):
            inp = args[0] if args else None
            if id(module) in paper_pools:
                ops = (_paper_pool_adds(paper_pools[id(module)], inp), 0)
            else:
                ops = _ops_of(module, inp, out)
            if ops is None:
                key = type(module).__name__
                uncounted[key] = uncounted.get(key, 0) + 1
                return
            rows.append(LayerOps(name, type(module).__name__, int(ops[0]), int(ops[1]), _own_params(module)))

        return fn

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, _HOOKED):
            handles.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(input_size, device=device, dtype=dtype))
    except (RuntimeError, ValueError, IndexError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(
            f"count_ops: {type(model).__name__} cannot run on an input of shape {input_size} ({first}); "
            "input_size includes the batch dimension, e.g. (1, 3, 224, 224)"
        ) from None
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return OpsReport(
        adds=sum(r.adds for r in rows), mults=sum(r.mults for r in rows), params=params, rows=rows, uncounted=uncounted
    )
