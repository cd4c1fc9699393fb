"""Dense models from torchvision and timm, adapted to a dataset's classes and input channels."""

from __future__ import annotations

from torch import nn

from ..convert import set_submodule

__all__ = ["torchvision_model", "timm_model", "is_torchvision", "is_timm", "adapt_in_chans", "replace_head"]


def is_torchvision(name: str) -> bool:
    import torchvision

    return name in torchvision.models.list_models(module=torchvision.models)


def is_timm(name: str) -> bool:
    import timm

    return timm.is_model(name)


def _download_error(name: str, source: str, err: Exception) -> ValueError:
    return ValueError(
        f"could not load pretrained weights for {name!r} from {source} (no network access, or no such "
        f"weights): {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. "
        "Train from scratch (pretrained=False) or use a local checkpoint."
    )


def adapt_in_chans(model: nn.Module, in_chans: int, name: str) -> nn.Module:
    """Replace the first 3-channel conv by an ``in_chans`` one (timm's rule for its weights)."""
    from timm.models import adapt_input_conv

    for fqn, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            new = nn.Conv2d(
                in_chans,
                module.out_channels,
                module.kernel_size,
                module.stride,
                module.padding,
                module.dilation,
                module.groups,
                module.bias is not None,
                module.padding_mode,
            )
            new.weight.data = adapt_input_conv(in_chans, module.weight.data)
            if module.bias is not None:
                new.bias.data = module.bias.data.clone()
            set_submodule(model, fqn, new)
            return model
    raise ValueError(f"{name}: found no 3-channel input convolution to adapt to in_chans={in_chans}")


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """A fresh last ``nn.Linear`` with ``num_classes`` outputs (for pretrained weights)."""
    fqn, old = [(fqn, m) for fqn, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    set_submodule(model, fqn, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    return model


def torchvision_model(name: str, num_classes=None, in_chans=None, pretrained: bool = False) -> nn.Module:
    import torchvision

    if pretrained:
        try:
            model = torchvision.models.get_model(name, weights="DEFAULT")
        except Exception as err:  # noqa: BLE001 - urllib/http/hash errors: all mean "no weights here"
            raise _download_error(name, "torchvision", err) from None
        if num_classes is not None and num_classes != 1000:
            model = replace_head(model, num_classes)
    else:
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        model = torchvision.models.get_model(name, **kwargs)
    if in_chans is not None and in_chans != 3:
        model = adapt_in_chans(model, in_chans, name)
    return model


def timm_model(name: str, num_classes=None, in_chans=None, pretrained: bool = False) -> nn.Module:
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


def torchvision_resnet_init(model: nn.Module) -> None:
    """torchvision's ResNet init, in place: Kaiming-normal convs (fan-out), norms at 1 and 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
