"""The registered architectures: the paper's (Sec. 6, in table order), one call per family.

To add a family, register it here (or from your own code) with its builder, input size and
presets; nothing else needs to change (docs/architecture.md).
"""

from __future__ import annotations

from . import presets
from .cifar_resnet import CifarResNet, init_weights
from .hrnet_seg import hrnet_w18_small_v2_seg
from .registry import register_model
from .sources import timm_model, torchvision_model, torchvision_resnet_init


def _no_pretrained(name: str) -> None:
    raise ValueError(f"no pretrained weights exist for {name!r}; train it with `structconv train`")


def _cifar_resnet(depth: int):
    def build(num_classes=None, in_chans=None, pretrained: bool = False):
        if pretrained:
            _no_pretrained(f"cifar_resnet{depth}")
        return CifarResNet(depth, num_classes=num_classes or 10, in_chans=in_chans or 3)

    build.__name__ = f"cifar_resnet{depth}"
    return build


def _from(source, name: str):
    def build(num_classes=None, in_chans=None, pretrained: bool = False):
        return source(name, num_classes, in_chans, pretrained)

    return build


# Table 1: the CIFAR ResNets of He et al. (option-A shortcuts)
for _depth in (20, 32, 44, 56, 110):
    register_model(
        f"cifar_resnet{_depth}",
        _cifar_resnet(_depth),
        input_size=(3, 32, 32),
        presets=presets.cifar_presets(),
        paper=_depth in (20, 32, 56),
        init=init_weights,
    )
# Tables 2-4: torchvision's ImageNet models (EfficientNet-B1 is evaluated at 240 px)
register_model(
    "resnet18",
    _from(torchvision_model, "resnet18"),
    presets=presets.resnet_basic_presets(),
    paper=True,
    init=torchvision_resnet_init,
)
register_model(
    "resnet34",
    _from(torchvision_model, "resnet34"),
    presets=presets.resnet_basic_presets(),
    paper=True,
    init=torchvision_resnet_init,
)
register_model(
    "resnet50",
    _from(torchvision_model, "resnet50"),
    presets=presets.resnet50_presets(),
    paper=True,
    init=torchvision_resnet_init,
)
register_model(
    "mobilenet_v2", _from(torchvision_model, "mobilenet_v2"), presets=presets.mobilenet_v2_presets(), paper=True
)
register_model(
    "efficientnet_b1",
    _from(torchvision_model, "efficientnet_b1"),
    input_size=(3, 240, 240),
    presets=presets.efficientnet_presets(),
    paper=True,
)
# Table 5: HRNet (timm's classification backbone, and the segmentation network the table counts)
register_model(
    "hrnet_w18_small_v2", _from(timm_model, "hrnet_w18_small_v2"), presets=presets.hrnet_presets(), paper=True
)


@register_model("hrnet_w18_small_v2_seg", input_size=(3, 1024, 2048), presets=presets.hrnet_presets(), paper=True)
def _hrnet_seg(num_classes=None, in_chans=None, pretrained: bool = False):
    if pretrained:
        _no_pretrained("hrnet_w18_small_v2_seg")
    return hrnet_w18_small_v2_seg(num_classes=num_classes or 19, in_chans=in_chans or 3)
