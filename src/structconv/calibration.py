"""Data-aware projection of a structurized model onto its structure (issue 16).

The weight-space projection ``W <- A A^+ W`` (Step 2 of Sec. 5.1) is optimal for the weights but
blind to the data: on a trained ResNet20 it removes ~70 % of every layer's weight norm and the
model starts at chance.  :func:`calibrate_` instead chooses each layer's coefficients ``alpha``
to reproduce the *dense* layer's output on calibration images, layer by layer in forward order,
with the input the already-calibrated earlier layers produce (the sequential reconstruction of
He et al. 2017, ThiNet and GPTQ)::

    alpha* = argmin_alpha || Y_dense - layer_alpha(X) ||^2 + ridge * ||alpha||^2

A structured layer is exactly ``small_conv(sum_pool(X), alpha)`` (Prop. 2), so this is linear
least squares in ``alpha``: with ``F`` the patches of the sum-pooled input under the small
kernel, ``alpha* = (F^T F + ridge I)^{-1} F^T Y``.  The Gram matrix ``F^T F`` has one block per
group, shared by the group's output channels, and is accumulated batch by batch in float64, so
memory is ``groups * (c * prod(n))^2 * 8`` bytes per layer (twice: fitting and held-out)
whatever the amount of data.  The ridge is chosen per layer on held-out batches, and a layer
keeps the plain projection where that is better there.  The result is exactly structured
(``W = A alpha*``), so :func:`~structconv.convert.decompose` stays exact.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import validation as v
from ._hooks import capture, default_device, forward_order, read_batches
from .basis import StructuredBasis
from .convert import StructureSpec, restructure_, structure_candidates
from .layers import StructuredConvNd, StructuredLinear
from .layers.conv import DecomposedConvNd
from .layers.linear import DecomposedLinear
from .reporting import format_table

__all__ = [
    "DEFAULT_RIDGES",
    "LayerCalibration",
    "CalibrationReport",
    "calibrate_",
    "FactorizedCalibration",
    "calibrate_factorized_",
]

# Relative to the mean diagonal of each Gram block; the held-out batches pick one per layer.
DEFAULT_RIDGES = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1)
# Bound on the float64 feature matrix built from one chunk of a batch (the batch is split).
_FEATURE_BYTES = 256 * 2**20


@dataclass
class LayerCalibration:
    """How one layer was set: ``method`` is ``"least_squares"`` (with ``ridge``, relative to the
    Gram diagonal) or ``"projection"`` (the weight-space projection was better on held-out data,
    or the layer never ran on the calibration data).  Errors are relative output errors
    ``||Y_dense - Y|| / ||Y_dense||`` on the held-out batches; ``error_projection`` is the
    weight-space projection onto the layer's structure before calibration.

    With ``search_structure``, ``candidates`` structures were tried, ``structure`` (``"c x n"``)
    is the one kept and ``error_own_structure`` the calibrated error of ``own_structure``, the
    structure the layer came with."""

    name: str
    method: str
    error_projection: float
    error_calibrated: float
    ridge: float | None
    samples: int
    gram_bytes: int
    structure: str = ""
    candidates: int = 1
    own_structure: str = ""
    error_own_structure: float | None = None


@dataclass
class CalibrationReport:
    """Per-layer results of :func:`calibrate_`, in forward order."""

    layers: list[LayerCalibration] = field(default_factory=list)
    batches_fit: int = 0
    batches_held_out: int = 0

    def to_dict(self) -> dict:
        return {
            "batches_fit": self.batches_fit,
            "batches_held_out": self.batches_held_out,
            "layers": [asdict(layer) for layer in self.layers],
        }

    @property
    def mean_error_projection(self) -> float:
        return _mean([layer.error_projection for layer in self.layers])

    @property
    def mean_error_calibrated(self) -> float:
        return _mean([layer.error_calibrated for layer in self.layers])

    def __str__(self) -> str:
        searched = any(layer.candidates > 1 for layer in self.layers)
        rows = []
        for layer in self.layers:
            row = [layer.name, layer.method, f"{layer.error_projection:.3f}", f"{layer.error_calibrated:.3f}"]
            row.append("-" if layer.ridge is None else f"{layer.ridge:g}")
            if searched:
                own = layer.own_structure or layer.structure
                row += [
                    own,
                    layer.structure,
                    "-" if layer.error_own_structure is None else f"{layer.error_own_structure:.3f}",
                ]
            rows.append(row)
        head = ["layer", "method", "output error (projection)", "output error (calibrated)", "ridge"]
        if searched:
            head += ["c x n given", "c x n kept", "error (given c x n)"]
        table = format_table([head, *rows], align="llrrr" + ("llr" if searched else ""))
        return (
            f"{table}\nmean relative output error on held-out batches: projection "
            f"{self.mean_error_projection:.3f}, calibrated {self.mean_error_calibrated:.3f} "
            f"({self.batches_fit} batches fitted, {self.batches_held_out} held out)"
        )


def _mean(values: list[float]) -> float:
    values = [x for x in values if math.isfinite(x)]
    return sum(values) / len(values) if values else float("nan")


def _calibratable(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, (StructuredConvNd, StructuredLinear))}


def _features(dec: nn.Module, x: Tensor) -> tuple[Tensor, int, int]:
    """``(F, groups, d)``: the small layer's input patches, ``F`` of shape ``(N, groups * d)``
    so that ``dec(x) = F @ alpha + bias`` group by group (``d = c * prod(n)``)."""
    if isinstance(dec, DecomposedLinear):
        from .pooling import box_sum

        pooled = box_sum(x, -1, dec.window)
        return pooled.reshape(-1, dec.r), 1, dec.r
    conv = dec.conv
    groups = conv.groups
    c = conv.in_channels // groups
    d = c * math.prod(conv.kernel_size)
    nd = len(conv.kernel_size)
    # The identity kernel: feature k of a group is the k-th entry of the flattened (c, *n) patch,
    # extracted by the small conv's own geometry (stride, padding, dilation; any nd).
    eye = torch.eye(d, dtype=x.dtype, device=x.device).reshape(d, c, *conv.kernel_size).repeat(groups, *[1] * (nd + 1))
    conv_fn = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    patches = conv_fn(dec.pool(x), eye, None, conv.stride, conv.padding, conv.dilation, groups)
    return patches.movedim(1, -1).reshape(-1, groups * d), groups, d


def _flat_outputs(dec: nn.Module, y: Tensor) -> Tensor:
    """The dense layer's output as ``(N, out)``, rows matching :func:`_features`."""
    if isinstance(dec, DecomposedLinear):
        return y.reshape(-1, y.shape[-1])
    return y.movedim(1, -1).reshape(-1, y.shape[1])


class _Stats:
    """Per-group Gram ``F^T F``, cross term ``F^T Y`` and ``||Y||^2``, accumulated in float64."""

    def __init__(self, groups: int, d: int, out: int, device) -> None:
        self.groups, self.d, self.out_per_group = groups, d, out // groups
        kw = {"dtype": torch.float64, "device": device}
        self.gram = torch.zeros(groups, d, d, **kw)
        self.cross = torch.zeros(groups, d, self.out_per_group, **kw)
        self.energy = torch.zeros((), **kw)
        self.samples = 0

    def add(self, feats: Tensor, targets: Tensor) -> None:
        f = feats.reshape(feats.shape[0], self.groups, self.d).transpose(0, 1)  # (g, N, d)
        y = targets.reshape(targets.shape[0], self.groups, self.out_per_group).transpose(0, 1)
        self.gram += f.transpose(1, 2) @ f
        self.cross += f.transpose(1, 2) @ y
        self.energy += targets.square().sum()
        self.samples += feats.shape[0]

    def residual(self, alpha: Tensor) -> float:
        """``||Y - F alpha||^2`` from the statistics alone (``alpha``: ``(g, d, out/g)``)."""
        quad = (alpha * (self.gram @ alpha)).sum()
        return float(quad - 2 * (alpha * self.cross).sum() + self.energy)


def _solve(stats: _Stats, ridge: float) -> Tensor:
    diag = stats.gram.diagonal(dim1=1, dim2=2)
    scale = diag.mean(dim=1).clamp_min(torch.finfo(torch.float64).tiny)  # per group
    eye = torch.eye(stats.d, dtype=torch.float64, device=stats.gram.device)
    system = stats.gram + ridge * scale[:, None, None] * eye
    factor, info = torch.linalg.cholesky_ex(system)
    if bool((info != 0).any()):
        return torch.linalg.lstsq(system, stats.cross).solution
    return torch.cholesky_solve(stats.cross, factor)


def _alpha_by_group(small_weight: Tensor, groups: int) -> Tensor:
    """``(out, c, *n)`` coefficients as ``(g, d, out/g)``, the layout of :class:`_Stats`."""
    out = small_weight.shape[0]
    return small_weight.reshape(groups, out // groups, -1).transpose(1, 2).to(torch.float64)


def _small_weight(alpha: Tensor, shape: torch.Size) -> Tensor:
    return alpha.transpose(1, 2).reshape(shape)


def _chunks(x: Tensor, dec: nn.Module) -> Iterable[Tensor]:
    """Slices of the batch whose float64 features stay under :data:`_FEATURE_BYTES`."""
    if x.dim() < 2:  # a Linear on one vector: nothing to split
        return [x]
    per_sample = _features(dec, x[:1])[0].numel() * 8
    return x.split(max(1, _FEATURE_BYTES // max(1, per_sample)))


def calibrate_(
    structured: nn.Module,
    dense: nn.Module,
    data: Iterable,
    *,
    max_batches: int = 8,
    held_out: float = 0.25,
    ridges: Iterable[float] = DEFAULT_RIDGES,
    search_structure: bool = False,
    size_tolerance: float = 0.03,
    device: torch.device | str | None = None,
    progress: Callable[[str], None] | None = None,
) -> CalibrationReport:
    """Set every structured layer of ``structured`` (from :func:`structconv.structurize`) to the
    exactly structured weight that best reproduces the matching layer of ``dense`` on ``data``.

    Args:
        structured: the structurized model, changed in place; its structured layers are
            matched to ``dense`` by name (``structurize`` keeps them).
        dense: the trained model it was made from (not changed).
        data: an iterable of input batches, or of ``(inputs, targets)`` pairs (a DataLoader);
            the targets are not used.  The first ``max_batches`` are read.
        held_out: the fraction of those batches kept out of the fit to choose each layer's
            ridge and whether least squares beats the weight-space projection.
        ridges: candidate ridges, relative to the mean diagonal of each Gram block.
        search_structure: also choose each layer's structure from the data: among the
            ``(c, n)`` that meet the layer's compression ratio and keep at least
            ``1 - size_tolerance`` of its ``c * prod(n)`` (so every layer's multiplications stay
            within ``size_tolerance``), keep the one with the lowest calibrated held-out error
            (ties keep the given one).  The chosen layers are swapped in place and keep their
            Parameters, so an optimizer built on ``structured`` stays valid.  Costs one Gram
            matrix per candidate (up to ``prod(kernel_size)`` of them) while a layer is fitted.
        size_tolerance: see ``search_structure``.
        device: where to compute (default: where ``structured``'s parameters are).
        progress: called with one line per layer.

    Both models run in eval mode (BatchNorm uses its running statistics) and get their
    training flag back.  Returns a :class:`CalibrationReport`; every structured layer ends
    exactly structured, so ``decompose`` afterwards is exact.
    """
    max_batches = v.integer(max_batches, "max_batches", low=2, owner="calibrate_")
    held_out = v.number(held_out, "held_out", low=0.0, high=1.0, low_open=True, high_open=True, owner="calibrate_")
    ridges = v.items(ridges, "ridges", each=lambda r, n: v.number(r, n, low=0.0), owner="calibrate_")
    if not isinstance(search_structure, bool):
        raise v.ArgumentError(
            "{search_structure}={value} must be True or False", value=repr(search_structure), owner="calibrate_"
        )
    size_tolerance = v.number(size_tolerance, "size_tolerance", low=0.0, high=1.0, high_open=True, owner="calibrate_")
    layers = _calibratable(structured)
    dense_modules = dict(dense.named_modules())
    for name, layer in layers.items():
        target = dense_modules.get(name)
        weight = getattr(target, "weight", None)
        if not isinstance(weight, Tensor) or weight.shape != layer.weight.shape:
            raise v.ArgumentError(
                "{dense} has no layer {layer} with weight shape {shape}",
                owner="calibrate_",
                layer=repr(name),
                shape=tuple(layer.weight.shape),
            )
    if device is None:
        device = default_device(structured)
    device = torch.device(device)

    fit, check = read_batches(data, max_batches, held_out, device, "calibrate_")
    batches = fit + check
    report = CalibrationReport(batches_fit=len(fit), batches_held_out=len(check))

    modes = (structured.training, dense.training)
    structured.eval(), dense.eval()
    try:
        order = forward_order(structured, layers, batches[0])
        for name in layers:
            if name not in order:
                layer = layers[name]
                layer.project_()
                nan = float("nan")
                report.layers.append(LayerCalibration(name, "projection", nan, nan, None, 0, 0))
        for index, name in enumerate(order, 1):
            result = _calibrate_layer(
                structured,
                dense,
                name,
                structured.get_submodule(name),
                dense_modules[name],
                fit,
                check,
                ridges,
                size_tolerance if search_structure else None,
            )
            report.layers.append(result)
            if progress is not None:
                kept = f", c x n {result.own_structure} -> {result.structure}" if result.candidates > 1 else ""
                progress(
                    f"[{index}/{len(order)}] {name}: output error {result.error_projection:.3f} (projection) -> "
                    f"{result.error_calibrated:.3f} ({result.method}{kept})"
                )
    finally:
        structured.train(modes[0]), dense.train(modes[1])
    return report


def _candidate_layers(layer: nn.Module, dense_layer: nn.Module, size_tolerance: float) -> list[nn.Module]:
    """Trial copies of ``layer`` for every ``(c, n)`` that meets its ratio and keeps at least
    ``1 - size_tolerance`` of its ``c * prod(n)`` (so of its multiplications), each holding the
    dense weights (the weight-space fallback projects those); the layer's own structure first."""
    basis = layer.basis
    own = StructureSpec(basis.c, tuple(basis.n))
    size = basis.c * math.prod(basis.n)
    ratio = basis.channels * math.prod(basis.kernel_size) / size
    specs = [own] + [
        spec
        for spec in structure_candidates(basis.channels, tuple(basis.kernel_size), ratio)
        if spec != own and spec.c * math.prod(spec.n) >= (1 - size_tolerance) * size
    ]
    trials = []
    for spec in specs:
        trial = restructure_(_Holder(copy.deepcopy(layer)), {"layer": spec}).layer
        with torch.no_grad():
            trial.weight.copy_(dense_layer.weight)
        trials.append(trial)
    return trials


class _Holder(nn.Module):
    """A one-layer parent, so :func:`restructure_` can swap a detached trial layer."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer


def _structure_text(layer: nn.Module) -> str:
    basis = layer.basis
    return "x".join(str(v) for v in (basis.c, *basis.n))


@torch.no_grad()
def _accumulate(structured, dense, layer, dense_layer, trials, fit, check) -> list[dict[str, "_Stats"]]:
    """Statistics of every trial layer on the input ``layer`` sees in ``structured`` (each batch
    captured once, then featurized per trial) against ``dense_layer``'s output."""
    decs = [trial.decompose().to(torch.float64) for trial in trials]
    out = layer.weight.shape[0]
    device = layer.weight.device
    stats = []
    for dec in decs:
        if isinstance(dec, DecomposedConvNd):
            groups = dec.conv.groups
            d = dec.conv.in_channels // groups * math.prod(dec.conv.kernel_size)
        else:
            groups, d = 1, dec.r
        stats.append({"fit": _Stats(groups, d, out, device), "check": _Stats(groups, d, out, device)})
    bias = None if layer.bias is None else layer.bias.detach().to(torch.float64)
    for split, batches in (("fit", fit), ("check", check)):
        for x in batches:
            x_in = capture(structured, layer, x, output=False).to(torch.float64)
            y = _flat_outputs(decs[0], capture(dense, dense_layer, x, output=True).to(torch.float64))
            if bias is not None:
                y = y - bias
            for dec, stat in zip(decs, stats):
                start = 0
                for part in _chunks(x_in, dec):
                    feats, _, _ = _features(dec, part)
                    rows = feats.shape[0]
                    stat[split].add(feats, y[start : start + rows])
                    start += rows
    return stats


def _fit(trial: nn.Module, stats: dict[str, "_Stats"], ridges) -> tuple[Tensor, float, float, float | None]:
    """``(alpha, error of the weight projection, best held-out error, its ridge or None)``."""
    fitted, held = stats["fit"], stats["check"]
    energy = max(float(held.energy), torch.finfo(torch.float64).tiny)

    def error(alpha: Tensor) -> float:
        return math.sqrt(max(held.residual(alpha), 0.0) / energy)

    with torch.no_grad():
        projection = _alpha_by_group(trial.decompose().weight, fitted.groups)
    best_alpha, best_error, best_ridge = projection, error(projection), None
    error_projection = best_error
    for ridge in ridges:
        alpha = _solve(fitted, ridge)
        if not bool(torch.isfinite(alpha).all()):
            continue
        e = error(alpha)
        if e < best_error:
            best_alpha, best_error, best_ridge = alpha, e, ridge
    return best_alpha, error_projection, best_error, best_ridge


@torch.no_grad()
def _calibrate_layer(
    structured, dense, name, layer, dense_layer, fit, check, ridges, size_tolerance: float | None = None
) -> LayerCalibration:
    """Calibrate ``layer`` in place; with ``size_tolerance`` also choose its ``(c, n)`` among the
    candidates of :func:`_candidate_layers`, swapping the chosen structure into ``structured``
    (the Parameters stay the same objects)."""
    if size_tolerance is None or not isinstance(getattr(layer, "basis", None), StructuredBasis):
        trials = [layer]
    else:
        trials = _candidate_layers(layer, dense_layer, size_tolerance)
    stats = _accumulate(structured, dense, layer, dense_layer, trials, fit, check)
    fits = [_fit(trial, stat, ridges) for trial, stat in zip(trials, stats)]
    best = min(range(len(trials)), key=lambda i: (fits[i][2], i))  # ties keep the layer's own structure
    alpha, _, error_calibrated, ridge = fits[best]
    error_projection = fits[0][1]  # the weight-space projection onto the layer's own structure
    chosen = trials[best]
    if chosen is not layer and best != 0:
        basis = chosen.basis
        restructure_(structured, {name: StructureSpec(basis.c, tuple(basis.n))})
        layer = structured.get_submodule(name)
    small = _small_weight(alpha, chosen.decompose().weight.shape)
    layer.weight.copy_(layer.basis.compose(small).to(layer.weight.dtype))
    method = "projection" if ridge is None else "least_squares"
    gram_bytes = sum(2 * stat["fit"].gram.numel() * 8 for stat in stats)
    result = LayerCalibration(
        name, method, error_projection, error_calibrated, ridge, stats[0]["fit"].samples, gram_bytes
    )
    if isinstance(getattr(layer, "basis", None), StructuredBasis):
        result.structure = _structure_text(layer)
    if len(trials) > 1:
        result.candidates = len(trials)
        result.error_own_structure = fits[0][2]
        result.own_structure = _structure_text(trials[0])
    return result


# ------------------------------------------------------------------------------------------
# the fair baseline: weight SVD with Zhang et al.'s asymmetric reconstruction
# ------------------------------------------------------------------------------------------
@dataclass
class FactorizedCalibration:
    """How one factorized layer was set (see :func:`calibrate_factorized_`): ``method`` is
    ``"reconstruction"`` (with ``ridge``) or ``"svd"`` (the weight SVD was better on held-out
    data); errors are relative output errors on the held-out batches."""

    name: str
    method: str
    rank: int
    error_svd: float
    error_calibrated: float
    ridge: float | None
    samples: int


def _factorized_pairs(factorized: nn.Module, dense: nn.Module) -> dict[str, tuple[nn.Module, nn.Module]]:
    """``{name: (pair, dense layer)}`` for every ``nn.Sequential(first, second)`` of
    ``factorized`` (:func:`~structconv.baselines.weight_svd`'s form) standing where ``dense`` has
    an ungrouped ``nn.Conv2d`` or an ``nn.Linear`` of the same input and output sizes."""
    dense_modules = dict(dense.named_modules())
    found = {}
    for name, module in factorized.named_modules():
        layer = dense_modules.get(name)
        if not isinstance(module, nn.Sequential) or len(module) != 2 or type(module) is type(layer):
            continue
        first, second = module
        if isinstance(layer, nn.Linear) and isinstance(first, nn.Linear) and isinstance(second, nn.Linear):
            ok = (first.in_features, second.out_features) == (layer.in_features, layer.out_features)
        elif isinstance(layer, nn.Conv2d) and isinstance(first, nn.Conv2d) and isinstance(second, nn.Conv2d):
            ok = (
                layer.groups == 1
                and first.weight.shape[1:] == layer.weight.shape[1:]
                and second.out_channels == layer.out_channels
                and second.kernel_size == (1, 1)
            )
        else:
            ok = False
        if ok:
            found[name] = (module, layer)
    return found


class _OutputStats:
    """``G = Yh^T Yh``, ``C = Yh^T Y`` and ``E = tr(Y^T Y)`` in float64, with ``Yh`` the dense
    filters' response to the factorized model's input and ``Y`` the dense model's output."""

    def __init__(self, out: int, device) -> None:
        kw = {"dtype": torch.float64, "device": device}
        self.gram = torch.zeros(out, out, **kw)
        self.cross = torch.zeros(out, out, **kw)
        self.energy = torch.zeros((), **kw)
        self.samples = 0

    def add(self, approx: Tensor, exact: Tensor) -> None:
        self.gram += approx.T @ approx
        self.cross += approx.T @ exact
        self.energy += exact.square().sum()
        self.samples += approx.shape[0]

    def residual(self, t: Tensor) -> float:
        """``||Y - Yh T||^2``."""
        return float(self.energy - 2 * (t * self.cross).sum() + (t * (self.gram @ t)).sum())


def _dense_response(layer: nn.Module, x: Tensor) -> Tensor:
    """The dense layer without its bias on ``x``, flattened to ``(N, out)``."""
    w = layer.weight.detach().to(torch.float64)
    if isinstance(layer, nn.Linear):
        return F.linear(x, w).reshape(-1, w.shape[0])
    return layer._conv_forward(x, w, None).movedim(1, -1).reshape(-1, w.shape[0])


@torch.no_grad()
def calibrate_factorized_(
    factorized: nn.Module,
    dense: nn.Module,
    data: Iterable,
    *,
    max_batches: int = 8,
    held_out: float = 0.25,
    ridges: Iterable[float] = DEFAULT_RIDGES,
    device: torch.device | str | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[FactorizedCalibration]:
    """The data-aware form of weight SVD (the fair baseline of :func:`calibrate_`): Zhang et
    al.'s asymmetric reconstruction (TPAMI 2016, "Accelerating Very Deep Convolutional
    Networks", Sec. 3.2-3.3, without the nonlinearity), layer by layer in forward order.

    Every rank-``r`` pair ``nn.Sequential(first, second)`` that
    :func:`~structconv.baselines.weight_svd` put where ``dense`` has a layer ``W`` computes
    ``M (W * x)`` with ``M`` of rank ``r`` (weight SVD: ``M = U_r U_r^T``).  Here ``M`` minimizes
    ``||Y - M (W * x_hat)||^2`` over calibration images, with ``Y`` the dense model's output of
    the layer and ``x_hat`` the input the already calibrated earlier layers produce -- reduced
    rank regression: the least-squares ``M`` (with a ridge chosen on held-out batches), projected
    onto the top ``r`` principal directions of its fitted outputs.  ``first`` becomes
    ``(M's row factor) W``, ``second`` its column factor; the mults do not change.  A layer keeps
    the weight SVD where that is better on held-out batches.  Memory: three ``out x out``
    float64 matrices per layer.  Changes ``factorized`` in place; returns one row per layer.
    """
    owner = "calibrate_factorized_"
    max_batches = v.integer(max_batches, "max_batches", low=2, owner=owner)
    held_out = v.number(held_out, "held_out", low=0.0, high=1.0, low_open=True, high_open=True, owner=owner)
    ridges = v.items(ridges, "ridges", each=lambda r, n: v.number(r, n, low=0.0), owner=owner)
    pairs = _factorized_pairs(factorized, dense)
    if not pairs:
        raise v.ArgumentError("{factorized} has no weight-SVD pair where {dense} has a layer", owner=owner)
    if device is None:
        device = default_device(factorized)
    fit, check = read_batches(data, max_batches, held_out, torch.device(device), owner)
    modes = (factorized.training, dense.training)
    factorized.eval(), dense.eval()
    rows = []
    try:
        order = forward_order(factorized, {name: pair for name, (pair, _) in pairs.items()}, fit[0])
        for index, name in enumerate(order, 1):
            pair, layer = pairs[name]
            rows.append(_reconstruct_pair(factorized, dense, name, pair, layer, fit, check, ridges))
            if progress is not None:
                row = rows[-1]
                progress(
                    f"[{index}/{len(order)}] {name}: output error {row.error_svd:.3f} (weight SVD) -> "
                    f"{row.error_calibrated:.3f} ({row.method})"
                )
    finally:
        factorized.train(modes[0]), dense.train(modes[1])
    return rows


def _reconstruct_pair(factorized, dense, name, pair, layer, fit, check, ridges) -> FactorizedCalibration:
    first, second = pair
    out, rank = layer.weight.shape[0], first.weight.shape[0]
    device = first.weight.device
    stats = {"fit": _OutputStats(out, device), "check": _OutputStats(out, device)}
    bias = None if layer.bias is None else layer.bias.detach().to(torch.float64)
    for split, batches in (("fit", fit), ("check", check)):
        for x in batches:
            x_hat = capture(factorized, pair, x, output=False).to(torch.float64)
            y = capture(dense, layer, x, output=True).to(torch.float64)
            y = y.reshape(-1, out) if isinstance(layer, nn.Linear) else y.movedim(1, -1).reshape(-1, out)
            if bias is not None:
                y = y - bias
            start = 0
            rows_per_sample = max(1, y.shape[0] // max(1, x_hat.shape[0]))
            step = max(1, _FEATURE_BYTES // (8 * out * rows_per_sample))
            for part in x_hat.split(step) if x_hat.dim() > 1 else [x_hat]:
                approx = _dense_response(layer, part)
                stats[split].add(approx, y[start : start + approx.shape[0]])
                start += approx.shape[0]
    fitted, held = stats["fit"], stats["check"]
    energy = max(float(held.energy), torch.finfo(torch.float64).tiny)

    def error(t: Tensor) -> float:
        return math.sqrt(max(held.residual(t), 0.0) / energy)

    w = layer.weight.detach().to(torch.float64).reshape(out, -1)
    u = torch.linalg.svd(w, full_matrices=False)[0][:, :rank]
    best_error, best_ridge = error(u @ u.T), None  # the weight SVD: M = U_r U_r^T
    error_svd, best_factors = best_error, None
    eye = torch.eye(out, dtype=torch.float64, device=device)
    scale = fitted.gram.diagonal().mean().clamp_min(torch.finfo(torch.float64).tiny)
    for ridge in ridges:
        b = torch.linalg.solve(fitted.gram + ridge * scale * eye, fitted.cross)  # least-squares M^T
        if not bool(torch.isfinite(b).all()):
            continue
        # reduced-rank regression: the fitted outputs Yh b, kept on their top-r principal directions
        directions = torch.linalg.eigh(b.T @ fitted.gram @ b)[1][:, -rank:]
        t = b @ directions @ directions.T
        e = error(t)
        if e < best_error:
            best_error, best_ridge, best_factors = e, ridge, (b @ directions, directions)
    if best_factors is not None:
        row_factor, column_factor = best_factors  # M^T = row_factor @ column_factor^T
        first.weight.copy_((row_factor.T @ w).reshape(first.weight.shape).to(first.weight.dtype))
        second.weight.copy_(column_factor.reshape(second.weight.shape).to(second.weight.dtype))
    method = "svd" if best_factors is None else "reconstruction"
    return FactorizedCalibration(name, method, rank, error_svd, best_error, best_ridge, fitted.samples)
