"""Model registry: the paper's architectures by name, dense or structurized.

``create_model("cifar_resnet20", struct="A")`` builds the dense model and converts it to the
structured *training form* with the paper's Struct-A plan (:mod:`.plans`); ``ratio=R`` uses a
uniform ``structurize(model, R)`` instead.  Names not registered here fall back to
``torchvision.models.get_model`` and then ``timm.create_model``, so any torchvision or timm
classification model can be structurized by name.
"""

from __future__ import annotations

from torch import nn

from .cifar_resnet import cifar_resnet20, cifar_resnet32, cifar_resnet56
from .hrnet_seg import hrnet_w18_small_v2_seg

__all__ = ["create_model", "list_models", "default_input_size", "structurize_model", "PAPER_MODELS"]

_CIFAR = {"cifar_resnet20": cifar_resnet20, "cifar_resnet32": cifar_resnet32, "cifar_resnet56": cifar_resnet56}
_TORCHVISION = ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "efficientnet_b1")
_TIMM = ("hrnet_w18_small_v2",)
# structconv-built models other than the CIFAR ResNets (Table 5's segmentation HRNet)
_OWN = {"hrnet_w18_small_v2_seg": hrnet_w18_small_v2_seg}
#: the architectures of the paper's Sec. 6, in table order
PAPER_MODELS = (*_CIFAR, *_TORCHVISION, *_TIMM, *_OWN)

# the resolution each model is evaluated at in the paper (EfficientNet-B1 is a 240px model)
_INPUT_SIZE = {"efficientnet_b1": (3, 240, 240), "hrnet_w18_small_v2_seg": (3, 1024, 2048)}


def list_models() -> list[str]:
    """The paper's architectures (names with Struct-A/B plans); any torchvision/timm name also works."""
    return list(PAPER_MODELS)


def default_input_size(name: str) -> tuple[int, int, int]:
    """``(C, H, W)`` the model is meant for: 32x32 for the CIFAR ResNets, the timm/torchvision default else."""
    if name in _CIFAR:
        return (3, 32, 32)
    if name in _INPUT_SIZE:
        return _INPUT_SIZE[name]
    if _is_torchvision(name):
        return (3, 224, 224)
    try:
        import timm

        cfg = timm.get_pretrained_cfg(name)
        if cfg is not None and getattr(cfg, "input_size", None):
            return tuple(cfg.input_size)
    except Exception:  # noqa: BLE001 - unknown to timm: fall through to the ImageNet default
        pass
    return (3, 224, 224)


def _is_torchvision(name: str) -> bool:
    import torchvision

    return name in torchvision.models.list_models(module=torchvision.models)


def _is_timm(name: str) -> bool:
    import timm

    return timm.is_model(name)


def _unknown(name: str) -> ValueError:
    import difflib

    import timm
    import torchvision

    known = [*PAPER_MODELS, *torchvision.models.list_models(module=torchvision.models), *timm.list_models()]
    close = difflib.get_close_matches(name, known, n=4)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown architecture {name!r}: not a structconv, torchvision or timm classification model{hint}")


def _download_error(name: str, source: str, err: Exception) -> ValueError:
    return ValueError(
        f"could not load pretrained weights for {name!r} from {source} (no network access, or no such "
        f"weights): {type(err).__name__}: {err}. Train from scratch (pretrained=False) or use a local checkpoint."
    )


def _adapt_in_chans(model: nn.Module, in_chans: int, name: str) -> nn.Module:
    """Replace the first 3-channel conv of a torchvision model by an ``in_chans`` one (timm's rule for weights)."""
    from timm.models import adapt_input_conv

    from ..convert import _set_submodule

    for fqn, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            new = nn.Conv2d(in_chans, module.out_channels, module.kernel_size, module.stride, module.padding,
                            module.dilation, module.groups, module.bias is not None, module.padding_mode)  # fmt: skip
            new.weight.data = adapt_input_conv(in_chans, module.weight.data)
            if module.bias is not None:
                new.bias.data = module.bias.data.clone()
            _set_submodule(model, fqn, new)
            return model
    raise ValueError(f"{name}: found no 3-channel input convolution to adapt to in_chans={in_chans}")


def _replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    from ..convert import _set_submodule

    last = [(fqn, m) for fqn, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    fqn, old = last
    _set_submodule(model, fqn, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    return model


def _torchvision_model(name: str, num_classes, in_chans, pretrained: bool) -> nn.Module:
    import torchvision

    if pretrained:
        try:
            model = torchvision.models.get_model(name, weights="DEFAULT")
        except Exception as err:  # noqa: BLE001 - urllib/http/hash errors: all mean "no weights here"
            raise _download_error(name, "torchvision", err) from None
        if num_classes is not None and num_classes != 1000:
            model = _replace_head(model, num_classes)
    else:
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        model = torchvision.models.get_model(name, **kwargs)
    if in_chans is not None and in_chans != 3:
        model = _adapt_in_chans(model, in_chans, name)
    return model


def _timm_model(name: str, num_classes, in_chans, pretrained: bool) -> nn.Module:
    import timm

    kwargs = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as err:  # noqa: BLE001
        if pretrained:
            raise _download_error(name, "timm (Hugging Face Hub)", err) from None
        raise


def dense_model(name: str, *, num_classes: int | None = None, in_chans: int | None = None,
                pretrained: bool = False) -> nn.Module:  # fmt: skip
    """The dense (baseline) model ``name``."""
    if name in _CIFAR:
        if pretrained:
            raise ValueError(f"no pretrained weights exist for {name!r}; train it with `structconv train`")
        kwargs = {"num_classes": num_classes or 10, "in_chans": in_chans or 3}
        return _CIFAR[name](**kwargs)
    if name in _OWN:
        if pretrained:
            raise ValueError(f"no pretrained weights exist for {name!r}")
        return _OWN[name](num_classes=num_classes or 19, in_chans=in_chans or 3)
    if _is_torchvision(name):
        return _torchvision_model(name, num_classes, in_chans, pretrained)
    if _is_timm(name):
        return _timm_model(name, num_classes, in_chans, pretrained)
    raise _unknown(name)


def structurize_model(model: nn.Module, name: str, *, struct: str | None = None, ratio: float | None = None) -> nn.Module:
    """Convert a dense ``model`` (architecture ``name``) to its Struct-A/B plan or a uniform ``ratio``."""
    from ..convert import structurize
    from .plans import struct_overrides

    if struct is not None and ratio is not None:
        raise ValueError(f"give struct={struct!r} or ratio={ratio!r}, not both")
    if struct is not None:
        base, overrides = struct_overrides(name, struct, model)
        return structurize(model, base, overrides=overrides, inplace=True)
    if ratio is not None:
        return structurize(model, ratio, inplace=True)
    return model


def create_model(name: str, *, num_classes: int | None = None, in_chans: int | None = None, struct: str | None = None,
                 ratio: float | None = None, pretrained: bool = False) -> nn.Module:  # fmt: skip
    """Build architecture ``name``: dense, or in structured training form.

    Args:
        name: ``cifar_resnet20/32/56``, ``resnet18/34/50``, ``mobilenet_v2``, ``efficientnet_b1``,
            ``hrnet_w18_small_v2`` (the paper's models), or any torchvision / timm model name.
        num_classes, in_chans: classifier size and input channels (model defaults when None).
        struct: ``"A"`` or ``"B"`` for the paper's Struct-A / Struct-B plan (:mod:`.plans`).
        ratio: uniform compression ratio for ``structconv.structurize`` (instead of ``struct``).
        pretrained: load torchvision/timm weights (needs network access; raises ``ValueError``
            with the cause when they cannot be fetched).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"architecture name {name!r} must be a non-empty string")
    model = dense_model(name, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained)
    return structurize_model(model, name, struct=struct, ratio=ratio)


