"""Q3: direct training (Sec. 6.4) vs SR on cifar_resnet20 Struct-A, 1 epoch (468 steps), Fashion-MNIST.

    SEEDS=0,1,2 OMP_NUM_THREADS=1 nice -n 5 \
        python benchmarks/archive/recipe_screen/q3_direct.py [config names...]
"""
import os
import sys

from common import run_cached

BASE = dict(arch="cifar_resnet20", steps=468)
CONFIGS = {
    "sr_lam1": dict(sr="eq3", lam=1.0),
    "direct_library": dict(direct=True, sr="none"),
    "direct_own": dict(direct=True, sr="none", direct_init="own"),
    "direct_own_rescaled": dict(direct=True, sr="none", direct_init="own_rescaled"),
    "direct_own_lr02": dict(direct=True, sr="none", direct_init="own", lr=0.2),
    "direct_own_lr005": dict(direct=True, sr="none", direct_init="own", lr=0.05),
    "direct_own_lr0025": dict(direct=True, sr="none", direct_init="own", lr=0.025),
    "direct_own_warm5": dict(direct=True, sr="none", direct_init="own", warmup=23),
    # dense start: SR-N (no ramp) in the training form for the first 10/20 %, then exact projected SGD,
    # which is what direct training computes (SGD on beta with the orthonormal parametrization)
    "hybrid_srn20": dict(sr="adaptive", kappa=2.0, task_norm="full", proj_frac=0.8),
    "hybrid_srn10": dict(sr="adaptive", kappa=2.0, task_norm="full", proj_frac=0.9),
    "hybrid_sr20": dict(sr="eq3", lam=1.0, proj_frac=0.8),
}

if __name__ == "__main__":
    names = sys.argv[1:] or list(CONFIGS)
    for seed in [int(v) for v in os.environ.get("SEEDS", "0").split(",")]:
        for name in names:
            run_cached(f"{name}_s{seed}", {**BASE, **CONFIGS[name], "seed": seed}, "q3_direct")
