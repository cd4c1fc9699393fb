"""Q1 screen on the small CNN (1 epoch = 468 steps, seed 0 unless given): which recipe makes every
layer reach structure error <= 1e-3 at the end of Step 1.

    python benchmarks/archive/recipe_screen/q1_screen.py [names...]
"""
import sys

from common import run_cached

BASE = dict(arch="small_cnn", steps=468)
CONFIGS = {
    "old_eq3_lam1": dict(sr="eq3", lam=1.0),
    "eq3_lam10": dict(sr="eq3", lam=10.0),
    "adaptive_k2": dict(sr="adaptive", kappa=2.0),
    "adaptive_k2_ramp50": dict(sr="adaptive", kappa=2.0, kappa_ramp=0.5),
    "eq3_proj10": dict(sr="eq3", lam=1.0, proj_frac=0.1),
    "eq3_proj20": dict(sr="eq3", lam=1.0, proj_frac=0.2),
    "eq3_lamgeo1to100": dict(sr="eq3", lam=1.0, lam_end=100.0),
    "dense_lam0": dict(sr="none"),
    "adaptfull_k2_ramp50": dict(sr="adaptive", kappa=2.0, kappa_ramp=0.5, task_norm="full"),
    "adaptfull_k1_ramp50": dict(sr="adaptive", kappa=1.0, kappa_ramp=0.5, task_norm="full"),
    "adaptfull_k2_ramp50_proj5": dict(sr="adaptive", kappa=2.0, kappa_ramp=0.5, task_norm="full", proj_frac=0.05),
    "adaptfull_k2_ramp100": dict(sr="adaptive", kappa=2.0, kappa_ramp=1.0, task_norm="full"),
}

if __name__ == "__main__":
    names = sys.argv[1:] or list(CONFIGS)
    seeds = [int(v) for v in __import__("os").environ.get("SEEDS", "0").split(",")]
    for seed in seeds:
        for name in names:
            run_cached(f"{name}_s{seed}", {**BASE, **CONFIGS[name], "seed": seed}, "q1_screen")
