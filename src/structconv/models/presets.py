"""Struct-A / Struct-B presets of Sec. 6: per-layer strategies and the rule of each family.

The paper's supplementary material with the exact per-layer ``(c, n)`` is not available.  These
rules were derived by ``benchmarks/derive_presets.py`` and are documented, with every gap to the
paper's tables and its reason, in ``docs/presets.md``.  Notation: a layer has ``C`` input
channels per group and an ``N x N`` kernel; ``(c, n)`` is its structure (ratio ``C N^2 / c n^2``);
``None`` leaves a layer dense.  The paper's text says "A = 2x for every layer, B = stages 1-2
at 2x and 3-4 at 4x"; the numbers need something slightly different (docs/presets.md).

:func:`preset_overrides` walks the model and returns one override per convertible layer, so
``structurize(model, *preset_overrides(name, struct, model))`` applies the preset exactly.  Each
family's rules are attached to its name by ``register_model(..., presets=...)`` in :mod:`.zoo`.
"""

from __future__ import annotations

import math
from typing import Callable

from torch import nn

from ..convert import StructureSpec
from .registry import get_entry, registered_models

__all__ = [
    "has_preset",
    "preset_overrides",
    "preset_specs",
    "cifar_presets",
    "resnet_basic_presets",
    "resnet50_presets",
    "mobilenet_v2_presets",
    "efficientnet_presets",
    "hrnet_presets",
    "chan",
    "spatial",
    "c2n",
    "cn_exact",
]

Spec = StructureSpec | None
Rule = Callable[[str, nn.Module], Spec]


# ---- per-layer strategies (docs/presets.md, "Strategies") -------------------------------------
def _chan(m: nn.Module) -> int:
    return m.in_features if isinstance(m, nn.Linear) else m.in_channels // m.groups


def _k(m: nn.Module) -> tuple[int, ...]:
    return tuple(m.kernel_size)


def _spec(m: nn.Module, c: int, n=None) -> Spec:
    """``(c, n)`` clipped to the layer; ``None`` when it would not compress."""
    C = _chan(m)
    c = max(1, min(C, int(c)))
    if isinstance(m, nn.Linear):
        return None if c >= C else StructureSpec(c, ())
    n = (
        _k(m)
        if n is None
        else tuple(max(1, min(k, v)) for k, v in zip(_k(m), (n,) * len(_k(m)) if isinstance(n, int) else n))
    )
    if c * math.prod(n) >= C * math.prod(_k(m)):
        return None
    return StructureSpec(c, n)


def chan(m, R: float) -> Spec:  # strategy "c": pool over channels only
    return _spec(m, round(_chan(m) / R))


def spatial(m) -> Spec:  # strategy "n": n = N - 1, all channels
    return _spec(m, _chan(m), tuple(k - 1 for k in _k(m)))


def c2n(m, R: float) -> Spec:  # strategy "c2n": c = 2C/R, n = N - 1
    return _spec(m, round(2 * _chan(m) / R), tuple(k - 1 for k in _k(m)))


def cn_exact(m, R: float) -> Spec:  # strategy "cn": n = N - 1 and the smallest c reaching ratio R
    C, k = _chan(m), _k(m)
    small = tuple(v - 1 for v in k)
    return _spec(m, math.ceil(C * math.prod(k) / (R * math.prod(small))), small)


def _is_kxk(m) -> bool:
    return isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1


def _is_dw(m) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels


# ---- families ------------------------------------------------------------------------------
def _cifar(struct: str) -> Rule:
    def rule(name: str, m: nn.Module) -> Spec:
        if name == "conv1":  # stem (C=3, or 1 for grayscale data)
            return _spec(m, _chan(m), 2) if struct == "A" else _spec(m, math.ceil(_chan(m) / 3))
        if isinstance(m, nn.Linear):
            return chan(m, 2 if struct == "A" else 4)
        return chan(m, 2) if struct == "A" else cn_exact(m, 4)

    return rule


def _resnet_basic(struct: str) -> Rule:  # ResNet18 / ResNet34
    def rule(name: str, m: nn.Module) -> Spec:
        if name in ("conv1", "fc"):
            return None
        if ".downsample." in name:
            return chan(m, 2) if struct == "A" else None
        if struct == "A" or name.startswith("layer1."):
            return spatial(m)
        return c2n(m, 4)

    return rule


def _resnet50(struct: str) -> Rule:
    def rule(name: str, m: nn.Module) -> Spec:
        C = _chan(m)
        if struct == "A":
            if name == "conv1":
                return _spec(m, 3, 6)
            if name == "fc":
                return _spec(m, 1024)
            if ".downsample." in name:
                return None
            if name.endswith(".conv2"):
                return spatial(m)
            return _spec(m, C // 4) if name.endswith(".conv1") else _spec(m, 3 * C // 4)
        if name == "conv1":
            return _spec(m, 2, 7)
        if name == "fc":
            return None
        if name.startswith("layer1."):
            return None if name.endswith(".conv1") else chan(m, 2)
        return chan(m, 4)

    return rule


def _mobilenet_v2(struct: str) -> Rule:
    def rule(name: str, m: nn.Module) -> Spec:
        C = _chan(m)
        if name == "features.0.0":
            return _spec(m, 3, 2) if struct == "A" else None
        if name == "features.18.0":
            return _spec(m, C // 4 if struct == "A" else 3 * C // 4)
        if isinstance(m, nn.Linear):
            return chan(m, 4 / 3 if struct == "A" else 2)
        if _is_dw(m):
            return spatial(m)
        if m.out_channels > m.in_channels:  # expand 1x1
            return _spec(m, round(3 * C / 4))
        return None if struct == "A" else _spec(m, C // 4)  # project 1x1

    return rule


def _efficientnet(struct: str) -> Rule:
    def rule(name: str, m: nn.Module) -> Spec:
        if name == "features.0.0":
            return _spec(m, 3, 2)
        if isinstance(m, nn.Linear) or _is_dw(m) or ".block.2." in name and "fc" in name.rsplit(".", 1)[-1]:
            return None
        if not name.startswith("features.") or name.count(".") < 3 or ".block." not in name:
            return None  # head 1x1 (features.8.0) and anything outside the MBConv blocks
        if "fc1" in name or "fc2" in name:  # squeeze-excitation
            return None
        C = _chan(m)
        return _spec(m, round(3 * C / 4)) if m.out_channels > m.in_channels else _spec(m, C // 4)

    return rule


def _hrnet(struct: str) -> Rule:
    def rule(name: str, m: nn.Module) -> Spec:
        name = name.removeprefix("backbone.")  # the segmentation model wraps timm's backbone
        if not isinstance(m, nn.Conv2d):
            return None
        C = _chan(m)
        if name.startswith("layer1.") and name.endswith(".conv2"):
            return chan(m, 2)
        if name.startswith("stage") and ".branches." in name and _is_kxk(m):
            return chan(m, 2)
        if name.startswith("transition") or ".fuse_layers." in name:
            return spatial(m) if _is_kxk(m) else _spec(m, C // 2)
        return None  # stem, layer1 1x1s and downsample, classification head

    return rule


def cifar_presets() -> dict[str, Rule]:
    return {s: _cifar(s) for s in "AB"}


def resnet_basic_presets() -> dict[str, Rule]:
    return {s: _resnet_basic(s) for s in "AB"}


def resnet50_presets() -> dict[str, Rule]:
    return {s: _resnet50(s) for s in "AB"}


def mobilenet_v2_presets() -> dict[str, Rule]:
    return {s: _mobilenet_v2(s) for s in "AB"}


def efficientnet_presets() -> dict[str, Rule]:  # the paper's Struct-EffNet, stored as "A"
    return {"A": _efficientnet("A")}


def hrnet_presets() -> dict[str, Rule]:  # the paper's Struct-HR-A
    return {"A": _hrnet("A")}


def has_preset(name: str, struct: str) -> bool:
    entry = get_entry(name)
    return entry is not None and str(struct).upper() in entry.presets


def _rule(name: str, struct: str) -> Rule:
    s = str(struct).upper()
    entry = get_entry(name)
    if entry is None or s not in entry.presets:
        known = sorted(f"{n}/{v}" for n in registered_models() for v in get_entry(n).presets)
        raise ValueError(
            f"no Struct-{s} preset for {name!r} (presets exist for: {', '.join(known)}); "
            "use a uniform ratio instead (create_model(..., ratio=R))"
        )
    return entry.presets[s]


def preset_overrides(name: str, struct: str, model: nn.Module) -> tuple[float, dict[str, Spec]]:
    """``(ratio, overrides)`` for ``structurize``: one explicit entry (spec or None) per layer of ``model``."""
    rule = _rule(name, struct)
    overrides: dict[str, Spec] = {}
    for fqn, m in model.named_modules():
        if type(m) in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear):
            overrides[fqn] = rule(fqn, m)
    return 2.0, overrides


def preset_specs(name: str, struct: str, model: nn.Module) -> dict[str, Spec]:
    """``{layer: StructureSpec or None}`` of the Struct-``struct`` preset of ``model`` (architecture ``name``)."""
    return preset_overrides(name, struct, model)[1]
