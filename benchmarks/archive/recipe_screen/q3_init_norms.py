"""Q3 diagnostic: weight norms at init of cifar_resnet20 Struct-A: the model's own init W0, its
projection P W0 (what SR's decomposition would start from), and what the library's direct-training
init (structconv.train.to_direct) composes to.

    python benchmarks/archive/recipe_screen/q3_init_norms.py
"""

import torch
from common import RESULTS, build, save_json, structured_layers

from structconv.layers import DecomposedLayer, deorthonormalize_
from structconv.training import to_direct

m = build("cifar_resnet20", 0)
torch.manual_seed(0)
d = deorthonormalize_(to_direct(build("cifar_resnet20", 0)))
dl = {n: x for n, x in d.named_modules() if isinstance(x, DecomposedLayer)}
rows = {}
for n, l in structured_layers(m):
    w0 = torch.linalg.vector_norm(l.weight).item()
    pw0 = torch.linalg.vector_norm(l.basis.project(l.weight)).item()
    lib = torch.linalg.vector_norm(dl[n].basis.compose(dl[n].weight)).item()
    rows[n] = {"W0": w0, "PW0": pw0, "library_direct": lib, "ratio_W0_over_library": w0 / lib}
    print(f"{n:22s} ||W0|| {w0:7.3f}  ||P W0|| {pw0:7.3f}  library direct ||A alpha|| {lib:7.3f}  W0/lib {w0/lib:5.2f}")
save_json(rows, RESULTS / "q3_direct" / "init_norms.json")
