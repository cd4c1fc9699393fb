"""Struct-A / Struct-B plans of Sec. 6 as ``structurize`` overrides.

The paper's supplementary material with the exact per-layer ``(c, n)`` is not available; these
plans follow the rules stated in Sec. 6.1 (see ``docs/plans.md`` for the derivation and every
place where our counts differ from the tables):

* ResNets, Struct-A: every layer 2x (``C N^2 / c n^2 = 2``).
* ResNets, Struct-B: the first half of the stages 2x, the rest 4x (ImageNet ResNets: stages 1-2
  at 2x, stages 3-4 at 4x; the 3-stage CIFAR ResNets: stage 1 at 2x, stages 2-3 at 4x, which
  lands closest to Table 1's Struct-20/32/56-B rows).
* MobileNetV2: Struct-A 1.33x, Struct-B 2x on every layer.
* EfficientNet-B1: Struct-EffNet, a uniform ratio chosen to reach Table 4's parameter count.
* HRNet-W18-small-v2: Struct-HR-A, every layer 2x (Table 5: "about 2x smaller").

Each plan is ``(base_ratio, overrides)``: ``structurize(model, base_ratio, overrides=...)``;
override keys are ``fnmatch`` patterns of qualified layer names.
"""

from __future__ import annotations

from torch import nn

__all__ = ["PLANS", "plan_for", "struct_overrides", "has_plan"]

Plan = tuple[float, dict[str, float]]

_RESNET_B_IMAGENET: Plan = (2.0, {"layer3.*": 4.0, "layer4.*": 4.0})
_RESNET_B_CIFAR: Plan = (2.0, {"layer2.*": 4.0, "layer3.*": 4.0})

#: (architecture, "A" | "B") -> (base ratio, {layer pattern: ratio})
PLANS: dict[tuple[str, str], Plan] = {
    **{(f"cifar_resnet{d}", "A"): (2.0, {}) for d in (20, 32, 56)},
    **{(f"cifar_resnet{d}", "B"): _RESNET_B_CIFAR for d in (20, 32, 56)},
    **{(f"resnet{d}", "A"): (2.0, {}) for d in (18, 34, 50)},
    **{(f"resnet{d}", "B"): _RESNET_B_IMAGENET for d in (18, 34, 50)},
    ("mobilenet_v2", "A"): (1.33, {}),
    ("mobilenet_v2", "B"): (2.0, {}),
    ("efficientnet_b1", "A"): (1.6, {}),  # Struct-EffNet (Table 4 has a single structured row)
    ("hrnet_w18_small_v2", "A"): (2.0, {}),  # Struct-HR-A (Table 5)
}


def has_plan(name: str, struct: str) -> bool:
    return (name, str(struct).upper()) in PLANS


def plan_for(name: str, struct: str) -> Plan:
    """The ``(base_ratio, overrides)`` of the paper's Struct-``struct`` version of ``name``."""
    key = (name, str(struct).upper())
    if str(struct).upper() not in ("A", "B"):
        raise ValueError(f"struct={struct!r} must be 'A' or 'B'")
    if key not in PLANS:
        known = sorted({f"{a}/{s}" for a, s in PLANS})
        raise ValueError(
            f"no Struct-{key[1]} plan for {name!r} (the paper has: {', '.join(known)}); "
            "use a uniform ratio instead (--ratio R / create_model(..., ratio=R))"
        )
    base, overrides = PLANS[key]
    return base, dict(overrides)


def struct_overrides(name: str, struct: str, model: nn.Module | None = None) -> Plan:
    """Like :func:`plan_for`; ``model`` is accepted for plans that depend on layer shapes."""
    return plan_for(name, struct)
