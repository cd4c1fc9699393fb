"""HRNetV2-W18-Small-v2 for semantic segmentation, the model of the paper's Table 5.

timm's ``hrnet_w18_small_v2`` backbone (its four branches, ``features_only``) with the HRNetV2
segmentation head of Wang et al.: the branches are upsampled to 1/4 resolution and
concatenated (270 channels), then ``1x1 conv 270->270 + BN + ReLU -> 1x1 conv 270->classes``.
On a 1024x2048 Cityscapes image this counts 76.9G adds / 77.2G mults / 3.94M params against
the paper's 76.8 / 77.1 / 3.9 (docs/presets.md).  The output is at 1/4 resolution (logits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HRNetSeg", "hrnet_w18_small_v2_seg"]


class HRNetSeg(nn.Module):
    def __init__(self, num_classes: int = 19, in_chans: int = 3) -> None:
        super().__init__()
        import timm

        self.backbone = timm.create_model(
            "hrnet_w18_small_v2",
            pretrained=False,
            features_only=True,
            feature_location="",
            out_indices=(1, 2, 3, 4),
            in_chans=in_chans,
        )
        ch = sum(self.backbone.feature_info.channels())
        self.last_layer = nn.Sequential(
            nn.Conv2d(ch, ch, 1), nn.BatchNorm2d(ch), nn.ReLU(inplace=True), nn.Conv2d(ch, num_classes, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        feats = self.backbone(x)
        size = feats[0].shape[2:]
        up = [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats[1:]]
        return self.last_layer(torch.cat([feats[0], *up], 1))


def hrnet_w18_small_v2_seg(num_classes: int = 19, in_chans: int = 3) -> HRNetSeg:
    return HRNetSeg(num_classes, in_chans)
