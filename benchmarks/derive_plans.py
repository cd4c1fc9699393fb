#!/usr/bin/env python
"""Derive per-layer structured-convolution plans that reproduce the paper's tables.

Bhalgat et al., "Structured Convolutions for Efficient Neural Network Design" (NeurIPS 2020)
report #adds / #mults / #params for "Struct-A/B" versions of several networks, but the
per-layer (c, n) choices live in a supplementary we do not have.  This script

1. builds the real networks (torchvision ResNet18/34/50, MobileNetV2, EfficientNet-B1,
   timm HRNet-W18-Small-v2 with an HRNetV2 segmentation head, and the He et al. CIFAR
   ResNet20/32/56 written below), records every Conv2d / Linear / BatchNorm2d with forward
   hooks;
2. counts adds / mults / params with the paper's convention (see ``conv_cost``);
3. enumerates a grid of *plan rules* (stage -> target ratio R, layer role -> strategy) and
   *counting variants* (size of the sum-pooled map, BN after a decomposed conv counted or
   folded), and ranks them by the worst relative error over (adds, mults, params);
4. prints, per model/version, the best rule, our numbers vs the paper and the relative gap.

Self-contained: needs only torch, torchvision, timm.  No weights are downloaded.
Run: ``python benchmarks/derive_plans.py [--top K] [--verbose]`` (about 30 s on 2 cores).

Strategies for a k x k conv with C input channels per group and target ratio R
(ratio = C*N1*N2 / (c*n1*n2)):
    dense  no decomposition
    c      n = N,   c = round(C / R)              (channel-only)
    n      c = C,   n = N - 1                     (spatial-only; 3x3 -> 2x2 is 2.25x)
    cn     n = N-1, c = min(C, ceil(C N^2 / (R (N-1)^2)))   (exact ratio with n = N-1)
    c2n    n = N-1, c = min(C, round(2 C / R))    (3x3: R=2 -> (C,2) 2.25x, R=4 -> (C/2,2) 4.5x)
1x1 convs only have ``c`` (c = C / R); depthwise convs (C = 1 per group) only ``n``.
Linear Q -> P: ``r`` = Q / R (Sec. 4.3).
"""
from __future__ import annotations

import argparse
import itertools
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# --------------------------------------------------------------------------------------
# Paper numbers: (adds, mults, params) in absolute units.
G, M = 1e9, 1e6
PAPER = {
    ("resnet56", "base"): (125.49 * M, 126.02 * M, 0.85 * M),
    ("resnet56", "A"): (63.04 * M, 62.10 * M, 0.40 * M),
    ("resnet56", "B"): (48.49 * M, 33.87 * M, 0.21 * M),
    ("resnet32", "base"): (68.86 * M, 69.16 * M, 0.46 * M),
    ("resnet32", "A"): (35.59 * M, 35.09 * M, 0.22 * M),
    ("resnet32", "B"): (26.29 * M, 18.18 * M, 0.11 * M),
    ("resnet20", "base"): (40.55 * M, 40.74 * M, 0.27 * M),
    ("resnet20", "A"): (20.77 * M, 20.42 * M, 0.13 * M),
    ("resnet20", "B"): (15.31 * M, 10.59 * M, 0.067 * M),
    ("resnet50", "base"): (4.09 * G, 4.10 * G, 25.56 * M),
    ("resnet50", "A"): (2.69 * G, 2.19 * G, 13.49 * M),
    ("resnet50", "B"): (1.92 * G, 1.38 * G, 8.57 * M),
    ("resnet34", "base"): (3.66 * G, 3.67 * G, 21.80 * M),
    ("resnet34", "A"): (1.71 * G, 1.71 * G, 9.82 * M),
    ("resnet34", "B"): (1.47 * G, 1.11 * G, 5.60 * M),
    ("resnet18", "base"): (1.81 * G, 1.82 * G, 11.69 * M),
    ("resnet18", "A"): (0.88 * G, 0.89 * G, 5.59 * M),
    ("resnet18", "B"): (0.79 * G, 0.63 * G, 3.19 * M),
    ("mobilenet_v2", "base"): (0.30 * G, 0.31 * G, 3.50 * M),
    ("mobilenet_v2", "A"): (0.26 * G, 0.23 * G, 2.62 * M),
    ("mobilenet_v2", "B"): (0.29 * G, 0.17 * G, 1.77 * M),
    ("efficientnet_b1", "base"): (0.70 * G, 0.70 * G, 7.80 * M),
    ("efficientnet_b1", "A"): (0.62 * G, 0.45 * G, 4.93 * M),
    ("hrnet_w18_small_v2_seg", "base"): (76.8 * G, 77.1 * G, 3.9 * M),
    ("hrnet_w18_small_v2_seg", "A"): (54.3 * G, 54.0 * G, 1.9 * M),
}


# --------------------------------------------------------------------------------------
# Models
class CifarBasicBlock(nn.Module):
    """He et al. (2016) CIFAR block with option-A (parameter-free) shortcut."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = cout - cin
        self.stride = stride

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            s = F.pad(s, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(y + s)


class CifarResNet(nn.Module):
    def __init__(self, depth, num_classes=10):
        super().__init__()
        nb = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for i, c in enumerate((16, 32, 64)):
            blocks = []
            for b in range(nb):
                blocks.append(CifarBasicBlock(cin, c, 2 if (b == 0 and i > 0) else 1))
                cin = c
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class HRNetSeg(nn.Module):
    """timm hrnet_w18_small_v2 backbone + the HRNetV2 segmentation head
    (concat of the 4 upsampled branches -> 1x1 conv 270->270 + BN + ReLU -> 1x1 conv 270->19)."""

    def __init__(self, num_classes=19):
        super().__init__()
        import timm

        self.backbone = timm.create_model(
            "hrnet_w18_small_v2", pretrained=False, features_only=True,
            feature_location="", out_indices=(1, 2, 3, 4))
        ch = sum(self.backbone.feature_info.channels())
        self.last_layer = nn.Sequential(
            nn.Conv2d(ch, ch, 1), nn.BatchNorm2d(ch), nn.ReLU(), nn.Conv2d(ch, num_classes, 1))

    def forward(self, x):
        f = self.backbone(x)
        h, w = f[0].shape[2:]
        x = torch.cat([f[0]] + [F.interpolate(t, size=(h, w), mode="bilinear") for t in f[1:]], 1)
        return self.last_layer(x)


def build(name):
    import torchvision.models as tvm

    if name.startswith("resnet") and int(name[6:]) in (20, 32, 56):
        return CifarResNet(int(name[6:])), (32, 32)
    if name in ("resnet18", "resnet34", "resnet50", "mobilenet_v2"):
        return getattr(tvm, name)(weights=None), (224, 224)
    if name == "efficientnet_b1":
        return tvm.efficientnet_b1(weights=None), (240, 240)
    if name == "efficientnet_b1@224":
        return tvm.efficientnet_b1(weights=None), (224, 224)
    if name == "hrnet_w18_small_v2_seg":
        return HRNetSeg(), (1024, 2048)
    raise ValueError(name)


def extract(name):
    """Run one forward pass with hooks; return (rows, total_params)."""
    model, size = build(name)
    rows, hooks = [], []
    for fqn, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            continue

        def hook(mod, inp, out, fqn=fqn):
            x = inp[0]
            if isinstance(mod, nn.Conv2d):
                rows.append(dict(name=fqn, kind="conv", Cin=mod.in_channels, Cout=mod.out_channels,
                                 g=mod.groups, k=mod.kernel_size, s=mod.stride, p=mod.padding,
                                 d=mod.dilation, bias=mod.bias is not None, H=x.shape[2],
                                 W=x.shape[3], Ho=out.shape[2], Wo=out.shape[3]))
            elif isinstance(mod, nn.Linear):
                rows.append(dict(name=fqn, kind="fc", Q=mod.in_features, P=mod.out_features,
                                 bias=mod.bias is not None, reps=x.numel() // x.shape[-1]))
            else:
                rows.append(dict(name=fqn, kind="bn", C=out.shape[1], numel=out[0].numel()))

        hooks.append(m.register_forward_hook(hook))
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, *size))
    for h in hooks:
        h.remove()
    # a BN that runs right after a conv with matching channels belongs to that conv
    for prev, r in zip(rows, rows[1:]):
        if r["kind"] == "bn" and prev["kind"] == "conv" and prev["Cout"] == r["C"]:
            r["owner"] = prev["name"]
    return rows, sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------
# Counting (paper Sec. 4.2 / 4.3)
def conv_cost(r, spec, h1="pad"):
    """(adds, mults, params) of one conv; spec None = dense, else (c, (n1, n2)).

    dense:  mults = C N1 N2 Cout H'W';  adds = (C N1 N2 - 1) Cout H'W' (+Cout H'W' if bias)
    decomposed: mults = c n1 n2 Cout H'W'; adds = (c n1 n2 - 1) Cout H'W' (+bias)
                + ((C-c+1)(N1-n1+1)(N2-n2+1) - 1) * c * groups * H1 W1   (sum-pooling)
    h1 = "pad": H1 = H + 2p - d (N1 - n1)  (stride-1 sum-pool of the padded input, exact)
    h1 = "out": H1 = H'                    (sum-pool counted at the output resolution)
    """
    C = r["Cin"] // r["g"]
    N1, N2 = r["k"]
    c, (n1, n2) = (C, (N1, N2)) if spec is None else spec
    o = r["Cout"] * r["Ho"] * r["Wo"]
    b = r["bias"]
    k = c * n1 * n2
    mults = k * o
    adds = (k - 1) * o + (o if b else 0)
    params = k * r["Cout"] + (r["Cout"] if b else 0)
    w = (C - c + 1) * (N1 - n1 + 1) * (N2 - n2 + 1)
    if w > 1:
        if h1 == "pad":
            H1 = r["H"] + 2 * r["p"][0] - r["d"][0] * (N1 - n1)
            W1 = r["W"] + 2 * r["p"][1] - r["d"][1] * (N2 - n2)
        else:
            H1, W1 = r["Ho"], r["Wo"]
        adds += (w - 1) * c * r["g"] * H1 * W1
    return np.array([adds, mults, params], dtype=float)


def fc_cost(r, rr):
    """Linear Q->P: dense mults PQ, adds (Q-1)P (+P bias); structured r: mults rP,
    adds r(Q-r) + (r-1)P (+P bias), params rP (+P)."""
    P, Q, b, n = r["P"], r["Q"], r["bias"], r["reps"]
    if rr is None:
        return np.array([((Q - 1) * P + (P if b else 0)) * n, P * Q * n, P * Q + (P if b else 0)], float)
    return np.array([(rr * (Q - rr) + (rr - 1) * P + (P if b else 0)) * n, rr * P * n,
                     rr * P + (P if b else 0)], float)


def bn_cost(r):
    return np.array([r["numel"], r["numel"], 2 * r["C"]], dtype=float)


def baseline(rows, params):
    tot = np.zeros(3)
    for r in rows:
        tot += {"conv": lambda: conv_cost(r, None), "fc": lambda: fc_cost(r, None),
                "bn": lambda: bn_cost(r)}[r["kind"]]()
    tot[2] = params
    return tot


# --------------------------------------------------------------------------------------
# Strategies
def conv_spec(r, strategy, R):
    """Map (layer, strategy, target ratio R) -> None | (c, (n1, n2))."""
    C = r["Cin"] // r["g"]
    N1, N2 = r["k"]
    if strategy == "dense" or R is None or R <= 1:
        return None
    if N1 == 1 and N2 == 1:
        strategy = "c"
    if C == 1 and strategy != "n":  # depthwise: only spatial
        strategy = "n"
    if strategy == "c":
        c, n = max(1, round(C / R)), (N1, N2)
    elif strategy == "n":
        c, n = C, (max(1, N1 - 1), max(1, N2 - 1))
    elif strategy == "cn":
        n = (max(1, N1 - 1), max(1, N2 - 1))
        c = min(C, math.ceil(C * N1 * N2 / (R * n[0] * n[1])))
    elif strategy == "c2n":
        n = (max(1, N1 - 1), max(1, N2 - 1))
        c = min(C, max(1, round(2 * C / R)))
    else:
        raise ValueError(strategy)
    if (c, n) == (C, (N1, N2)):
        return None
    return c, n


# Each family: role(row) -> (role, stage); a plan = dict with "R" (stage -> ratio) and a
# strategy per role.  The grids below list the alternatives searched.
def role_resnet(r):
    n = r["name"]
    if r["kind"] == "fc":
        return "fc", None
    if n == "conv1":
        return "stem", 0
    st = int(n.split(".")[0][5:])
    if "downsample" in n:
        return "ds", st
    if r["k"] == (1, 1):  # bottleneck: conv1 reduces, conv3 expands
        return ("pw_in" if n.endswith("conv1") else "pw_out"), st
    return "kxk", st


def role_mbv2(r):
    n = r["name"]
    if r["kind"] == "fc":
        return "fc", None
    if n == "features.0.0":
        return "stem", 0
    idx = int(n.split(".")[1])
    if r["g"] > 1:
        return "dw", idx
    if n == "features.18.0":
        return "head", idx
    if n.endswith("conv.0.0") and idx > 1:
        return "expand", idx
    if r["kind"] == "conv" and "conv.1" in n and idx == 1:
        return "project", idx
    return "project", idx


def role_effnet(r):
    n = r["name"]
    if r["kind"] == "fc":
        return "fc", None
    if n == "features.0.0":
        return "stem", 0
    idx = int(n.split(".")[1])
    if n.startswith("features.8"):
        return "head", idx
    if ".fc1" in n or ".fc2" in n:
        return "se", idx
    if r["g"] > 1:
        return "dw", idx
    if n.endswith("block.0.0") and idx > 1:
        return "expand", idx
    return "project", idx


def role_hrnet(r):
    n = r["name"]
    if n.startswith("last_layer"):
        return ("head" if r["Cout"] != 19 else "cls"), 5
    if n in ("backbone.conv1", "backbone.conv2"):
        return "stem", 0
    st = 1 if n.startswith("backbone.layer1") else int(n.split(".")[1][-1]) if "stage" in n or "transition" in n else 0
    if "fuse" in n or "transition" in n:
        return ("fuse_kxk" if r["k"] != (1, 1) else "fuse_pw"), st
    if "downsample" in n:
        return "ds", st
    return ("kxk" if r["k"] != (1, 1) else "pw"), st


# (H1 of the sum-pool, BN after a decomposed conv folded?)
CONVENTIONS = [("pad", False), ("pad", True), ("out", False), ("out", True)]


def grid(**axes):
    keys = list(axes)
    for vals in itertools.product(*[axes[k] for k in keys]):
        yield dict(zip(keys, vals))


RN_B_MAPS = {  # stage -> ratio for the "B" versions (paper: stages 1-2 2x, stages 3-4 4x)
    "s12=2,s34=4": {0: 2, 1: 2, 2: 2, 3: 4, 4: 4},
    "s1=2,s234=4": {0: 2, 1: 2, 2: 4, 3: 4, 4: 4},
    "s1=2,s23=4,s4=2": {0: 2, 1: 2, 2: 4, 3: 4, 4: 2},
}
CIFAR_B_MAPS = {  # only 3 stages
    "s12=2,s3=4": {0: 2, 1: 2, 2: 2, 3: 4},
    "s1=2,s23=4": {0: 2, 1: 2, 2: 4, 3: 4},
    "all=4": {0: 4, 1: 4, 2: 4, 3: 4},
}
KXK = ("c", "n", "cn", "c2n")
def ratios(strategy, Rs=(4 / 3, 2, 4)):
    """('dense',) + ((strategy, R) for R in Rs) for a role whose ratio is searched on its own."""
    return ("dense",) + tuple((strategy, R) for R in Rs)


FAMILIES = {
    "cifar": dict(
        models=("resnet56", "resnet32", "resnet20"), role=role_resnet,
        A=grid(R=[{s: 2 for s in range(4)}], kxk=KXK, stem=("dense",) + KXK, fc=("dense", "r")),
        B=grid(R=list(CIFAR_B_MAPS), **{"kxk@2": KXK, "kxk@4": KXK}, stem=("dense", "c", "n"),
               fc=("dense", "r"))),
    "resnet18/34": dict(
        models=("resnet18", "resnet34"), role=role_resnet,
        A=grid(R=[{s: 2 for s in range(5)}], kxk=KXK, ds=("dense", "c"),
               stem=("dense", "c", "n"), fc=("dense", "r")),
        B=grid(R=list(RN_B_MAPS), **{"kxk@2": KXK, "kxk@4": KXK}, ds=("dense", "c"),
               stem=("dense", "c", "n"), fc=("dense", "r"))),
    "resnet50": dict(
        models=("resnet50",), role=role_resnet,
        A=grid(R=[{s: 2 for s in range(5)}], kxk=KXK, pw_in=ratios("c"), pw_out=ratios("c"),
               ds=("dense", "c"), stem=("dense", "c", "n"), fc=("dense", "r")),
        B=grid(R=list(RN_B_MAPS), **{"kxk@2": KXK, "kxk@4": KXK}, **{"pw_in@2": ("dense", "c"), "pw_in@4": ("dense", "c"),
               "pw_out@2": ("dense", "c"), "pw_out@4": ("dense", "c")},
               ds=("dense", "c"), stem=("dense", "c", "n"), fc=("dense", "r"))),
    "mobilenet_v2": dict(
        models=("mobilenet_v2",), role=role_mbv2,
        A=grid(R=[2], expand=ratios("c"), project=ratios("c"), dw=("dense", "n"),
               head=ratios("c"), stem=("dense", "n"), fc=ratios("r")),
        B=grid(R=[2], expand=ratios("c"), project=ratios("c"), dw=("dense", "n"),
               head=ratios("c"), stem=("dense", "n"), fc=ratios("r"))),
    "efficientnet_b1": dict(
        models=("efficientnet_b1",), role=role_effnet,
        A=grid(R=[2], expand=ratios("c"), project=ratios("c"), dw=("dense", "n"),
               se=("dense", "c"), head=ratios("c"), stem=("dense", "n"), fc=ratios("r"))),
    "hrnet": dict(
        models=("hrnet_w18_small_v2_seg",), role=role_hrnet,
        A=grid(R=[2], kxk=("dense",) + KXK, pw=("dense", "c"), ds=("dense", "c"),
               fuse_kxk=("dense",) + KXK, fuse_pw=("dense", "c"), stem=("dense", "c", "n"),
               head=("dense", "c"), cls=("dense", "c"))),
}


def layer_spec(r, role_fn, plan, bmaps):
    role, st = role_fn(r)
    Rmap = plan["R"]
    if isinstance(Rmap, str):
        Rmap = bmaps[Rmap]
    R = Rmap if isinstance(Rmap, (int, float)) else Rmap.get(st, Rmap[max(Rmap)]) if st is not None else Rmap[max(Rmap)]
    strat = plan.get(f"{role}@{R:g}", plan.get(role, "dense"))
    if isinstance(strat, tuple):  # (strategy, role-specific ratio)
        strat, R = strat
    if r["kind"] == "fc":
        return None if strat == "dense" else ("r", max(1, round(r["Q"] / R)))
    return conv_spec(r, strat, R)


def evaluate(rows, params, role_fn, plan, h1, bn_folded, bmaps, cache):
    tot = np.zeros(3)
    dense_params = 0
    decomposed = set()
    for r in rows:
        if r["kind"] == "bn":
            continue
        spec = layer_spec(r, role_fn, plan, bmaps)
        key = (r["name"], spec, h1)
        if key not in cache:
            cache[key] = fc_cost(r, spec[1] if spec else None) if r["kind"] == "fc" else conv_cost(r, spec, h1)
        tot += cache[key]
        if spec is not None:
            decomposed.add(r["name"])
    for r in rows:
        if r["kind"] == "bn" and not (bn_folded and r.get("owner") in decomposed):
            tot += bn_cost(r)
    return tot


def describe(plan):
    return ", ".join(f"{k}={v if not isinstance(v, dict) else 'all=' + str(next(iter(v.values())))}"
                     for k, v in plan.items())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--top", type=int, default=1, help="show the K best rules per family")
    ap.add_argument("--convention", type=int, default=0, choices=range(-1, 4),
                    help="rank under this counting convention (index into CONVENTIONS; default 0 = "
                         "exact padded sum-pool, BN kept); -1 = best over all conventions")
    ap.add_argument("--verbose", action="store_true", help="print per-layer specs of the best rule")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    t0 = time.time()
    cache_rows = {}

    def rows_of(m):
        if m not in cache_rows:
            cache_rows[m] = extract(m)
        return cache_rows[m]

    print("== Baselines (paper convention: conv mults C*N1*N2*Cout*H'W', adds (C*N1*N2-1)*Cout*H'W', "
          "BN 1 add + 1 mult per element, Linear PQ mults / PQ adds incl. bias)")
    print(f"{'model':28s} {'adds':>10s} {'mults':>10s} {'params':>10s}   gaps vs paper (%)")
    for m in ("resnet56", "resnet32", "resnet20", "resnet18", "resnet34", "resnet50", "mobilenet_v2",
              "efficientnet_b1", "efficientnet_b1@224", "hrnet_w18_small_v2_seg"):
        rows, params = rows_of(m)
        b = baseline(rows, params)
        ref = np.array(PAPER[(m.split("@")[0], "base")])
        print(f"{m:28s} {b[0]:10.4g} {b[1]:10.4g} {b[2]:10.4g}   " +
              " ".join(f"{g:+6.2f}" for g in 100 * (b / ref - 1)))

    summary = []
    conv_table = {}
    for fam, spec in FAMILIES.items():
        bmaps = CIFAR_B_MAPS if fam == "cifar" else RN_B_MAPS
        for ver in ("A", "B"):
            if ver not in spec:
                continue
            plans = list(spec[ver])
            results = []
            cache = {}
            for h1 in ("pad", "out"):
                for bn_folded in (False, True):
                    for plan in plans:
                        errs, tots = [], []
                        for m in spec["models"]:
                            rows, params = rows_of(m)
                            t = evaluate(rows, params, spec["role"], plan, h1, bn_folded, bmaps, cache)
                            tots.append(t)
                            errs.append(t / np.array(PAPER[(m, ver)]) - 1)
                        errs = np.array(errs)
                        results.append((np.abs(errs).max(), np.abs(errs).mean(), plan, h1, bn_folded, tots, errs))
            results.sort(key=lambda x: (round(x[0], 4), x[1]))
            for conv in CONVENTIONS:
                best = min((x for x in results if (x[3], x[4]) == conv), key=lambda x: (round(x[0], 4), x[1]))
                conv_table.setdefault((fam, ver), {})[conv] = best
            if args.convention >= 0:
                results = [x for x in results if (x[3], x[4]) == CONVENTIONS[args.convention]]
            for rank, (mx, mean, plan, h1, bnf, tots, errs) in enumerate(results[: args.top]):
                print(f"\n== {fam} {ver} rank {rank + 1}: max|gap| {100 * mx:.1f}%  mean {100 * mean:.1f}%  "
                      f"[H1={h1}, BN after decomposed conv {'folded' if bnf else 'counted'}]")
                print("   rule:", describe(plan))
                for m, t, e in zip(spec["models"], tots, errs):
                    ref = PAPER[(m, ver)]
                    print(f"   {m}-{ver:1s}  ours {t[0]:.4g}/{t[1]:.4g}/{t[2]:.4g}  paper {ref[0]:.4g}/{ref[1]:.4g}/{ref[2]:.4g}"
                          f"  gap " + " ".join(f"{g:+5.1f}%" for g in 100 * e))
                    if rank == 0:
                        summary.append((m, ver, t, ref, e))
                if args.verbose and rank == 0:
                    rows, _ = rows_of(spec["models"][0])
                    for r in rows:
                        if r["kind"] != "bn":
                            print("     ", r["name"], spec["role"](r), layer_spec(r, spec["role"], plan, bmaps))
    print("\n== Summary (best rule per family; adds / mults / params; gap = ours/paper - 1)")
    print(f"{'model':26s} {'ver':3s} {'adds':>9s} {'paper':>9s} {'gap':>7s} {'mults':>9s} {'paper':>9s} {'gap':>7s} {'params':>9s} {'paper':>9s} {'gap':>7s}")
    for m, ver, t, ref, e in summary:
        print(f"{m:26s} {ver:3s} " + " ".join(f"{t[i]:9.4g} {ref[i]:9.4g} {100 * e[i]:+6.1f}%" for i in range(3)))
    print("\n== Best max|gap| per family under each counting convention (H1, BN after decomposed conv)")
    print(f"{'family':18s} " + " ".join(f"{h}/{'folded' if b else 'counted':8s}" for h, b in CONVENTIONS))
    for (fam, ver), d in conv_table.items():
        print(f"{fam + ' ' + ver:18s} " + " ".join(f"{100 * d[c][0]:13.1f}%" for c in CONVENTIONS))
    print(f"\n(done in {time.time() - t0:.1f}s)")


if __name__ == "__main__":
    main()
