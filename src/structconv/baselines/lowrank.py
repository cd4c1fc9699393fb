"""Low-rank factorization baselines: weight SVD and spatial SVD, at a target multiplication count.

The two SVD compressions of AIMET (Qualcomm's model-efficiency toolkit) and the paper's
WeightSVD baseline, computed with ``torch.linalg.svd`` from the trained dense weights:

* **weight SVD**: ``Conv2d(C, O, k x k, stride s, padding p)`` becomes
  ``Conv2d(C, r, k x k, stride s, padding p, bias=False)`` then ``Conv2d(r, O, 1)``, from
  ``W.reshape(O, C*k*k) = U S V^T`` truncated to rank ``r``; ``Linear(Q, P)`` becomes
  ``Linear(Q, r, bias=False)`` then ``Linear(r, P)``.
* **spatial SVD**: the conv becomes ``Conv2d(C, r, (k, 1), stride (s, 1), padding (p, 0))``
  then ``Conv2d(r, O, (1, k), stride (1, s), padding (0, p))``, from the SVD of ``W``
  rearranged to ``(C*k, O*k)``, rows indexed by ``(c, kh)`` and columns by ``(o, kw)``.

Either way the singular values are split as ``sqrt(S)`` into both factors, the original bias
goes to the second factor, and at full rank the pair computes the dense layer exactly.

Rank allocation: one rank *ratio* for all layers, found by bisection so the whole model hits
the target mults (AIMET's greedy per-layer search over a validation metric is not
reproduced: it needs data and an evaluation loop, and a uniform ratio is the textbook
baseline).  Layer ``i`` gets ``round(ratio * full_rank_i)``; where layers of the same size
would cross a rounding threshold together they are taken one at a time
(:func:`~structconv.baselines._matching.rounding_order`), so the total moves in single-layer
steps and lands within ±3 % of the target.  A layer is factorized only where that costs
fewer mults than the dense layer; depthwise / grouped convs and layers no rank can make
cheaper are left dense, and no rank exceeds full rank.

Why not an existing library: AIMET's PyTorch compression features (spatial SVD, weight SVD,
channel pruning) are frozen upstream and pull in its whole toolchain; tensorly-torch's
factorized convolutions rebuild the dense kernel in their default forward pass, so they save
parameters but not multiplications, which is what this comparison measures.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..convert import FilterFn, set_submodule
from ._matching import (
    TOLERANCE,
    check_target,
    closest_step,
    eval_forward,
    input_size,
    miss,
    mults_of,
    rounding_order,
    sizes_after,
    within,
)

__all__ = ["weight_svd", "spatial_svd", "factor_weight_svd", "factor_spatial_svd"]


def _svd_split(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` with ``A @ B`` the best rank-``rank`` approximation of ``matrix``, ``sqrt(S)`` in each."""
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def _check_rank(rank, full: int, who: str) -> None:
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= full:
        raise ValueError(f"{who}: rank={rank!r} must be an integer in [1, {full}] (full rank)")


def _numeric_padding(conv: nn.Conv2d) -> tuple[int, int] | None:
    """The conv's padding as two ints, or None where it cannot be split per axis (asymmetric 'same')."""
    if not isinstance(conv.padding, str):
        return tuple(conv.padding)
    if conv.padding == "valid":
        return (0, 0)
    totals = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
    return None if any(t % 2 for t in totals) else tuple(t // 2 for t in totals)


def _new_like(cls, *args, like: torch.Tensor, **kwargs) -> nn.Module:
    return cls(*args, **kwargs, device=like.device, dtype=like.dtype)


def factor_weight_svd(layer: nn.Module, rank: int) -> nn.Sequential:
    """Weight-SVD factorization of an ``nn.Conv2d`` (``groups=1``) or ``nn.Linear`` at ``rank``.

    Conv: ``W.reshape(O, C*kh*kw) ~ (U_r sqrt(S_r)) (sqrt(S_r) V_r^T)``.  ``sqrt(S_r) V_r^T``
    becomes the first conv (the original kernel size, stride, padding, dilation; ``r``
    outputs, no bias), ``U_r sqrt(S_r)`` a ``1x1`` conv to ``O`` outputs with the original
    bias.  Linear likewise: ``Linear(Q, r, bias=False)`` then ``Linear(r, P)``.  Exact at full
    rank ``min(O, C*kh*kw)`` (``min(P, Q)``).
    """
    weight = layer.weight.detach()
    with torch.no_grad():
        if isinstance(layer, nn.Linear):
            full = min(weight.shape)
            _check_rank(rank, full, "factor_weight_svd")
            left, right = _svd_split(weight, rank)
            first = _new_like(nn.Linear, layer.in_features, rank, bias=False, like=weight)
            second = _new_like(nn.Linear, rank, layer.out_features, bias=layer.bias is not None, like=weight)
        elif isinstance(layer, nn.Conv2d) and layer.groups == 1:
            out_ch, in_ch, kh, kw = weight.shape
            _check_rank(rank, min(out_ch, in_ch * kh * kw), "factor_weight_svd")
            left, right = _svd_split(weight.reshape(out_ch, -1), rank)
            first = _new_like(
                nn.Conv2d,
                in_ch,
                rank,
                (kh, kw),
                stride=layer.stride,
                padding=layer.padding,
                dilation=layer.dilation,
                bias=False,
                padding_mode=layer.padding_mode,
                like=weight,
            )
            second = _new_like(nn.Conv2d, rank, out_ch, 1, bias=layer.bias is not None, like=weight)
            right, left = right.reshape(rank, in_ch, kh, kw), left.reshape(out_ch, rank, 1, 1)
        else:
            raise ValueError(f"factor_weight_svd: {layer!r} is not an nn.Linear or an ungrouped nn.Conv2d")
        first.weight.copy_(right)
        second.weight.copy_(left)
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


def factor_spatial_svd(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    """Spatial-SVD factorization (AIMET's) of an ungrouped, zero-padded ``nn.Conv2d`` at ``rank``.

    ``W[o, c, i, j]`` rearranged to the ``(C*kh, O*kw)`` matrix ``M[(c, i), (o, j)]``, and
    ``M ~ (U_r sqrt(S_r)) (sqrt(S_r) V_r^T)``: a vertical ``(kh, 1)`` conv with stride
    ``(s_h, 1)`` and padding ``(p_h, 0)`` to ``r`` channels, then a horizontal ``(1, kw)`` conv
    with stride ``(1, s_w)``, padding ``(0, p_w)`` and the original bias.  Exact at full rank
    ``min(C*kh, O*kw)``: zero padding commutes with the split (the vertical conv has no bias,
    so padded columns stay zero).
    """
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or conv.padding_mode != "zeros":
        raise ValueError(f"factor_spatial_svd: {conv!r} is not an ungrouped, zero-padded nn.Conv2d")
    padding = _numeric_padding(conv)
    if padding is None:
        raise ValueError(f"factor_spatial_svd: {conv!r} pads asymmetrically ('same' with an even kernel)")
    weight = conv.weight.detach()
    out_ch, in_ch, kh, kw = weight.shape
    _check_rank(rank, min(in_ch * kh, out_ch * kw), "factor_spatial_svd")
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, padding, conv.dilation
    with torch.no_grad():
        left, right = _svd_split(weight.permute(1, 2, 0, 3).reshape(in_ch * kh, out_ch * kw), rank)
        vertical = _new_like(
            nn.Conv2d, in_ch, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), bias=False, like=weight
        )
        horizontal = _new_like(
            nn.Conv2d,
            rank,
            out_ch,
            (1, kw),
            stride=(1, sw),
            padding=(0, pw),
            dilation=(1, dw),
            bias=conv.bias is not None,
            like=weight,
        )
        # left[(c, i), r] -> vertical.weight[r, c, i, 0]; right[r, (o, j)] -> horizontal.weight[o, r, 0, j]
        vertical.weight.copy_(left.reshape(in_ch, kh, rank).permute(2, 0, 1).unsqueeze(-1))
        horizontal.weight.copy_(right.reshape(rank, out_ch, kw).permute(1, 0, 2).unsqueeze(2))
        if conv.bias is not None:
            horizontal.bias.copy_(conv.bias)
    return nn.Sequential(vertical, horizontal)


@dataclass
class _Candidate:
    name: str
    layer: nn.Module
    full_rank: int
    dense_mults: int
    mults_per_rank: int
    spatial: bool  # factorize with the spatial formula (else weight SVD)

    def mults(self, rank: int) -> int:
        """What the layer costs at ``rank``: factorized only where that is cheaper."""
        return min(self.dense_mults, rank * self.mults_per_rank)


def _record_shapes(model: nn.Module, example_input: torch.Tensor) -> dict[str, tuple]:
    """``name -> (input shape, output shape, calls)`` of every Conv2d / Linear on one forward pass."""
    shapes: dict[str, tuple] = {}

    def hook(name):
        def fn(module, args, out):
            calls = shapes[name][2] + 1 if name in shapes else 1
            shapes[name] = (tuple(args[0].shape), tuple(out.shape), calls)

        return fn

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    eval_forward(model, example_input, [(m, hook(n)) for n, m in layers])
    return shapes


def _candidates(model: nn.Module, example_input: torch.Tensor, filter_fn, spatial: bool) -> list[_Candidate]:
    shapes = _record_shapes(model, example_input)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    classifier = linears[-1] if linears else None
    found = []
    for name, layer in model.named_modules():
        if name not in shapes or shapes[name][2] != 1:  # unused, or shared by several call sites
            continue
        if filter_fn is None:
            if name == classifier:
                continue
        elif not filter_fn(layer, name):
            continue
        (in_shape, out_shape, _) = shapes[name]
        if isinstance(layer, nn.Linear):
            rows = math.prod(out_shape) // layer.out_features
            p, q = layer.out_features, layer.in_features
            cand = _Candidate(name, layer, min(p, q), rows * p * q, rows * (p + q), False)
        elif layer.groups != 1:  # depthwise / grouped: the factorization would be dense across groups
            continue
        else:
            out_ch, in_ch, kh, kw = layer.weight.shape
            positions = math.prod(out_shape) // out_ch  # N * Ho * Wo
            dense = positions * in_ch * kh * kw * out_ch
            use_spatial = spatial and (kh, kw) != (1, 1)
            if use_spatial:
                if layer.padding_mode != "zeros" or _numeric_padding(layer) is None:
                    continue
                # the vertical conv runs at the output height but the full input width
                vertical_positions = out_shape[0] * out_shape[2] * in_shape[3]
                per_rank = vertical_positions * in_ch * kh + positions * kw * out_ch
                cand = _Candidate(name, layer, min(in_ch * kh, out_ch * kw), dense, per_rank, True)
            else:
                per_rank = positions * (in_ch * kh * kw + out_ch)
                cand = _Candidate(name, layer, min(out_ch, in_ch * kh * kw), dense, per_rank, False)
        if cand.mults_per_rank < cand.dense_mults:  # rank 1 must already save mults
            found.append(cand)
    return found


def _factorize(model, example_input, target_mults, *, filter_fn, tolerance, inplace, spatial: bool, who: str):
    size = input_size(example_input)
    if filter_fn is not None and not callable(filter_fn):
        raise ValueError(f"{who}: filter_fn={filter_fn!r} must be a callable (module, fqn) -> bool")
    dense = mults_of(model, size)
    target = check_target(target_mults, dense, tolerance, who)
    work = model if inplace else copy.deepcopy(model)
    if within(dense, target, tolerance):
        return work
    cands = _candidates(work, example_input, filter_fn, spatial)
    if not cands:
        raise miss(who, target, dense, tolerance, "no layer can be factorized into fewer mults")
    fixed = dense - sum(c.dense_mults for c in cands)
    full = [c.full_rank for c in cands]
    order = rounding_order(full)

    def total(step: int) -> int:
        return fixed + sum(c.mults(r) for c, r in zip(cands, sizes_after(full, order, step)))

    step, predicted = closest_step(total, len(order), target)
    if not within(predicted, target, tolerance):
        why = "even rank 1 in every factorizable layer costs more" if predicted > target else "rank steps too coarse"
        raise miss(who, target, predicted, tolerance, why)
    for cand, rank in zip(cands, sizes_after(full, order, step)):
        if rank * cand.mults_per_rank < cand.dense_mults:
            factor = factor_spatial_svd if cand.spatial else factor_weight_svd
            set_submodule(work, cand.name, factor(cand.layer, rank))
    reached = mults_of(work, size)
    if reached != predicted:  # the per-layer formulas above must agree with count_ops
        raise RuntimeError(f"{who}: predicted {predicted:,} mults but count_ops counts {reached:,}")
    return work


def weight_svd(
    model: nn.Module,
    example_input: torch.Tensor,
    target_mults: float,
    *,
    filter_fn: FilterFn | None = None,
    tolerance: float = TOLERANCE,
    inplace: bool = False,
) -> nn.Module:
    """Factorize a (trained) model's layers by weight SVD until it costs ``target_mults`` mults.

    Every ungrouped ``nn.Conv2d`` and every ``nn.Linear`` that ``filter_fn(module, fqn)``
    accepts (default: all but the classifier, the model's last ``nn.Linear``) gets the same
    rank ratio (see the module docstring); the mults (:func:`structconv.count_ops` on
    ``example_input``'s shape) end within ``tolerance`` (±3 %) of ``target_mults``, else
    ``ValueError`` naming both.  Returns the model with factorized layers as two-layer
    ``nn.Sequential``\\ s (a copy unless ``inplace``).
    """
    return _factorize(
        model,
        example_input,
        target_mults,
        filter_fn=filter_fn,
        tolerance=tolerance,
        inplace=inplace,
        spatial=False,
        who="weight_svd",
    )


def spatial_svd(
    model: nn.Module,
    example_input: torch.Tensor,
    target_mults: float,
    *,
    filter_fn: FilterFn | None = None,
    tolerance: float = TOLERANCE,
    inplace: bool = False,
) -> nn.Module:
    """Factorize a (trained) model by spatial SVD until it costs ``target_mults`` mults.

    Convs with a kernel larger than ``1x1`` get AIMET's spatial SVD (a ``(k, 1)`` then a
    ``(1, k)`` conv).  ``1x1`` convs and ``nn.Linear`` layers have no spatial extent to split
    -- spatial SVD of a ``1x1`` kernel *is* the weight-SVD factorization -- so they are
    factorized by weight SVD with the same rank ratio rather than left alone: every layer then
    shares the compression (MobileNetV2 is almost all ``1x1`` convs).  Pass ``filter_fn`` to
    leave them dense.  Larger convs with a non-zero ``padding_mode`` or an asymmetric
    ``padding="same"`` (even kernel) stay dense: the split is exact only for zero padding that
    divides per axis.  Otherwise as :func:`weight_svd`.
    """
    return _factorize(
        model,
        example_input,
        target_mults,
        filter_fn=filter_fn,
        tolerance=tolerance,
        inplace=inplace,
        spatial=True,
        who="spatial_svd",
    )
