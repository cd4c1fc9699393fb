"""Model conversion: plan -> structurize (training form) -> decompose (deployment form).

Shaped like torchao's ``quantize_(model, config, filter_fn)``: :func:`plan` decides a
structure ``(c, n)`` for every eligible layer from a target compression ratio (or explicit
per-layer overrides) and returns a printable report; :func:`structurize` applies it;
:func:`decompose` replaces every structured layer by its sum-pool + small-layer form.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Union

import torch
from torch import nn

from .basis import StructuredBasis
from .layers import STRUCTURED_CONV, DecomposedLayer, StructuredLayer, StructuredLinear, orthonormalize_
from .reporting import format_table

__all__ = [
    "FilterFn",
    "StructureSpec",
    "LayerPlan",
    "StructurePlan",
    "structure_candidates",
    "choose_structure",
    "plan",
    "structurize",
    "decompose",
    "to_direct",
    "DIRECT_INITS",
    "set_submodule",
    "restructure_",
    "StructureWarning",
    "UnstructuredError",
    "DEFAULT_TOLERANCE",
]

FilterFn = Callable[[nn.Module, str], bool]

_DENSE_TO_STRUCTURED = {nn.Conv1d: STRUCTURED_CONV[1], nn.Conv2d: STRUCTURED_CONV[2], nn.Conv3d: STRUCTURED_CONV[3]}
_PREFERENCES = ("channels", "spatial")
# Subclasses whose forward is exactly the parent's (checked by qualified name, so timm is not
# imported): they convert like the parent.
_EQUIVALENT_LINEAR = {"timm.layers.linear.Linear"}


def _is_linear(module: nn.Module) -> bool:
    cls = type(module)
    return cls is nn.Linear or f"{cls.__module__}.{cls.__qualname__}" in _EQUIVALENT_LINEAR


def _index(value, name: str) -> int:
    """An integer-like ``value`` (int, numpy integer, 0-d integer tensor) as an int; bools,
    floats and strings raise ``ValueError``."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise ValueError(f"StructureSpec: {name}={value!r} must be an int")
    return int(value.__index__())


@dataclass(frozen=True)
class StructureSpec:
    """Structure of one layer: ``c`` channels (``r`` for Linear) and small-kernel size ``n``.

    ``n`` is empty for Linear layers.  ``StructureSpec(32, (3, 3))`` on a 64-channel 3x3 conv
    means a ``33 x 1 x 1`` sum-pool followed by a ``32 x 3 x 3`` conv (ratio 2).
    """

    c: int
    n: int | tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "c", _index(self.c, "c"))
        if self.c < 1:
            raise ValueError(f"StructureSpec: c={self.c!r} must be a positive int")
        if isinstance(self.n, (str, bytes)):
            raise ValueError(f"StructureSpec: n={self.n!r} must be an int or a tuple of ints")
        if hasattr(self.n, "__index__"):
            object.__setattr__(self, "n", _index(self.n, "n"))
        else:
            try:
                object.__setattr__(self, "n", tuple(_index(v, "n") for v in self.n))
            except TypeError:
                raise ValueError(f"StructureSpec: n={self.n!r} must be an int or a tuple of ints") from None

    def resolved(self, kernel_size: tuple[int, ...]) -> "StructureSpec":
        """The spec with an int ``n`` repeated for every kernel axis (as ``nn.Conv2d`` does)."""
        if isinstance(self.n, int):
            return StructureSpec(self.c, (self.n,) * len(kernel_size))
        return self


Override = Union[StructureSpec, float, int, tuple, None]


@dataclass
class LayerPlan:
    """The decision for one eligible (or rejected) layer."""

    name: str
    layer_type: str
    channels: int  # input channels per group (in_features for Linear)
    kernel_size: tuple[int, ...]
    spec: StructureSpec | None
    reason: str = ""

    @property
    def ratio(self) -> float:
        """Achieved compression ratio ``C prod(k) / (c prod(n))`` (1.0 when skipped)."""
        if self.spec is None:
            return 1.0
        return self.channels * math.prod(self.kernel_size) / (self.spec.c * math.prod(self.spec.n))


@dataclass
class StructurePlan:
    """Per-layer structures chosen for a model; ``print(plan)`` shows what happens to each layer."""

    layers: list[LayerPlan] = field(default_factory=list)
    requested_ratio: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def structured(self) -> list[LayerPlan]:
        return [p for p in self.layers if p.spec is not None]

    @property
    def skipped(self) -> list[LayerPlan]:
        return [p for p in self.layers if p.spec is None]

    def specs(self) -> dict[str, StructureSpec]:
        return {p.name: p.spec for p in self.structured}

    def __str__(self) -> str:
        rows = [("layer", "type", "C/g x kernel", "c x n", "ratio", "note")]
        for p in self.layers:
            shape = "x".join(str(v) for v in (p.channels, *p.kernel_size))
            small = "-" if p.spec is None else "x".join(str(v) for v in (p.spec.c, *p.spec.n))
            rows.append((p.name or "<root>", p.layer_type, shape, small, f"{p.ratio:.2f}", p.reason))
        head = f"StructurePlan: {len(self.structured)} structured, {len(self.skipped)} left dense"
        if self.requested_ratio is not None:
            head += f" (requested ratio {self.requested_ratio:g})"
        return "\n".join([head, format_table(rows), *(f"note: {n}" for n in self.notes)])


def check_ratio(ratio, where: str) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio):
        raise ValueError(f"{where}: ratio={ratio!r} must be a finite number >= 1")
    if ratio <= 0:
        raise ValueError(f"{where}: ratio={ratio} must be positive (a compression ratio, e.g. 2.0)")
    if ratio < 1:
        raise ValueError(f"{where}: ratio={ratio} < 1 would enlarge the layer; use a ratio >= 1")
    return float(ratio)


def structure_candidates(channels: int, kernel_size: tuple[int, ...], ratio: float) -> list[StructureSpec]:
    """For every small-kernel size ``n``, the largest ``c`` whose ratio ``C prod(k) / (c prod(n))``
    is at least ``ratio`` (sizes where even ``c = 1`` is too large are left out).  The one
    enumeration behind :func:`choose_structure` (the plan) and :func:`structconv.speed_plan`."""
    ratio = check_ratio(ratio, "structure_candidates")
    full = channels * math.prod(kernel_size)
    budget = full / ratio * (1 + 1e-9)  # largest admissible c * prod(n)
    found = []
    for n in _all_sizes(kernel_size):
        c = min(channels, int(budget // math.prod(n)))
        if c >= 1:
            found.append(StructureSpec(c, n))
    return found


def choose_structure(
    channels: int, kernel_size: tuple[int, ...], ratio: float, *, prefer: str = "channels"
) -> tuple[StructureSpec, str]:
    """The ``(c, n)`` with the most degrees of freedom whose ratio is at least ``ratio``.

    Among equally large choices, ``prefer='channels'`` keeps the kernel size (``n = k``, pool
    over channels) and ``prefer='spatial'`` keeps the channels.  If no choice reaches
    ``ratio`` the most compressed one is returned, and the note says so.
    """
    ratio = check_ratio(ratio, "choose_structure")
    if prefer not in _PREFERENCES:
        raise ValueError(f"prefer={prefer!r} must be one of {_PREFERENCES}")
    full = channels * math.prod(kernel_size)
    best, best_key = None, None
    for spec in structure_candidates(channels, kernel_size, ratio):
        spatial = math.prod(spec.n)
        key = (spec.c * spatial, spatial if prefer == "channels" else spec.c, min(spec.n) if spec.n else 0)
        if best_key is None or key > best_key:
            best, best_key = spec, key
    if best is None:
        smallest = StructureSpec(1, (1,) * len(kernel_size))
        return smallest, f"max ratio {full:g} < requested {ratio:g}"
    return best, ""


def _all_sizes(kernel_size: tuple[int, ...]) -> Iterable[tuple[int, ...]]:
    if not kernel_size:
        yield ()
        return
    for first in range(1, kernel_size[0] + 1):
        for rest in _all_sizes(kernel_size[1:]):
            yield (first, *rest)


def describe_layer(module: nn.Module) -> tuple[str, int, tuple[int, ...]] | None:
    """(type name, channels per group, kernel size) for a convertible layer, else None."""
    if type(module) in _DENSE_TO_STRUCTURED:
        return type(module).__name__, module.in_channels // module.groups, tuple(module.kernel_size)
    if _is_linear(module):
        return "Linear", module.in_features, ()
    return None


def _unsupported(module: nn.Module) -> str | None:
    if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and describe_layer(module) is None:
        return f"unsupported layer type {type(module).__module__}.{type(module).__qualname__}"
    return None


def _coerce_override(value: Override, name: str, kernel_size: tuple[int, ...]) -> StructureSpec | float | None:
    if value is None or isinstance(value, StructureSpec):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return check_ratio(value, f"layer '{name}'")
    if isinstance(value, tuple) and len(value) == 2:
        c, n = value
        return StructureSpec(c, n if kernel_size else ())
    raise ValueError(f"layer '{name}': override {value!r} must be a StructureSpec, a (c, n) tuple, a ratio or None")


def _match_override(name: str, overrides: Mapping[str, Override], used: set[str]):
    if name in overrides:
        used.add(name)
        return True, overrides[name]
    for pattern, value in overrides.items():
        if fnmatch.fnmatchcase(name, pattern):
            used.add(pattern)
            return True, value
    return False, None


def plan(
    model: nn.Module,
    ratio: float = 2.0,
    *,
    filter_fn: FilterFn | None = None,
    overrides: Mapping[str, Override] | None = None,
    prefer: str = "channels",
    example_inputs=None,
    check_usage: bool = True,
) -> StructurePlan:
    """Decide the structure of every eligible Conv1d/2d/3d and Linear layer of ``model``.

    Args:
        ratio: target compression ratio ``C prod(k) / (c prod(n))`` per layer (>= 1).
        filter_fn: ``filter_fn(module, fqn) -> bool`` selects layers (torchao style).
        overrides: per-layer choices by qualified name or ``fnmatch`` pattern (exact names
            win, then the first matching pattern): a :class:`StructureSpec`, a ``(c, n)``
            tuple, a ratio, or ``None`` to leave the layer dense.
        prefer: tie-break between equally compact choices, see :func:`choose_structure`.
        example_inputs: an input of ``model`` (a tensor, a tuple of arguments or a dict of
            keyword arguments), to check how each layer's parameters are used in a real forward.
        check_usage: leave dense the layers that cannot be replaced safely -- a parameter read
            outside the layer's own forward (torchvision's Swin calls ``F.linear`` on its
            child's weight), a weight tied to another module, a layer that never runs -- found by
            :func:`structconv.usage.find_unsafe_layers` on ``example_inputs``, or by
            :func:`~structconv.usage.find_unsafe_layers_static` (``torch.fx``) without them (a
            model fx cannot trace is then not checked: pass ``example_inputs``).  Only layers
            whose structure the ratio decides are checked; an explicit ``StructureSpec``
            override is kept as given.

    Layers whose best structure would not compress (ratio 1), layers rejected by
    ``filter_fn``, unsafe layers and unsupported subclasses are listed in the plan with the reason.
    """
    ratio = check_ratio(ratio, "plan")
    overrides = dict(overrides or {})
    used: set[str] = set()
    result = StructurePlan(requested_ratio=ratio)
    converted: list[str] = []  # prefixes of structured / decomposed layers: their children are theirs
    unsafe: dict[str, str] | None = None if check_usage else {}

    def unsafe_reason(name: str) -> str | None:
        nonlocal unsafe
        if unsafe is None:  # computed once, and only if a layer's structure comes from a ratio
            from .usage import find_unsafe_layers, find_unsafe_layers_static

            if example_inputs is not None:
                unsafe = find_unsafe_layers(model, example_inputs)
            else:
                unsafe = find_unsafe_layers_static(model)
                if unsafe is None:
                    unsafe = {}
                    result.notes.append(
                        "torch.fx cannot trace this model, so how its layers' parameters are used "
                        "was not checked; pass example_inputs to check it in a real forward"
                    )
        return unsafe.get(name)

    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in converted):
            continue
        if isinstance(module, (StructuredLayer, DecomposedLayer)):
            converted.append(f"{name}." if name else "")
            if isinstance(module, StructuredLayer) and (filter_fn is None or filter_fn(module, name)):
                raise ValueError(
                    f"layer '{name}' is already a {type(module).__name__}; structurize the dense model "
                    "(structconv.load() rebuilds a saved structured model by itself)"
                )
            continue
        unsupported = _unsupported(module)
        info = describe_layer(module)
        if info is None:
            if unsupported:
                result.layers.append(LayerPlan(name, type(module).__name__, 0, (), None, unsupported))
            continue
        layer_type, channels, kernel = info
        entry = LayerPlan(name, layer_type, channels, kernel, None)
        result.layers.append(entry)
        if filter_fn is not None and not filter_fn(module, name):
            entry.reason = "excluded by filter_fn"
            continue
        matched, value = _match_override(name, overrides, used)
        target: StructureSpec | float | None = ratio
        if matched:
            target = _coerce_override(value, name, kernel)
            if target is None:
                entry.reason = "excluded by override"
                continue
        if isinstance(target, StructureSpec):
            entry.spec, entry.reason = target.resolved(kernel), "override"
            _validate_spec(entry, module)
            continue
        spec, note = choose_structure(channels, kernel, target, prefer=prefer)
        if channels * math.prod(kernel) == spec.c * math.prod(spec.n):
            entry.reason = "cannot be compressed (1 channel per group and a 1-tap kernel)"
            continue
        reason = unsafe_reason(name) if name else None  # a layer given alone runs its own forward
        if reason:
            entry.reason = f"unsafe to replace: {reason}"
            continue
        entry.spec, entry.reason = spec, note
    fusers = sorted(
        {
            type(m).__name__
            for m in model.modules()
            if callable(getattr(m, "reparameterize", None)) or callable(getattr(m, "fuse", None))
        }
    )
    if fusers and result.structured:
        result.notes.append(
            f"{', '.join(fusers[:3])} can fuse branches (reparameterize/fuse), which reads conv "
            "weights outside forward: fuse first (timm.utils.reparameterize_model), then structurize"
        )
    unused = sorted(set(overrides) - used)
    if unused:
        names = [p.name for p in result.layers if p.layer_type in ("Conv1d", "Conv2d", "Conv3d", "Linear")]
        raise ValueError(f"overrides {unused} match no convertible layer; convertible layers are e.g. {names[:8]}")
    return result


def _validate_spec(entry: LayerPlan, module: nn.Module) -> None:
    try:
        if len(entry.spec.n) != len(entry.kernel_size):
            raise ValueError(f"n={entry.spec.n} needs {len(entry.kernel_size)} entries for kernel {entry.kernel_size}")
        StructuredBasis(entry.channels, entry.kernel_size, entry.spec.c, entry.spec.n)
    except ValueError as err:
        raise ValueError(f"layer '{entry.name}' ({entry.layer_type}): {err}") from None


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the qualified name ``name`` of ``model`` (``"layer1.0.conv1"``)."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def structured_from_dense(module: nn.Module, spec: StructureSpec) -> nn.Module:
    if _is_linear(module):
        return StructuredLinear.from_dense(module, r=spec.c)
    return _DENSE_TO_STRUCTURED[type(module)].from_dense(module, c=spec.c, n=spec.n)


def restructure_(model: nn.Module, specs: Mapping[str, StructureSpec]) -> nn.Module:
    """Give the structured layers named in ``specs`` a new ``(c, n)``, in place, keeping their
    Parameters, so an optimizer built on ``model`` stays valid (the weights are not changed:
    project or calibrate them onto the new structure).  Returns ``model``."""
    for name, spec in specs.items():
        if not name:
            raise ValueError("restructure_: the model itself is one layer; structurize it again instead")
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"restructure_: layer '{name}' does not exist in this model") from None
        if not isinstance(getattr(layer, "basis", None), StructuredBasis):
            raise ValueError(f"restructure_: layer '{name}' is a {type(layer).__name__}, not a (c, n)-structured layer")
        if isinstance(layer, StructuredLinear):
            new = StructuredLinear.from_dense(layer, r=spec.c)
        elif isinstance(layer, tuple(STRUCTURED_CONV.values())):
            new = type(layer).from_dense(layer, c=spec.c, n=spec.resolved(tuple(layer.kernel_size)).n)
        else:
            raise ValueError(f"restructure_: layer '{name}' is a {type(layer).__name__}, not a structured layer")
        set_submodule(model, name, new)
    return model


def structurize(
    model: nn.Module,
    ratio: float | StructurePlan = 2.0,
    *,
    filter_fn: FilterFn | None = None,
    inplace: bool = False,
    overrides: Mapping[str, Override] | None = None,
    prefer: str = "channels",
    example_inputs=None,
    check_usage: bool = True,
) -> nn.Module:
    """Swap eligible Conv/Linear layers for their structured training form, keeping weights.

    ``ratio`` is a target compression ratio (see :func:`plan` for ``filter_fn``,
    ``overrides``, ``prefer``, ``example_inputs`` and ``check_usage``) or a ready
    :class:`StructurePlan`.  The structured layers subclass the layers they replace and keep
    their state_dict keys, so the model computes the same function and existing checkpoints
    still load.  Returns the converted model (a deep copy unless ``inplace``); call
    :func:`plan` first to see what will change.
    """
    if isinstance(ratio, StructurePlan):
        if filter_fn is not None or overrides or example_inputs is not None:
            raise ValueError("pass filter_fn/overrides to plan() (and example_inputs), not with a ready StructurePlan")
        the_plan = ratio
    else:
        the_plan = plan(
            model,
            ratio,
            filter_fn=filter_fn,
            overrides=overrides,
            prefer=prefer,
            example_inputs=example_inputs,
            check_usage=check_usage,
        )
    if not inplace:
        model = copy.deepcopy(model)
    for entry in the_plan.structured:
        try:
            module = model.get_submodule(entry.name)
        except AttributeError:
            raise ValueError(f"layer '{entry.name}' from the plan does not exist in this model") from None
        if describe_layer(module) is None:
            raise ValueError(f"layer '{entry.name}' is a {type(module).__name__}, which cannot be structurized")
        try:
            new = structured_from_dense(module, entry.spec)
        except ValueError as err:
            raise ValueError(f"layer '{entry.name}': {err}") from None
        if not entry.name:
            return new
        set_submodule(model, entry.name, new)
    return model


#: Default relative structure error above which :func:`decompose` speaks up.  Decomposition
#: computes the *projected* layer, whose output moves by about this fraction of its size; at
#: 1e-2 a layer's change is as large as a typical SGD step makes it, and errors that large were
#: seen to cost accuracy (a 0.21 head cost 1 point on Fashion-MNIST), while every layer of a
#: converged run sits orders of magnitude below (RESULTS.md).
DEFAULT_TOLERANCE = 1e-2
_ON_UNSTRUCTURED = ("warn", "raise", "ignore")


class StructureWarning(UserWarning):
    """Layers decomposed while far from structured: the deployed model differs from the trained one."""


class UnstructuredError(ValueError):
    """Raised by ``decompose(..., on_unstructured="raise")``; ``errors`` maps layer -> structure error."""

    def __init__(self, message: str, errors: dict[str, float]) -> None:
        super().__init__(message)
        self.errors = errors


def _worst(errors: Mapping[str, float], tolerance: float, k: int = 5) -> str:
    bad = sorted(((v, n) for n, v in errors.items() if not v <= tolerance), reverse=True)
    shown = ", ".join(f"'{n}' {v:.2g}" for v, n in bad[:k])
    more = f" and {len(bad) - k} more" if len(bad) > k else ""
    return f"{len(bad)} of {len(errors)} layers have a relative structure error above {tolerance:g} ({shown}{more})"


def decompose(
    model: nn.Module,
    *,
    inplace: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    on_unstructured: str = "warn",
) -> nn.Module:
    """Replace every structured layer by its deployment form (Step 2 of Sec. 5.1).

    Each layer's ``alpha = A^+ W`` becomes the weight of a small conv/linear behind a
    sum-pool; the result computes exactly what the model computes after ``project_()`` of
    every structured layer.  Raises ``ValueError`` when there is nothing to decompose.

    The guarantee is checked, not assumed: every layer's relative structure error
    ``||(I - A A^+) W|| / ||W||`` is measured, and where one exceeds ``tolerance``
    (:data:`DEFAULT_TOLERANCE`) the projection changes what the layer computes, so
    ``on_unstructured`` decides: ``'warn'`` (a :class:`StructureWarning` naming the worst
    layers), ``'raise'`` (:class:`UnstructuredError`, nothing decomposed) or ``'ignore'``
    (decompose anyway, e.g. to deploy a deliberately projected model).
    """
    if on_unstructured not in _ON_UNSTRUCTURED:
        raise ValueError(f"decompose: on_unstructured={on_unstructured!r} must be one of {', '.join(_ON_UNSTRUCTURED)}")
    if not tolerance >= 0:
        raise ValueError(f"decompose: tolerance={tolerance!r} must be a number >= 0")
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, StructuredLayer)]
    if not layers:
        what = type(model).__name__
        if describe_layer(model) is not None:
            raise ValueError(f"decompose: {what} is not a structured layer; call structconv.structurize() first")
        raise ValueError(f"decompose: {what} has no structured layers; call structconv.structurize() first")
    if on_unstructured != "ignore":
        errors = {name or type(m).__name__: m.structure_error() for name, m in layers}
        if any(not v <= tolerance for v in errors.values()):
            message = f"decompose: {_worst(errors, tolerance)}; the decomposed model computes their projection"
            if on_unstructured == "raise":
                raise UnstructuredError(message, errors)
            warnings.warn(
                message + " (train longer or with Structural Regularization, or pass on_unstructured='ignore')",
                StructureWarning,
                stacklevel=2,
            )
    if isinstance(model, StructuredLayer):
        return model.decompose()
    if inplace:
        for name, m in layers:
            set_submodule(model, name, m.decompose())
        return model
    # Copy everything but the structured layers, which are replaced by their decomposed forms
    # as the copy reaches them: their dense weights are never copied.
    memo = {id(m): m.decompose() for _, m in layers}
    return copy.deepcopy(model, memo)


#: how :func:`to_direct` initializes the decomposed layers
DIRECT_INITS = ("own", "default")


@torch.no_grad()
def to_direct(model: nn.Module, *, init: str = "default") -> nn.Module:
    """Replace every structured layer by a decomposed layer trained directly (Sec. 6.4), through
    the orthonormal parametrization (:func:`structconv.layers.orthonormalize_`); in place.

    ``init='default'`` draws ``nn.ConvNd``'s default init and projects it.  ``init='own'`` starts
    from the model's own initialization, projected onto the structure and scaled back to its norm
    (the weights dense or SR training start from).
    """
    if init not in DIRECT_INITS:
        raise ValueError(f"to_direct: init={init!r} must be one of {', '.join(DIRECT_INITS)}")
    for name, m in list(model.named_modules()):
        if not isinstance(m, StructuredLayer) or not hasattr(m, "decomposed_form"):
            continue
        new = m.decomposed_form(init=True)
        if init == "own":
            w = m.weight
            projected = m.basis.project(w)
            norm = torch.linalg.vector_norm(projected)
            if norm > 0:
                projected *= torch.linalg.vector_norm(w) / norm
            new.weight.copy_(m.basis.coefficients(projected))
            if m.bias is not None:
                new.bias.copy_(m.bias)
        if not name:
            return orthonormalize_(new)
        set_submodule(model, name, new)
    return orthonormalize_(model)
