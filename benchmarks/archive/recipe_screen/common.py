"""Shared pieces of the recipe experiments: data, models, training loop, evaluation.

Everything runs on 1 CPU thread.  Data: Fashion-MNIST from Debian's files, held as tensors;
train augmentation = pad 2 (with the value of a black pixel) + random 28x28 crop + horizontal
flip, vectorized per batch and seeded per (seed, epoch) so a run is reproducible.
"""
from __future__ import annotations

import copy
import gzip
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import structconv as sc

torch.set_num_threads(1)
FMNIST = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530
ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"


# ---------------------------------------------------------------------------------- data
def _idx(name: str) -> np.ndarray:
    with gzip.open(FMNIST / name, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


_CACHE: dict = {}


def fmnist():
    """(x_train, y_train, x_test, y_test): float32 normalized (N,1,28,28) and int64 labels."""
    if not _CACHE:
        for split, pre in (("train", "train"), ("test", "t10k")):
            x = torch.from_numpy(_idx(f"{pre}-images-idx3-ubyte.gz").copy()).float().div_(255)
            _CACHE[split] = ((x.sub_(MEAN).div_(STD)).unsqueeze(1), torch.from_numpy(_idx(f"{pre}-labels-idx1-ubyte.gz").astype(np.int64)))
    return (*_CACHE["train"], *_CACHE["test"])


class Loader:
    """Infinite seeded stream of augmented training batches (drop_last, reshuffled every epoch)."""

    def __init__(self, x, y, batch_size=128, seed=0, augment=True):
        self.x, self.y, self.bs, self.seed, self.augment = x, y, batch_size, seed, augment
        self.steps_per_epoch = len(x) // batch_size

    def __iter__(self):
        epoch = 0
        pad_value = (0 - MEAN) / STD
        ar = torch.arange(28)
        while True:
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            perm = torch.randperm(len(self.x), generator=g)
            for i in range(self.steps_per_epoch):
                idx = perm[i * self.bs:(i + 1) * self.bs]
                xb, yb = self.x[idx], self.y[idx]
                if self.augment:
                    p = F.pad(xb, (2, 2, 2, 2), value=pad_value)[:, 0]
                    oy = torch.randint(0, 5, (len(idx),), generator=g)
                    ox = torch.randint(0, 5, (len(idx),), generator=g)
                    b = torch.arange(len(idx))[:, None, None]
                    xb = p[b, (oy[:, None] + ar)[:, :, None], (ox[:, None] + ar)[:, None, :]]
                    flip = torch.rand(len(idx), generator=g) < 0.5
                    xb = torch.where(flip[:, None, None], xb.flip(-1), xb).unsqueeze(1)
                yield xb.contiguous(memory_format=torch.channels_last), yb
            epoch += 1


# ---------------------------------------------------------------------------------- models
class SmallCNN(nn.Module):
    """Three 3x3 convs (BN + ReLU; 1->16 at 28x28, 16->32 at 14x14, 32->64 at 7x7) and a Linear(3136, 10) head."""

    def __init__(self, num_classes=10):
        super().__init__()
        def block(i, o):
            return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*block(1, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2), *block(32, 64))
        self.fc = nn.Linear(3136, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


def dense_model(arch: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if arch == "small_cnn":
        return SmallCNN()
    from structconv.models import create_model
    return create_model(arch, num_classes=10, in_chans=1)


def structurize(model: nn.Module, arch: str) -> nn.Module:
    """The plan of the brief: Struct-A for cifar_resnet20, ratio 2 on every layer otherwise."""
    if arch == "cifar_resnet20":
        from structconv.models import structurize_model
        return structurize_model(model, arch, struct="A")
    return sc.structurize(model, 2.0, inplace=True)


def build(arch: str, seed: int, structured=True) -> nn.Module:
    m = dense_model(arch, seed)
    if structured:
        m = structurize(m, arch)
    return m.to(memory_format=torch.channels_last)


from data_projection import structured_layers  # noqa: E402 - defined beside its main user


def layer_type(name: str, m: nn.Module, first: str) -> str:
    if isinstance(m, nn.Linear):
        return "linear_head"
    if name == first:
        return "stem"
    if m.groups > 1 and m.groups == m.in_channels:
        return "depthwise"
    if tuple(m.kernel_size) == (1, 1):
        return "1x1"
    return "kxk"


def layer_types(model) -> dict[str, str]:
    layers = structured_layers(model)
    first = layers[0][0]
    return {n: layer_type(n, m, first) for n, m in layers}


# ---------------------------------------------------------------------------------- eval
@torch.no_grad()
def accuracy(model, x, y, bs=1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), bs):
        xb = x[i:i + bs].contiguous(memory_format=torch.channels_last)
        correct += (model(xb).argmax(1) == y[i:i + bs]).sum().item()
    return 100.0 * correct / len(x)


def evaluate(model, x, y, *, head_only=True) -> dict:
    """Accuracy as trained, after ``sc.decompose``, per-layer errors, and (diagnostic) the accuracy
    with only the Linear head projected."""
    errs = sc.structure_errors(model)
    types = layer_types(model)
    out = {"acc": accuracy(model, x, y)}
    with torch.random.fork_rng(devices=[]):
        dec = sc.decompose(model).to(memory_format=torch.channels_last)
    out["acc_decomposed"] = accuracy(dec, x, y)
    out["decomp_cost"] = out["acc"] - out["acc_decomposed"]
    if head_only and any(t == "linear_head" for t in types.values()):
        m2 = copy.deepcopy(model)
        for n, m in structured_layers(m2):
            if types[n] == "linear_head":
                m.project_()
        out["acc_head_projected"] = accuracy(m2, x, y)
    out["errors"] = errs
    out["types"] = types
    by = {}
    for n, e in errs.items():
        by.setdefault(types[n], []).append(e)
    out["error_by_type_max"] = {t: max(v) for t, v in by.items()}
    out["error_by_type_mean"] = {t: sum(v) / len(v) for t, v in by.items()}
    out["error_max"] = max(errs.values())
    return out


# ---------------------------------------------------------------------------------- SR pieces
def sr_grad_(w: torch.Tensor, basis, scale: float | torch.Tensor) -> tuple[float, torch.Tensor]:
    """Add ``scale * d/dW (||(I-P)W|| / ||W||)`` to ``w.grad`` in place (closed form of Eq. 3's
    gradient: ``RW/(r w) - r W / w^3``); returns (relative error, the gradient norm per unit scale)."""
    with torch.no_grad():
        res = w - basis.project(w)
        wn = torch.linalg.vector_norm(w)
        rn = torch.linalg.vector_norm(res)
        e = rn / wn
        if rn > 0:
            g = res / (rn * wn) - (rn / wn**3) * w
            w.grad.add_(g, alpha=float(scale)) if not torch.is_tensor(scale) else w.grad.add_(g * scale)
        return float(e), torch.sqrt((1 - e * e).clamp_min(0)) / wn


def cosine_lr(step, total, base, warmup=0):
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * t))


def make_optimizer(model, lr, momentum=0.9, wd=1e-4):
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return torch.optim.SGD([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
                           lr=lr, momentum=momentum)


class ProjectedPhase:
    """Project every structured weight and its momentum buffer, then keep gradients projected
    (a hook on each weight): exact projected SGD from here on (weight decay of a structured
    weight is structured, so the weight stays in the subspace)."""

    def __init__(self, model, optimizer):
        self.handles = []
        self.layers = structured_layers(model)
        with torch.no_grad():
            for _, m in self.layers:
                m.project_()
                st = optimizer.state.get(m.weight)
                if st and st.get("momentum_buffer") is not None:
                    st["momentum_buffer"].copy_(m.basis.project(st["momentum_buffer"]))
                basis = m.basis
                self.handles.append(m.weight.register_hook(lambda g, b=basis: b.project(g)))

    def reproject(self):
        with torch.no_grad():
            for _, m in self.layers:
                m.project_()

    def remove(self):
        for h in self.handles:
            h.remove()


def save_json(obj, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


@torch.no_grad()
def recalibrate_bn(model, x, n_batches=40, bs=128, seed=0):
    """Re-estimate BatchNorm running statistics (cumulative average) on un-augmented training images."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    saved = [(m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    g = torch.Generator().manual_seed(seed + 7)
    idx = torch.randperm(len(x), generator=g)[: n_batches * bs]
    for i in range(n_batches):
        model(x[idx[i * bs:(i + 1) * bs]].contiguous(memory_format=torch.channels_last))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()
    return model


def kd_loss(logits, targets, teacher_logits, alpha, T):
    ce = F.cross_entropy(logits, targets)
    if teacher_logits is None or alpha == 0:
        return ce
    kl = F.kl_div(F.log_softmax(logits / T, 1), F.log_softmax(teacher_logits / T, 1), reduction="batchmean",
                  log_target=True) * T * T
    return (1 - alpha) * ce + alpha * kl


DEFAULTS = dict(
    arch="small_cnn", seed=0, steps=468, batch=128, lr=0.1, momentum=0.9, wd=1e-4, warmup=0,
    structured=True, direct=False,
    direct_init="library",  # direct training init: library (to_direct) | own (A^+ W0 of the model's own init) | own_rescaled
    sr="eq3",            # eq3 | adaptive | none
    lam=1.0,             # Eq. 3 lambda (the floor of the per-layer scale for 'adaptive')
    kappa=2.0,           # adaptive: SR gradient norm >= kappa * ||R g_task|| per layer
    kappa_ramp=0.0,      # adaptive: kappa ramps linearly from 0 over this fraction of the steps
    task_norm="residual",  # adaptive: compare with ||R g_task|| ('residual', one more projection) or ||g_task|| ('full')
    lam_ramp=0.0,        # eq3: lambda ramps linearly from 0 over this fraction of the steps
    lam_end=None,        # eq3: lambda goes geometrically from lam to lam_end over the run
    proj_frac=0.0,       # final projected phase: the last proj_frac of the steps
    project_at_start=False,
    project_init=False,  # start SR from the projection of the init, rescaled to the init's norm (no hooks)
    anneal_frac=0.0,     # residual annealing: after each step W <- PW + a(t+1)/a(t) (W - PW), a(t) = (1 - t/(f T))^power,
    anneal_power=3.0,    #   reaching a = 0 (exact projection, then projected SGD) at step f*T
    init=None,           # path of a dense state_dict to start from (fine-tuning)
    init_projection="frobenius",  # frobenius | data (layerwise least squares on activations)
    bn_recal_start=False,
    teacher=None,        # path of a dense state_dict: distillation teacher
    kd_alpha=0.0, kd_T=4.0,
    log_every=25, eval_at=(),
)


def run(cfg: dict, verbose=True) -> dict:
    cfg = {**DEFAULTS, **cfg}
    arch, seed, steps = cfg["arch"], cfg["seed"], cfg["steps"]
    x, y, xt, yt = fmnist()
    model = build(arch, seed, structured=cfg["structured"])
    if cfg["init"]:
        model.load_state_dict(torch.load(cfg["init"]))
    teacher = None
    if cfg["teacher"]:
        teacher = build(arch, seed, structured=False)
        teacher.load_state_dict(torch.load(cfg["teacher"]))
        teacher.eval()
    if cfg["direct"]:
        from structconv.layers import orthonormalize_
        from structconv.training import to_direct
        if cfg["direct_init"] == "library":
            torch.manual_seed(seed)
            model = to_direct(model)
        else:
            with torch.no_grad():
                for _, m in structured_layers(model):
                    wp = m.basis.project(m.weight)
                    if cfg["direct_init"] == "own_rescaled":
                        wp *= torch.linalg.vector_norm(m.weight) / torch.linalg.vector_norm(wp)
                    m.weight.copy_(wp)
            with torch.random.fork_rng(devices=[]):
                model = orthonormalize_(sc.decompose(model))
        model = model.to(memory_format=torch.channels_last)
    layers = structured_layers(model)
    info = {"init": {}}
    if cfg["init"] and cfg["init_projection"] == "data":
        from data_projection import data_aware_project_
        info["init"]["data_projection"] = data_aware_project_(model, teacher_or_dense(cfg, arch, seed), x, seed=seed)
    if cfg["project_init"]:
        with torch.no_grad():
            for _, m in layers:
                wp = m.basis.project(m.weight)
                m.weight.copy_(wp * (torch.linalg.vector_norm(m.weight) / torch.linalg.vector_norm(wp)))
    loader = iter(Loader(x, y, cfg["batch"], seed))
    opt = make_optimizer(model, cfg["lr"], cfg["momentum"], cfg["wd"])
    phase = None
    if cfg["project_at_start"]:
        phase = ProjectedPhase(model, opt)
    if cfg["bn_recal_start"]:
        recalibrate_bn(model, x, seed=seed)
    if cfg["init"] or cfg["project_at_start"]:
        info["init"]["acc"] = accuracy(model, xt, yt) if layers else None
    p_start = int(round((1 - cfg["proj_frac"]) * steps)) if cfg["proj_frac"] > 0 else None
    a_end = int(round(cfg["anneal_frac"] * steps)) if cfg["anneal_frac"] > 0 else None
    if a_end is not None:
        p_start = a_end if p_start is None else min(p_start, a_end)

    def anneal(t):
        return max(0.0, 1 - t / a_end) ** cfg["anneal_power"]
    hist, evals = [], []
    ema_rho = {}
    t0 = time.perf_counter()
    sr_time = 0.0
    loss_acc, loss_n = 0.0, 0
    for step in range(steps):
        if step == p_start and phase is None:
            phase = ProjectedPhase(model, opt)
            info["acc_at_switch_after_projection"] = None
        lr = cosine_lr(step, steps, cfg["lr"], cfg["warmup"])
        for gr in opt.param_groups:
            gr["lr"] = lr
        model.train()
        xb, yb = next(loader)
        out = model(xb)
        tl = None
        if teacher is not None and cfg["kd_alpha"] > 0:
            with torch.no_grad():
                tl = teacher(xb)
        loss = kd_loss(out, yb, tl, cfg["kd_alpha"], cfg["kd_T"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        log_now = step % cfg["log_every"] == 0 or step == steps - 1
        loss_acc += float(loss.detach())
        loss_n += 1
        ts = time.perf_counter()
        row = None
        if log_now:
            row = {"step": step, "lr": lr, "loss": float(loss.detach()), "loss_avg": loss_acc / loss_n, "layers": {}}
            loss_acc, loss_n = 0.0, 0
        if phase is None and cfg["sr"] != "none" and layers:
            frac = step / steps
            if cfg["lam_end"] is not None:
                lam = cfg["lam"] * (cfg["lam_end"] / cfg["lam"]) ** frac
            else:
                lam = cfg["lam"] * (min(1.0, frac / cfg["lam_ramp"]) if cfg["lam_ramp"] > 0 else 1.0)
            kappa = cfg["kappa"] * (min(1.0, frac / cfg["kappa_ramp"]) if cfg["kappa_ramp"] > 0 else 1.0)
            for n, m in layers:
                w = m.weight
                need_rho = (cfg["sr"] == "adaptive" and cfg["task_norm"] == "residual") or log_now
                if need_rho:
                    with torch.no_grad():
                        g = w.grad
                        rg = torch.linalg.vector_norm(g - m.basis.project(g))
                if cfg["sr"] == "adaptive" and cfg["task_norm"] == "full":
                    with torch.no_grad():
                        fg = torch.linalg.vector_norm(w.grad)
                scale = lam
                if cfg["sr"] == "adaptive":
                    with torch.no_grad():
                        e = m.basis.error(w)
                        nf = math.sqrt(max(1 - e * e, 1e-12)) / float(torch.linalg.vector_norm(w))
                    scale = max(lam, kappa * float(rg if cfg["task_norm"] == "residual" else fg) / nf)
                e, nf = sr_grad_(w, m.basis, scale)
                if row is not None:
                    # rho: the lambda at which this layer's SR force equals its task force in the residual space
                    row["layers"][n] = {"err": e, "rho": float(rg) / float(nf), "scale": float(scale),
                                        "wnorm": float(torch.linalg.vector_norm(w))}
        sr_time += time.perf_counter() - ts
        opt.step()
        if a_end is not None and phase is None and step + 1 < a_end:
            keep = anneal(step + 1) / anneal(step)
            with torch.no_grad():
                for _, m in layers:
                    pw = m.basis.project(m.weight)
                    m.weight.sub_(pw).mul_(keep).add_(pw)
        if phase is not None and step % 50 == 0:
            phase.reproject()
        if row is not None:
            hist.append(row)
        if verbose and step % 100 == 0:
            print(f"  step {step} loss {float(loss):.3f} {time.perf_counter() - t0:.0f}s", flush=True)
        if step + 1 in cfg["eval_at"]:
            evals.append({"step": step + 1, **evaluate_light(model, xt, yt)})
    train_s = time.perf_counter() - t0
    if phase is not None:
        phase.reproject()
        phase.remove()
    res = {"cfg": cfg, "train_seconds": train_s, "sec_per_step": train_s / steps, "sr_seconds": sr_time,
           "history": hist, "evals": evals, **info}
    if layers:
        res["final"] = evaluate(model, xt, yt)
        with torch.random.fork_rng(devices=[]):
            dec = sc.decompose(model).to(memory_format=torch.channels_last)
        recalibrate_bn(dec, x, seed=seed)
        res["final"]["acc_decomposed_bnrecal"] = accuracy(dec, xt, yt)
    else:
        res["final"] = {"acc": accuracy(model, xt, yt)}
    res["model"] = model
    return res


def evaluate_light(model, xt, yt):
    if not structured_layers(model):
        return {"acc": accuracy(model, xt, yt)}
    with torch.random.fork_rng(devices=[]):
        dec = sc.decompose(model).to(memory_format=torch.channels_last)
    return {"acc": accuracy(model, xt, yt), "acc_decomposed": accuracy(dec, xt, yt),
            "error_max": max(sc.structure_errors(model).values())}


def teacher_or_dense(cfg, arch, seed):
    m = build(arch, seed, structured=False)
    m.load_state_dict(torch.load(cfg["teacher"] or cfg["init"]))
    return m.eval()


def run_cached(name: str, cfg: dict, group: str, save_model: bool = False) -> dict:
    """Run ``cfg`` unless ``results/<group>/<name>.json`` exists (resumable experiment scripts)."""
    path = RESULTS / group / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    print(f"[{group}] {name}", flush=True)
    res = run(cfg)
    model = res.pop("model")
    if save_model:
        (RESULTS / group / "models").mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), RESULTS / group / "models" / f"{name}.pt")
    f = res["final"]
    print(f"  -> acc {f.get('acc'):.2f} dec {f.get('acc_decomposed', float('nan')):.2f} "
          f"errmax {f.get('error_max', float('nan')):.2e} {res['sec_per_step']:.3f}s/step", flush=True)
    save_json(res, path)
    return res
