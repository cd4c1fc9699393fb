"""Wall-clock cost per training step of each recipe relative to plain SR (Eq. 3 through autograd of
sc.structural_regularization, the library's trainer).  Interleaved rounds (A B C ... A B C ...), the
median of per-round ratios to plain SR.  1 thread, batch 128, 28x28 Fashion-MNIST batches.

    python benchmarks/archive/recipe_screen/timing.py ARCH [ROUNDS] [STEPS]
"""
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from common import (
    RESULTS,
    Loader,
    ProjectedPhase,
    build,
    fmnist,
    make_optimizer,
    save_json,
    sr_grad_,
    structured_layers,
)

import structconv as sc


def make(arch, recipe):
    if recipe == "direct":
        from structconv.training import to_direct
        m = to_direct(build(arch, 0)).to(memory_format=torch.channels_last)
    elif recipe == "dense":
        m = build(arch, 0, structured=False)
    else:
        m = build(arch, 0)
    opt = make_optimizer(m, 0.01)
    state = {"phase": ProjectedPhase(m, opt) if recipe == "projected" else None}
    return m, opt, state


def step(recipe, m, opt, xb, yb):
    out = m(xb)
    loss = F.cross_entropy(out, yb)
    if recipe == "sr_autograd":
        loss = loss + sc.structural_regularization(m)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if recipe in ("sr_closed_form", "sr_n"):
        for _, l in structured_layers(m):
            scale = 1.0
            if recipe == "sr_n":
                with torch.no_grad():
                    e = l.basis.error(l.weight)
                    nf = max(1 - e * e, 1e-12) ** 0.5 / float(torch.linalg.vector_norm(l.weight))
                    scale = max(1.0, 2.0 * float(torch.linalg.vector_norm(l.weight.grad)) / nf)
            sr_grad_(l.weight, l.basis, scale)
    opt.step()


if __name__ == "__main__":
    arch = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    recipes = ["sr_autograd", "sr_closed_form", "sr_n", "projected", "direct", "dense"]
    x, y, _, _ = fmnist()
    it = iter(Loader(x, y, 128, 0))
    batches = [next(it) for _ in range(steps)]
    models = {r: make(arch, r) for r in recipes}
    for r in recipes:  # warm-up
        for xb, yb in batches[:3]:
            step(r, *models[r][:2], xb, yb)
    times = {r: [] for r in recipes}
    for _ in range(rounds):
        for r in recipes:
            m, opt, _ = models[r]
            t = time.perf_counter()
            for xb, yb in batches:
                step(r, m, opt, xb, yb)
            times[r].append((time.perf_counter() - t) / steps)
    out = {}
    for r in recipes:
        ratios = [a / b for a, b in zip(times[r], times["sr_autograd"])]
        out[r] = {"sec_per_step_median": statistics.median(times[r]), "ratio_to_sr_median": statistics.median(ratios),
                  "ratios": ratios}
        print(f"{arch:15s} {r:15s} {statistics.median(times[r]):.3f} s/step  x{statistics.median(ratios):.2f} of SR")
    save_json({"arch": arch, "rounds": rounds, "steps": steps, "results": out}, RESULTS / "timing" / f"{arch}.json")
