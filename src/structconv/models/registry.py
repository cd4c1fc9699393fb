"""The model registry, timm style: a family is added with one :func:`register_model` call that
names its builder, the input size it is meant for, and its Struct-A/B presets.

Everything that needs to know about a model -- :func:`structconv.models.create_model`,
``structconv profile|train|bench``, checkpoints (``model_args``) and
``benchmarks/derive_presets.py`` -- reads it from here.  Names that are not registered still work
through torchvision and timm (see :func:`structconv.models.create_model`), without presets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from torch import nn

from ..convert import StructureSpec

__all__ = ["ModelEntry", "Rule", "register_model", "get_entry", "registered_models", "unregister_model"]

#: a preset rule: (qualified layer name, dense layer) -> its structure, or None to leave it dense
Rule = Callable[[str, nn.Module], "StructureSpec | None"]
#: a builder: (num_classes=None, in_chans=None, pretrained=False) -> the dense model
Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    """One registered architecture."""

    name: str
    build: Builder
    input_size: tuple[int, int, int]
    presets: Mapping[str, Rule] = field(default_factory=dict)  # "A" / "B" -> rule
    paper: bool = False  # one of the architectures of the paper's Sec. 6
    init: Callable[[nn.Module], None] | None = None  # the family's own weight init, for rebuilt variants


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    build: Builder | None = None,
    *,
    input_size: tuple[int, int, int] = (3, 224, 224),
    presets: Mapping[str, Rule] | None = None,
    paper: bool = False,
    init: Callable[[nn.Module], None] | None = None,
):
    """Register architecture ``name``; use as ``register_model(name, builder, ...)`` or as a
    decorator ``@register_model(name, ...)`` on the builder.

    ``build(num_classes=None, in_chans=None, pretrained=False)`` returns the dense model (``None``
    means the model's default).  ``input_size`` is ``(C, H, W)`` for profiling, benchmarks and
    export.  ``presets`` maps a struct name (``"A"``, ``"B"``) to a rule ``(fqn, layer) ->
    StructureSpec | None`` applied to every Conv/Linear layer (see :mod:`structconv.models.presets`).
    ``init(model)`` re-initializes a model of the family in place, the way its constructor does
    (used for variants rebuilt from it, such as the narrow baseline of ``structconv compare``).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_model: name={name!r} must be a non-empty string")
    size = tuple(int(v) for v in input_size)
    if len(size) != 3 or any(v < 1 for v in size):
        raise ValueError(f"register_model({name!r}): input_size={input_size!r} must be (C, H, W)")
    presets = {str(k).upper(): v for k, v in (presets or {}).items()}

    def add(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"register_model: {name!r} is already registered")
        _REGISTRY[name] = ModelEntry(name, fn, size, presets, paper, init)
        return fn

    return add if build is None else add(build)


def unregister_model(name: str) -> None:
    """Remove ``name`` (tests and notebooks that register toy models)."""
    _REGISTRY.pop(name, None)


def get_entry(name: str) -> ModelEntry | None:
    """The registered entry of ``name``, or ``None``."""
    return _REGISTRY.get(name)


def registered_models(*, paper: bool | None = None) -> list[str]:
    """Registered names in registration order (only the paper's when ``paper=True``)."""
    return [n for n, e in _REGISTRY.items() if paper is None or e.paper == paper]
