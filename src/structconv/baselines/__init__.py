"""What a practitioner would use instead of structured convolutions, at matched multiplications.

Three alternatives, each brought to a target multiplication count (the paper's accounting,
:func:`structconv.count_ops`) within ±3 %, so a comparison is at equal cost:

* :func:`prune_to_mults` -- channel pruning of the trained model with Torch-Pruning
  (progressive group-magnitude pruning); :func:`save_pruned` / :func:`load_pruned`.
* :func:`weight_svd` / :func:`spatial_svd` -- low-rank factorization of the trained weights
  (AIMET's two SVD compressions, the paper's WeightSVD baseline).
* :func:`narrow_to_mults` -- the same architecture with fewer channels (a uniform width
  multiplier), freshly initialized, to be trained from scratch.

Channel pruning and narrow networks need the optional dependency Torch-Pruning
(``pip install 'structconv[compare]'``).
"""

from ._matching import TOLERANCE
from .lowrank import factor_spatial_svd, factor_weight_svd, spatial_svd, weight_svd
from .narrow import narrow_to_mults
from .pruning import ChannelMapShortcut, load_pruned, prune_to_mults, save_pruned

__all__ = [
    "TOLERANCE",
    "factor_spatial_svd",
    "factor_weight_svd",
    "spatial_svd",
    "weight_svd",
    "narrow_to_mults",
    "ChannelMapShortcut",
    "load_pruned",
    "prune_to_mults",
    "save_pruned",
]
