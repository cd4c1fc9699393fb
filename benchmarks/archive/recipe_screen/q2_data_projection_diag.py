"""Q2 diagnostic: accuracy right after the data-aware projection of the seed-0 dense small CNN (before /
after BN re-calibration) and the resulting weight norms, for a few calibration sizes and ridges.

    python benchmarks/archive/recipe_screen/q2_data_projection_diag.py
"""

import torch
from common import RESULTS, accuracy, build, fmnist, recalibrate_bn, save_json, structured_layers
from data_projection import data_aware_project_
from torch import nn

x, y, xt, yt = fmnist()
path = RESULTS / "q2_dense" / "models" / "small_cnn_dense_s0.pt"
d = build("small_cnn", 0, structured=False)
d.load_state_dict(torch.load(path))
d.eval()
out = {"dense_acc": accuracy(d, xt, yt),
       "dense_norms": {n: float(m.weight.detach().norm()) for n, m in d.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}}
for n_img, ridge in [(2048, 1e-3), (8192, 1e-3), (8192, 1e-1)]:
    m = build("small_cnn", 0)
    m.load_state_dict(torch.load(path))
    data_aware_project_(m, d, x, n_images=n_img, ridge=ridge)
    a0 = accuracy(m, xt, yt)
    recalibrate_bn(m, x)
    out[f"n{n_img}_ridge{ridge:g}"] = {"acc": a0, "acc_bnrecal": accuracy(m, xt, yt),
                                       "norms": {n: float(l.weight.detach().norm()) for n, l in structured_layers(m)}}
    print(n_img, ridge, out[f"n{n_img}_ridge{ridge:g}"], flush=True)
m = build("small_cnn", 0)
m.load_state_dict(torch.load(path))
for _, l in structured_layers(m):
    l.project_()
out["frobenius"] = {"acc": accuracy(m, xt, yt), "norms": {n: float(l.weight.detach().norm()) for n, l in structured_layers(m)}}
recalibrate_bn(m, x)
out["frobenius"]["acc_bnrecal"] = accuracy(m, xt, yt)
print(out["frobenius"])
save_json(out, RESULTS / "q2_diag" / "data_projection_small_cnn_s0.json")
