"""Q1: old recipe (Eq. 3, lambda = 1) vs the new ones, side by side, on the small CNN (1 epoch = 468
steps), resnet18 and mobilenet_v2 (300 steps = 0.64 epoch; in_chans 1, 10 classes, 28x28, ratio 2 on
every layer including the head).  Seeds from $SEEDS (default 0,1,2).

    SEEDS=0,1,2 OMP_NUM_THREADS=1 nice -n 5 \
        python benchmarks/archive/recipe_screen/q1_models.py ARCH [config names...]
"""
import os
import sys

from common import run_cached

STEPS = {"small_cnn": 468, "resnet18": 300, "mobilenet_v2": 300, "cifar_resnet20": 468}
NEW = dict(sr="adaptive", lam=1.0, kappa=2.0, kappa_ramp=0.5, task_norm="full")
CONFIGS = {
    "old": dict(sr="eq3", lam=1.0),
    "new": dict(NEW, proj_frac=0.05),           # SR-N: normalized SR + 5 % projected finish
    "new_noproj": dict(NEW),                    # SR-N without the projected finish
    "proj10": dict(sr="eq3", lam=1.0, proj_frac=0.1),   # old SR + 10 % projected finish
    "lam10": dict(sr="eq3", lam=10.0),
    "new_pinit": dict(NEW, proj_frac=0.05, project_init=True),   # SR-N from a projected init
    "new_ramp25": dict(NEW, kappa_ramp=0.25, proj_frac=0.05),
}

if __name__ == "__main__":
    arch = sys.argv[1]
    names = sys.argv[2:] or list(CONFIGS)
    for seed in [int(v) for v in os.environ.get("SEEDS", "0,1,2").split(",")]:
        for name in names:
            run_cached(f"{arch}_{name}_s{seed}", {**CONFIGS[name], "arch": arch, "seed": seed, "steps": STEPS[arch]},
                       "q1_models")
