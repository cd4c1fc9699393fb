"""structconv: Structured Convolutions for Efficient Neural Network Design (NeurIPS 2020) in PyTorch.

Typical use::

    import structconv as sc
    model = sc.structurize(torchvision.models.resnet18(), ratio=2.0)   # training form
    loss = task_loss + lam * sc.structural_regularization(model)        # Step 1 (Eq. 3)
    deployed = sc.decompose(model)                                      # Step 2: sum-pool + small conv
    print(sc.count_ops(deployed, (1, 3, 224, 224)))
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from .basis import CompositeBasis, StructuredBasis
from .calibration import CalibrationReport, calibrate_
from .complexity import OpsReport, count_ops
from .convert import (
    DEFAULT_TOLERANCE,
    StructurePlan,
    StructureSpec,
    StructureWarning,
    UnstructuredError,
    decompose,
    plan,
    restructure_,
    structurize,
)
from .deployment import Deployment, deploy
from .finetuning import finetune_from_dense
from .functional import box_sum, structured_conv, sum_pool
from .layers import (
    CompositeConv1d,
    CompositeConv2d,
    CompositeConv3d,
    DecomposedCompositeConv,
    DecomposedConv1d,
    DecomposedConv2d,
    DecomposedConv3d,
    DecomposedLayer,
    DecomposedLinear,
    StructuredConv1d,
    StructuredConv2d,
    StructuredConv3d,
    StructuredLayer,
    StructuredLinear,
    SumPool,
)
from .regularizer import structural_regularization, structure_errors
from .serialization import load, save

try:
    __version__ = _version("structconv")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"

__all__ = [
    "CalibrationReport",
    "calibrate_",
    "finetune_from_dense",
    "CompositeBasis",
    "StructuredBasis",
    "OpsReport",
    "count_ops",
    "StructurePlan",
    "StructureSpec",
    "decompose",
    "plan",
    "structurize",
    "restructure_",
    "DEFAULT_TOLERANCE",
    "StructureWarning",
    "UnstructuredError",
    "box_sum",
    "structured_conv",
    "sum_pool",
    "CompositeConv1d",
    "CompositeConv2d",
    "CompositeConv3d",
    "DecomposedCompositeConv",
    "DecomposedConv1d",
    "DecomposedConv2d",
    "DecomposedConv3d",
    "DecomposedLayer",
    "DecomposedLinear",
    "StructuredConv1d",
    "StructuredConv2d",
    "StructuredConv3d",
    "StructuredLayer",
    "StructuredLinear",
    "SumPool",
    "deploy",
    "Deployment",
    "structural_regularization",
    "structure_errors",
    "load",
    "save",
    "__version__",
]
