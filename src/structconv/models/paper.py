"""The paper's complexity figures (Tables 1-5), in absolute units, for ``structconv profile``.

Each row: architecture, struct version (None = baseline), the input size the figure is for,
adds, mults, params and the reported accuracy (top-1 %, or mIoU % for HRNet on Cityscapes).
Table 4's header says x10^6 but its values (0.70 for EfficientNet-B1) are x10^9 operations;
Table 5 counts HRNetV2-W18-Small-v2 as a segmentation network on 1024x2048 Cityscapes images:
its rows belong to ``hrnet_w18_small_v2_seg`` (timm backbone + HRNetV2 head), not to timm's
classification ``hrnet_w18_small_v2``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PaperRow", "PAPER_ROWS", "paper_row"]

M, G = 1e6, 1e9


@dataclass(frozen=True)
class PaperRow:
    table: str
    label: str
    arch: str
    struct: str | None
    input_size: tuple[int, int, int]
    adds: float
    mults: float
    params: float | None
    accuracy: float | None

    def figures(self) -> dict[str, float | None]:
        return {"adds": self.adds, "mults": self.mults, "params": self.params}


_CIFAR, _IMNET, _EFF, _CITY = (3, 32, 32), (3, 224, 224), (3, 240, 240), (3, 1024, 2048)

PAPER_ROWS: tuple[PaperRow, ...] = (
    # Table 1: ResNets on CIFAR-10 (x10^6)
    PaperRow("Table 1", "ResNet56", "cifar_resnet56", None, _CIFAR, 125.49 * M, 126.02 * M, 0.85 * M, 93.03),
    PaperRow("Table 1", "Struct-56-A", "cifar_resnet56", "A", _CIFAR, 63.04 * M, 62.10 * M, 0.40 * M, 92.65),
    PaperRow("Table 1", "Struct-56-B", "cifar_resnet56", "B", _CIFAR, 48.49 * M, 33.87 * M, 0.21 * M, 91.78),
    PaperRow("Table 1", "ResNet32", "cifar_resnet32", None, _CIFAR, 68.86 * M, 69.16 * M, 0.46 * M, 92.49),
    PaperRow("Table 1", "Struct-32-A", "cifar_resnet32", "A", _CIFAR, 35.59 * M, 35.09 * M, 0.22 * M, 92.07),
    PaperRow("Table 1", "Struct-32-B", "cifar_resnet32", "B", _CIFAR, 26.29 * M, 18.18 * M, 0.11 * M, 90.24),
    PaperRow("Table 1", "ResNet20", "cifar_resnet20", None, _CIFAR, 40.55 * M, 40.74 * M, 0.27 * M, 91.25),
    PaperRow("Table 1", "Struct-20-A", "cifar_resnet20", "A", _CIFAR, 20.77 * M, 20.42 * M, 0.13 * M, 91.04),
    PaperRow("Table 1", "Struct-20-B", "cifar_resnet20", "B", _CIFAR, 15.31 * M, 10.59 * M, 0.067 * M, 88.47),
    # Table 2: MobileNetV2 on ImageNet (x10^9 ops, x10^6 params)
    PaperRow("Table 2", "MobileNetV2", "mobilenet_v2", None, _IMNET, 0.30 * G, 0.31 * G, 3.50 * M, 72.19),
    PaperRow("Table 2", "Struct-V2-A", "mobilenet_v2", "A", _IMNET, 0.26 * G, 0.23 * G, 2.62 * M, 71.29),
    PaperRow("Table 2", "Struct-V2-B", "mobilenet_v2", "B", _IMNET, 0.29 * G, 0.17 * G, 1.77 * M, 64.93),
    # Table 3: ResNets on ImageNet (x10^9 ops, x10^6 params)
    PaperRow("Table 3", "ResNet50", "resnet50", None, _IMNET, 4.09 * G, 4.10 * G, 25.56 * M, 76.15),
    PaperRow("Table 3", "Struct-50-A", "resnet50", "A", _IMNET, 2.69 * G, 2.19 * G, 13.49 * M, 75.65),
    PaperRow("Table 3", "Struct-50-B", "resnet50", "B", _IMNET, 1.92 * G, 1.38 * G, 8.57 * M, 73.41),
    PaperRow("Table 3", "ResNet34", "resnet34", None, _IMNET, 3.66 * G, 3.67 * G, 21.80 * M, 73.30),
    PaperRow("Table 3", "Struct-34-A", "resnet34", "A", _IMNET, 1.71 * G, 1.71 * G, 9.82 * M, 72.81),
    PaperRow("Table 3", "Struct-34-B", "resnet34", "B", _IMNET, 1.47 * G, 1.11 * G, 5.60 * M, 69.44),
    PaperRow("Table 3", "ResNet18", "resnet18", None, _IMNET, 1.81 * G, 1.82 * G, 11.69 * M, 69.76),
    PaperRow("Table 3", "Struct-18-A", "resnet18", "A", _IMNET, 0.88 * G, 0.89 * G, 5.59 * M, 69.13),
    PaperRow("Table 3", "Struct-18-B", "resnet18", "B", _IMNET, 0.79 * G, 0.63 * G, 3.19 * M, 66.19),
    # Table 4: EfficientNet on ImageNet (header says x10^6; the values are x10^9 ops)
    PaperRow("Table 4", "EfficientNet-B1", "efficientnet_b1", None, _EFF, 0.70 * G, 0.70 * G, 7.80 * M, 78.50),
    PaperRow("Table 4", "Struct-EffNet", "efficientnet_b1", "A", _EFF, 0.62 * G, 0.45 * G, 4.93 * M, 76.40),
    PaperRow("Table 4", "EfficientNet-B0", "efficientnet_b0", None, (3, 224, 224), 0.39 * G, 0.39 * G, 5.30 * M, 76.10),
    # Table 5: HRNetV2-W18-Small-v2 on Cityscapes (segmentation, mIoU; x10^9 ops, x10^6 params)
    PaperRow(
        "Table 5", "HRNetV2-W18-Small-v2", "hrnet_w18_small_v2_seg", None, _CITY, 76.8 * G, 77.1 * G, 3.9 * M, 76.1
    ),
    PaperRow("Table 5", "Struct-HR-A", "hrnet_w18_small_v2_seg", "A", _CITY, 54.3 * G, 54.0 * G, 1.9 * M, 74.6),
)


def paper_row(arch: str, struct: str | None = None) -> PaperRow | None:
    """The paper's row for ``arch`` (baseline when ``struct`` is None), or None."""
    struct = struct.upper() if struct else None
    for row in PAPER_ROWS:
        if row.arch == arch and row.struct == struct:
            return row
    return None
