"""Models by name: the registered architectures (:mod:`.zoo`), dense or structurized, and any
torchvision or timm classification model.

``create_model("cifar_resnet20", struct="A")`` builds the dense model and converts it to the
structured *training form* with the paper's Struct-A preset (:mod:`.presets`); ``ratio=R`` uses a
uniform ``structurize(model, R)`` instead.  Names not registered fall back to
``torchvision.models.get_model`` and then ``timm.create_model``, so any torchvision or timm
classification model can be structurized by name.  New families: :func:`register_model`.
"""

from __future__ import annotations

from torch import nn

from .. import validation as v
from . import zoo  # noqa: F401 - fills the registry
from .registry import ModelEntry, get_entry, register_model, registered_models, unregister_model
from .sources import is_timm, is_torchvision, timm_model, torchvision_model

__all__ = [
    "create_model",
    "dense_model",
    "check_known",
    "list_models",
    "default_input_size",
    "structurize_model",
    "register_model",
    "unregister_model",
    "get_entry",
    "ModelEntry",
    "PAPER_MODELS",
]

#: the architectures of the paper's Sec. 6, in table order
PAPER_MODELS = tuple(registered_models(paper=True))


def list_models() -> list[str]:
    """The registered architectures (names with Struct presets); any torchvision/timm name also works."""
    return registered_models()


def default_input_size(name: str) -> tuple[int, int, int]:
    """``(C, H, W)`` the model is meant for: its registered size, else the timm/torchvision default."""
    entry = get_entry(name)
    if entry is not None:
        return entry.input_size
    if is_torchvision(name):
        return (3, 224, 224)
    try:
        import timm

        cfg = timm.get_pretrained_cfg(name)
        if cfg is not None and getattr(cfg, "input_size", None):
            return tuple(cfg.input_size)
    except Exception:  # noqa: BLE001 - unknown to timm: fall through to the ImageNet default
        pass
    return (3, 224, 224)


def _unknown(name: str) -> ValueError:
    import difflib

    import timm
    import torchvision

    known = [*registered_models(), *torchvision.models.list_models(module=torchvision.models), *timm.list_models()]
    close = difflib.get_close_matches(name, known, n=4)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ValueError(
        f"unknown architecture {name!r}: not a structconv, torchvision or timm classification model{hint}"
    )


def check_known(name: str) -> None:
    """``ValueError`` (with close matches) unless ``name`` is registered, torchvision's or timm's."""
    v.text(name, "arch")
    if get_entry(name) is None and not is_torchvision(name) and not is_timm(name):
        raise _unknown(name)


def dense_model(
    name: str, *, num_classes: int | None = None, in_chans: int | None = None, pretrained: bool = False
) -> nn.Module:
    """The dense (baseline) model ``name``."""
    for arg, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if value is not None:
            v.integer(value, arg, low=1)
    entry = get_entry(name)
    if entry is not None:
        return entry.build(num_classes=num_classes, in_chans=in_chans, pretrained=pretrained)
    if is_torchvision(name):
        return torchvision_model(name, num_classes, in_chans, pretrained)
    if is_timm(name):
        return timm_model(name, num_classes, in_chans, pretrained)
    raise _unknown(name)


def structurize_model(
    model: nn.Module, name: str, *, struct: str | None = None, ratio: float | None = None
) -> nn.Module:
    """Convert a dense ``model`` (architecture ``name``) to its Struct-A/B plan or a uniform ``ratio``.

    Works in place and returns ``model`` itself (as ``structurize(..., inplace=True)``): pass
    ``copy.deepcopy(model)`` to keep the dense model, e.g. as a distillation teacher.
    """
    from ..convert import structurize
    from .presets import preset_overrides

    v.exclusive({"struct": struct, "ratio": ratio})
    if struct is not None:
        base, overrides = preset_overrides(name, struct, model)
        return structurize(model, base, overrides=overrides, inplace=True)
    if ratio is not None:
        # one forward at the model's own input size checks which layers are safe to replace
        import torch

        chans, h, w = default_input_size(name)
        first = next((m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)
        if isinstance(first, nn.Conv2d):
            chans = first.in_channels
        x = torch.zeros(1, chans, h, w)
        was_training = model.training
        try:
            with torch.no_grad():
                model.eval()(x)
        except Exception:  # noqa: BLE001 - not an image model of that shape: check by tracing instead
            x = None
        return structurize(model.train(was_training), ratio, inplace=True, example_inputs=x)
    return model


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    struct: str | None = None,
    ratio: float | None = None,
    pretrained: bool = False,
) -> nn.Module:
    """Build architecture ``name``: dense, or in structured training form.

    Args:
        name: a registered architecture (:func:`list_models`: the paper's models) or any
            torchvision / timm model name.
        num_classes, in_chans: classifier size and input channels (model defaults when None).
        struct: ``"A"`` or ``"B"`` for the paper's Struct-A / Struct-B preset (:mod:`.presets`).
        ratio: uniform compression ratio for ``structconv.structurize`` (instead of ``struct``).
        pretrained: load torchvision/timm weights (needs network access; raises ``ValueError``
            with the cause when they cannot be fetched).
    """
    v.text(name, "arch")
    model = dense_model(name, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained)
    return structurize_model(model, name, struct=struct, ratio=ratio)
