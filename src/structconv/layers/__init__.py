"""Structured, decomposed and composite layers: thin modules over :mod:`structconv.functional`.

Three forms of one layer:

* **Training form** -- ``StructuredConv{1,2,3}d`` / ``StructuredLinear`` subclass the ``nn``
  layer they replace, keep its constructor and state_dict keys, compute densely, and know
  their basis (``structure_error``, ``project_``, ``decompose``).
* **Deployment form** -- ``DecomposedConv{1,2,3}d`` / ``DecomposedLinear``: a parameter-free
  :class:`SumPool` followed by a small ``nn.ConvNd`` / ``nn.Linear`` whose weight is
  ``alpha = A^+ W``.  Built from scratch they are the direct-training form of Sec. 6.4.
* **Composite** -- ``CompositeConv{1,2,3}d`` takes any composite basis (Def. 1); its
  decomposition (Eq. 1) sums the input under each mask, then combines the sums with ``alpha``.

Modules: :mod:`._common` (the mixins), :mod:`.sum_pool`, :mod:`.conv`, :mod:`.linear`,
:mod:`.composite`, :mod:`.parametrize` (direct training).
"""

from ._common import DecomposedLayer, StructuredLayer
from .composite import CompositeConv1d, CompositeConv2d, CompositeConv3d, DecomposedCompositeConv
from .conv import (
    DECOMPOSED_CONV,
    STRUCTURED_CONV,
    DecomposedConv1d,
    DecomposedConv2d,
    DecomposedConv3d,
    DecomposedConvNd,
    StructuredConv1d,
    StructuredConv2d,
    StructuredConv3d,
    StructuredConvNd,
)
from .linear import DecomposedLinear, StructuredLinear
from .parametrize import OrthonormalCoefficients, deorthonormalize_, orthonormalize_, small_layer
from .sum_pool import SumPool, set_sum_pool_backends

__all__ = [
    "StructuredLayer",
    "DecomposedLayer",
    "SumPool",
    "set_sum_pool_backends",
    "StructuredConvNd",
    "StructuredConv1d",
    "StructuredConv2d",
    "StructuredConv3d",
    "StructuredLinear",
    "DecomposedConvNd",
    "DecomposedConv1d",
    "DecomposedConv2d",
    "DecomposedConv3d",
    "DecomposedLinear",
    "STRUCTURED_CONV",
    "DECOMPOSED_CONV",
    "CompositeConv1d",
    "CompositeConv2d",
    "CompositeConv3d",
    "DecomposedCompositeConv",
    "OrthonormalCoefficients",
    "orthonormalize_",
    "deorthonormalize_",
    "small_layer",
]
