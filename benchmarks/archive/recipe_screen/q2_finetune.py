"""Q2: fine-tuning a trained dense model into Struct form within 25 % of the dense training steps.

Dense teachers: DENSE_STEPS[arch] steps of the dense recipe (lr 0.1 cosine, batch 128), seeds 0-2,
saved under results/q2_dense/models/.  Each fine-tuning config runs at budgets of 5/10/25 % of the
dense steps (BUDGETS) for the seeds in $SEEDS (default 0,1,2).

    SEEDS=0,1,2 OMP_NUM_THREADS=1 nice -n 5 \
        python benchmarks/archive/recipe_screen/q2_finetune.py ARCH [config names...]
"""
import os
import sys

from common import RESULTS, run_cached

DENSE_STEPS = {"small_cnn": 936, "cifar_resnet20": 936, "resnet18": 936}


def dense_path(arch, seed):
    return str(RESULTS / "q2_dense" / "models" / f"{arch}_dense_s{seed}.pt")


def configs(arch, seed):
    d = dense_path(arch, seed)
    ft = dict(init=d, lr=0.01)
    return {
        # the two baselines of the issue
        "sr_lam1": dict(ft, sr="eq3", lam=1.0),
        "proj": dict(ft, sr="none", project_at_start=True),
        # components
        "proj_bn": dict(ft, sr="none", project_at_start=True, bn_recal_start=True),
        "proj_bn_kd": dict(ft, sr="none", project_at_start=True, bn_recal_start=True, teacher=d, kd_alpha=0.9),
        "data_bn": dict(ft, sr="none", init_projection="data", project_at_start=True, bn_recal_start=True),
        "data_bn_kd": dict(ft, sr="none", init_projection="data", project_at_start=True, bn_recal_start=True,
                           teacher=d, kd_alpha=0.9),
        "data_bn_kd_lr03": dict(ft, lr=0.03, sr="none", init_projection="data", project_at_start=True,
                                bn_recal_start=True, teacher=d, kd_alpha=0.9),
        "data_bn_kd1": dict(ft, sr="none", init_projection="data", project_at_start=True, bn_recal_start=True,
                            teacher=d, kd_alpha=1.0, kd_T=1.0),
        "proj_bn_kd_lr03": dict(ft, lr=0.03, sr="none", project_at_start=True, bn_recal_start=True, teacher=d, kd_alpha=0.9),
        "proj_bn_kd_lr05": dict(ft, lr=0.05, sr="none", project_at_start=True, bn_recal_start=True, teacher=d, kd_alpha=0.9),
        "anneal50_kd": dict(ft, sr="none", anneal_frac=0.5, teacher=d, kd_alpha=0.9),
        "anneal50_kd_lr03": dict(ft, lr=0.03, sr="none", anneal_frac=0.5, teacher=d, kd_alpha=0.9),
        "anneal25_kd_lr03": dict(ft, lr=0.03, sr="none", anneal_frac=0.25, teacher=d, kd_alpha=0.9),
        "anneal50_kd1_lr03": dict(ft, lr=0.03, sr="none", anneal_frac=0.5, teacher=d, kd_alpha=1.0, kd_T=1.0),
        "anneal50_lr03": dict(ft, lr=0.03, sr="none", anneal_frac=0.5),
        "data_bn_kd_lr05": dict(ft, lr=0.05, sr="none", init_projection="data", project_at_start=True,
                                bn_recal_start=True, teacher=d, kd_alpha=0.9),
        "proj_bn_kd_lr10": dict(ft, lr=0.1, sr="none", project_at_start=True, bn_recal_start=True, teacher=d, kd_alpha=0.9),
        "proj_bn_kd_lr20": dict(ft, lr=0.2, sr="none", project_at_start=True, bn_recal_start=True, teacher=d, kd_alpha=0.9),
        "proj_bn_lr05": dict(ft, lr=0.05, sr="none", project_at_start=True, bn_recal_start=True),
        "proj_bn_kd1_lr05": dict(ft, lr=0.05, sr="none", project_at_start=True, bn_recal_start=True, teacher=d,
                                 kd_alpha=1.0, kd_T=1.0),
        "anneal25_kd_lr10": dict(ft, lr=0.1, sr="none", anneal_frac=0.25, teacher=d, kd_alpha=0.9),
        "data_bn_kd_lr10": dict(ft, lr=0.1, sr="none", init_projection="data", project_at_start=True,
                                bn_recal_start=True, teacher=d, kd_alpha=0.9),
        "sr_adapt_kd_proj": dict(ft, sr="adaptive", kappa=2.0, kappa_ramp=0.5, task_norm="full", proj_frac=0.2,
                                 teacher=d, kd_alpha=0.9),
    }


if __name__ == "__main__":
    arch = sys.argv[1]
    names = sys.argv[2:]
    seeds = [int(v) for v in os.environ.get("SEEDS", "0,1,2").split(",")]
    fracs = [float(v) for v in os.environ.get("BUDGETS", "0.25").split(",")]
    for seed in seeds:
        run_cached(f"{arch}_dense_s{seed}", dict(arch=arch, seed=seed, steps=DENSE_STEPS[arch], structured=False,
                                                  sr="none"), "q2_dense", save_model=True)
    for seed in seeds:
        cf = configs(arch, seed)
        for name in names or list(cf):
            for frac in fracs:
                steps = int(round(frac * DENSE_STEPS[arch]))
                run_cached(f"{arch}_{name}_b{int(frac * 100)}_s{seed}", dict(cf[name], arch=arch, seed=seed, steps=steps),
                           "q2_ft")
