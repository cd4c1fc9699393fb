"""Screen (issue 16): block-wise output reconstruction after the searched calibration, written before
structconv.reconstruction existed (it also reconstructs the stem with its BN+ReLU and the head).

    python benchmarks/reconstruction_screen.py ITERS LR   # 200 1e-3, 500 1e-3, 200 3e-3
"""

import copy
import json
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

import structconv as sc
from structconv.calibration import calibrate_
from structconv.data import build_datasets
from structconv.evaluation import evaluate
from structconv.models import create_model, structurize_model
from structconv.regularizer import project_gradients_, project_weights_
from structconv.serialization import load_dense_weights

torch.set_num_threads(1)
iters = int(sys.argv[1]) if len(sys.argv) > 1 else 200
lr = float(sys.argv[2]) if len(sys.argv) > 2 else 1e-3
train_ds, test_ds, info = build_datasets("fashion-mnist", "data", seed=0)
test = DataLoader(test_ds, batch_size=500)
gen = torch.Generator().manual_seed(0)
batches = []
for x, _ in DataLoader(train_ds, batch_size=128, shuffle=True, generator=gen):
    batches.append(x)
    if len(batches) == 8:
        break
dense = create_model("cifar_resnet20", num_classes=10, in_chans=1)
load_dense_weights(dense, __file__.rsplit("/", 1)[0] + "/results/teachers/cifar_resnet20_e30_s0/model.pth", name="t")
dense.eval()
m = structurize_model(copy.deepcopy(dense), "cifar_resnet20", struct="A")
calibrate_(m, dense, batches, search_structure=True)
m.eval()
print("calibrated", evaluate(m, test, "cpu")[0], flush=True)


def blocks(net):
    return [
        nn.Sequential(net.conv1, net.bn1, net.relu),
        *net.layer1,
        *net.layer2,
        *net.layer3,
        nn.Sequential(net.avgpool, nn.Flatten(1), net.fc),
    ]


db, sb = blocks(dense), blocks(m)
X = torch.cat(batches)
xd, xs = X, X
t0 = time.perf_counter()
for i, (bd, bs) in enumerate(zip(db, sb)):
    with torch.no_grad():
        yd = bd(xd)
    params = [p for n, p in bs.named_parameters() if n.endswith("weight") and p.dim() > 1]
    if params:
        opt = torch.optim.Adam(params, lr=lr)
        for it in range(iters):
            idx = torch.randint(0, X.shape[0], (128,), generator=gen)
            loss = F.mse_loss(bs(xs[idx]), yd[idx])
            opt.zero_grad()
            loss.backward()
            project_gradients_(bs)
            opt.step()
            project_weights_(bs)  # Adam leaves the subspace: project back
        project_weights_(bs)
    with torch.no_grad():
        xd, xs = yd, bs(xs)
        err = ((xs - yd).norm() / yd.norm()).item()
    print(i, round(err, 4), flush=True)
print(
    json.dumps(
        {
            "iters": iters,
            "lr": lr,
            "acc": evaluate(m, test, "cpu")[0],
            "acc_dec": evaluate(sc.decompose(m), test, "cpu")[0],
            "s": time.perf_counter() - t0,
        }
    ),
    flush=True,
)
