"""Step-0 accuracy of the searched calibration against the amount of calibration data (issue 16):
Struct-A on teacher s0, batches of 128 training images, full test set.

    python benchmarks/calibration_amount.py 8 32
"""

import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from structconv.calibration import calibrate_
from structconv.data import build_datasets
from structconv.evaluation import evaluate
from structconv.models import create_model, structurize_model
from structconv.serialization import load_dense_weights

torch.set_num_threads(1)
train_ds, test_ds, info = build_datasets("fashion-mnist", "data", seed=0)
test = DataLoader(test_ds, batch_size=500)
dense = create_model("cifar_resnet20", num_classes=10, in_chans=1)
load_dense_weights(
    dense, str(Path(__file__).parent / "results" / "teachers" / "cifar_resnet20_e30_s0" / "model.pth"), name="t"
)
dense.eval()
for nb in [int(a) for a in sys.argv[1:]]:
    gen = torch.Generator().manual_seed(0)
    loader = DataLoader(train_ds, batch_size=128, shuffle=True, generator=gen)
    m = structurize_model(copy.deepcopy(dense), "cifar_resnet20", struct="A")
    t = time.perf_counter()
    rep = calibrate_(m, dense, loader, max_batches=nb, search_structure=True)
    print(
        json.dumps(
            {
                "batches": nb,
                "images": nb * 128,
                "acc": evaluate(m, test, "cpu")[0],
                "err": rep.mean_error_calibrated,
                "s": time.perf_counter() - t,
            }
        ),
        flush=True,
    )
