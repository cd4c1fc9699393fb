#!/usr/bin/env python
"""Derive per-layer structured-convolution plans that reproduce the paper's tables.

Bhalgat et al., "Structured Convolutions for Efficient Neural Network Design" (NeurIPS 2020)
report #adds / #mults / #params for "Struct-A/B" versions of several networks, but the
per-layer (c, n) choices live in a supplementary we do not have.  This script searches for
them with the package itself; it re-implements no model and no counting:

1. models: ``structconv.models.create_model(name)`` at ``default_input_size(name)`` (the
   registry: ``cifar_resnet20/32/56``, ``resnet18/34/50``, ``mobilenet_v2``,
   ``efficientnet_b1`` (also shown at 224 px as ``efficientnet_b1@224``),
   ``hrnet_w18_small_v2_seg``); the paper's numbers: ``structconv.models.paper.paper_row``;
2. one ``structconv.count_ops`` of each dense model gives the cost of every dense Conv/Linear
   and BatchNorm (its per-module rows); forward pre-hooks in the same pass record each
   Conv/Linear's input shape.  Counting only needs shapes, so it runs on the meta device;
3. a layer's cost under a structure is ``count_ops`` of that single layer, structurized
   (``structconv.structurize`` with an override) and decomposed, on its recorded input shape,
   cached per (layer configuration and input shape, spec, convention), so identical layers
   are counted once.  ``--check [N]`` confirms, for N random plans and the best one of each
   family/version, that the per-layer sums equal ``count_ops`` of the whole structurized +
   decomposed model (built anew on CPU, real tensors; both pooled maps, BN counted);
4. enumerates a grid of *plan rules* (stage -> target ratio R, layer role -> strategy; the
   strategies are ``structconv.models.presets``' ``chan``, ``spatial``, ``cn_exact``,
   ``c2n``) and *counting conventions*, ranks the rules by the worst relative error over
   (adds, mults, params), and prints per model/version the best rule, our numbers vs the
   paper and the relative gap.

Counting conventions (``--convention``; index into ``CONVENTIONS``):
    pooled map  ``count_ops(pooled_map=...)``: "paper" charges a decomposed conv's sum-pool
                for the stride-1 map of the padded input (Sec. 4.2, what the package calls the
                paper's accounting); "executed" for the positions the implementation
                computes (fewer for a strided 1x1 conv, whose pool runs at the stride, and
                for a channel-only pool, which leaves the zero padding to the small conv).
                "executed" replaces the script's former "H1 = H'" variant (pool charged at
                the output size), which the package does not count.
    BN          the BatchNorm right after a decomposed conv counted, or folded into it
                (dropped: no adds, mults or params).
No weights are downloaded.
Run: ``python benchmarks/derive_presets.py [--top K] [--convention I] [--verbose] [--check [N]]``.

Strategies for a k x k conv with C input channels per group and target ratio R
(ratio = C*N1*N2 / (c*n1*n2)), from ``structconv.models.presets``:
    dense  no decomposition
    c      chan(m, R):     n = N,   c = round(C / R)               (channel-only)
    n      spatial(m):     c = C,   n = N - 1                      (3x3 -> 2x2 is 2.25x)
    cn     cn_exact(m, R): n = N-1, c = min(C, ceil(C N^2 / (R (N-1)^2)))  (exact ratio)
    c2n    c2n(m, R):      n = N-1, c = min(C, round(2 C / R))
1x1 convs only have ``c``; depthwise convs (C = 1 per group) only ``n``.
Linear Q -> P: ``r`` = chan(m, R), r = round(Q / R) (Sec. 4.3).
"""
from __future__ import annotations

import argparse
import itertools
import random
import time

import numpy as np
import torch
from torch import nn

import structconv as sc
from structconv.models import create_model, default_input_size
from structconv.models.paper import paper_row
from structconv.models.presets import c2n, chan, cn_exact, spatial

# (pooled_map of count_ops, BN after a decomposed conv folded?)
CONVENTIONS = [("paper", False), ("paper", True), ("executed", False), ("executed", True)]
BASELINES = ("cifar_resnet56", "cifar_resnet32", "cifar_resnet20", "resnet18", "resnet34", "resnet50", "mobilenet_v2",
             "efficientnet_b1", "efficientnet_b1@224", "hrnet_w18_small_v2_seg")  # fmt: skip


# --------------------------------------------------------------------------------------
# Models and their dense counts (all from the package)
def input_shape(name: str) -> tuple[int, ...]:
    """Batch-1 input of ``name``; ``arch@S`` is ``arch`` at S x S pixels."""
    arch, _, px = name.partition("@")
    c, h, w = default_input_size(arch)
    return (1, c, int(px), int(px)) if px else (1, c, h, w)


class Layer:
    """One Conv/Linear of a dense model: the module (on the meta device), the input shapes it
    ran on, and its dense (adds, mults, params) from ``count_ops``."""

    def __init__(self, name: str, module: nn.Module):
        self.name, self.module = name, module
        self.shapes: list[tuple[int, ...]] = []
        self.dense = np.zeros(3, dtype=np.int64)


class Profile:
    """A dense model, counted once: its Conv/Linear layers in execution order, its BatchNorms
    (cost and the conv they follow), the parameters held elsewhere, and the totals."""

    def __init__(self, name: str):
        self.name, self.arch = name, name.partition("@")[0]
        self.shape = input_shape(name)
        with torch.device("meta"):  # counting needs shapes only
            model = create_model(self.arch)
        layers = {n: Layer(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: layers[n].shapes.append(tuple(args[0].shape)))
                 for n, m in model.named_modules() if n in layers]  # fmt: skip
        try:
            report = sc.count_ops(model, self.shape)
        finally:
            for h in hooks:
                h.remove()
        self.layers: list[Layer] = []
        self.bn: list[tuple[np.ndarray, str | None]] = []  # (cost, owner conv)
        prev, seen = None, set()
        for row in report.rows:
            cost = np.array([row.adds, row.mults, row.params], dtype=np.int64)
            mod = model.get_submodule(row.name)
            if row.name in layers:
                layer = layers[row.name]
                if row.name in seen:  # a layer that runs twice: its params once
                    layer.dense[:2] += cost[:2]
                else:
                    seen.add(row.name)
                    self.layers.append(layer)
                    layer.dense += cost
            elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
                # a BN that runs right after a conv with matching channels belongs to that conv
                owns = prev is not None and getattr(prev.module, "out_channels", None) == mod.num_features
                self.bn.append((cost, prev.name if owns else None))
            else:
                raise RuntimeError(f"{name}: unexpected counted module {row.name} ({row.layer_type})")
            prev = layers.get(row.name)
        self.base = np.array([report.adds, report.mults, report.params], dtype=np.int64)
        counted = sum(lay.dense for lay in self.layers) + sum(c for c, _ in self.bn)
        self.other = self.base - counted  # parameters outside Conv/Linear/BN (none in these models)
        assert self.other[0] == self.other[1] == 0, (name, self.other)

    def cost(self, layer: Layer, spec, pooled_map: str) -> np.ndarray:
        """(adds, mults, params) of ``layer`` with structure ``spec`` (None = dense)."""
        if spec is None:
            return layer.dense
        return _structured_cost(layer.module, tuple(layer.shapes), spec, pooled_map)


_COSTS: dict[tuple, np.ndarray] = {}
_DECOMPOSED: dict[tuple, nn.Module] = {}


def _structured_cost(module: nn.Module, shapes: tuple, spec, pooled_map: str) -> np.ndarray:
    """``count_ops`` of ``module`` structurized with ``spec`` and decomposed, summed over the
    input ``shapes`` it ran on.  Cached per (layer configuration and input shapes, spec,
    convention): layers that differ only by name and weights (the many identical blocks of a
    stage, the same block in ResNet18 and ResNet34) are counted once."""
    layer_key = (type(module).__name__, module.extra_repr(), shapes, spec)
    key = (*layer_key, pooled_map)
    if key not in _COSTS:
        if layer_key not in _DECOMPOSED:
            structured = sc.structurize(module, overrides={"": spec})
            _DECOMPOSED[layer_key] = sc.decompose(structured, on_unstructured="ignore")
        small = _DECOMPOSED[layer_key]
        tot = np.zeros(3, dtype=np.int64)
        for shape in shapes:
            rep = sc.count_ops(small, shape, pooled_map=pooled_map)
            tot += [rep.adds, rep.mults, 0]
        tot[2] = rep.params
        _COSTS[key] = tot
    return _COSTS[key]


# --------------------------------------------------------------------------------------
# Strategies (the package's) and roles
def conv_spec(m: nn.Module, strategy: str, R):
    """(layer, strategy, target ratio R) -> StructureSpec | None."""
    if strategy == "dense" or R is None or R <= 1:
        return None
    if isinstance(m, nn.Linear):  # strategy "r"
        return chan(m, R)
    if all(k == 1 for k in m.kernel_size):
        strategy = "c"
    if m.in_channels // m.groups == 1 and strategy != "n":  # depthwise: only spatial
        strategy = "n"
    if strategy == "c":
        return chan(m, R)
    if strategy == "n":
        return spatial(m)
    if strategy == "cn":
        return cn_exact(m, R)
    if strategy == "c2n":
        return c2n(m, R)
    raise ValueError(strategy)


# Each family: role(name, layer) -> (role, stage); a plan = dict with "R" (stage -> ratio) and a
# strategy per role.  The grids below list the alternatives searched.
def role_resnet(n, m):
    if isinstance(m, nn.Linear):
        return "fc", None
    if n == "conv1":
        return "stem", 0
    st = int(n.split(".")[0][5:])
    if "downsample" in n:
        return "ds", st
    if tuple(m.kernel_size) == (1, 1):  # bottleneck: conv1 reduces, conv3 expands
        return ("pw_in" if n.endswith("conv1") else "pw_out"), st
    return "kxk", st


def role_mbv2(n, m):
    if isinstance(m, nn.Linear):
        return "fc", None
    if n == "features.0.0":
        return "stem", 0
    idx = int(n.split(".")[1])
    if m.groups > 1:
        return "dw", idx
    if n == "features.18.0":
        return "head", idx
    if n.endswith("conv.0.0") and idx > 1:
        return "expand", idx
    return "project", idx


def role_effnet(n, m):
    if isinstance(m, nn.Linear):
        return "fc", None
    if n == "features.0.0":
        return "stem", 0
    idx = int(n.split(".")[1])
    if n.startswith("features.8"):
        return "head", idx
    if ".fc1" in n or ".fc2" in n:
        return "se", idx
    if m.groups > 1:
        return "dw", idx
    if n.endswith("block.0.0") and idx > 1:
        return "expand", idx
    return "project", idx


def role_hrnet(n, m):
    k = tuple(m.kernel_size)
    if n.startswith("last_layer"):
        return ("head" if m.out_channels != 19 else "cls"), 5
    if n in ("backbone.conv1", "backbone.conv2"):
        return "stem", 0
    st = 1 if n.startswith("backbone.layer1") else int(n.split(".")[1][-1]) if "stage" in n or "transition" in n else 0
    if "fuse" in n or "transition" in n:
        return ("fuse_kxk" if k != (1, 1) else "fuse_pw"), st
    if "downsample" in n:
        return "ds", st
    return ("kxk" if k != (1, 1) else "pw"), st


def grid(**axes):
    keys = list(axes)
    return [dict(zip(keys, vals)) for vals in itertools.product(*[axes[k] for k in keys])]


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
        models=("cifar_resnet56", "cifar_resnet32", "cifar_resnet20"), role=role_resnet,
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


class Planner:
    """One model under the plans of one family: the layers grouped by (role, stage), the
    distinct (layer, spec) pairs met so far and their costs per convention.

    ``ids(plan)`` maps a plan to one entry per layer; ``total(ids, ...)`` sums their costs with
    numpy, so the grid's thousands of plans cost a table look-up each."""

    def __init__(self, profile: Profile, role_fn, bmaps):
        self.profile, self.bmaps = profile, bmaps
        self.roles = [role_fn(lay.name, lay.module) for lay in profile.layers]
        self.groups: dict[tuple, list[int]] = {}
        for i, role in enumerate(self.roles):
            self.groups.setdefault(role, []).append(i)
        self.entries: list[tuple[int, object]] = []  # (layer index, spec)
        self._entry_id: dict[tuple, int] = {}
        self._ids: dict[tuple, np.ndarray] = {}  # (group, strategy, R) -> entry ids of its layers
        self._tables: dict[tuple, np.ndarray] = {}  # (pooled_map, BN folded) -> (entries, 3) costs
        owned = {}  # layer name -> cost of the BN right after it
        for cost, owner in profile.bn:
            owned[owner] = owned.get(owner, 0) + cost
        self._owned = [owned.get(lay.name, np.zeros(3, dtype=np.int64)) for lay in profile.layers]
        self._base = profile.other + sum(cost for cost, _ in profile.bn)

    def strategy(self, role, plan):
        """(strategy, ratio) of the layers with ``role = (role name, stage)`` under ``plan``."""
        role, st = role
        Rmap = plan["R"]
        if isinstance(Rmap, str):
            Rmap = self.bmaps[Rmap]
        R = Rmap if isinstance(Rmap, (int, float)) else Rmap.get(st, Rmap[max(Rmap)]) if st is not None else Rmap[max(Rmap)]
        strat = plan.get(f"{role}@{R:g}", plan.get(role, "dense"))
        if isinstance(strat, tuple):  # (strategy, role-specific ratio)
            strat, R = strat
        return strat, R

    def _entry(self, i, spec) -> int:
        key = (i, spec)
        if key not in self._entry_id:
            self._entry_id[key] = len(self.entries)
            self.entries.append(key)
        return self._entry_id[key]

    def ids(self, plan) -> np.ndarray:
        parts = []
        for role, idx in self.groups.items():
            key = (role, *self.strategy(role, plan))
            if key not in self._ids:
                self._ids[key] = np.array([self._entry(i, conv_spec(self.profile.layers[i].module, *key[1:]))
                                           for i in idx], dtype=np.int64)  # fmt: skip
            parts.append(self._ids[key])
        return np.concatenate(parts)

    def specs(self, plan) -> list:
        """The spec of every layer (execution order) under ``plan``."""
        out = [None] * len(self.profile.layers)
        for e in self.ids(plan):
            i, spec = self.entries[e]
            out[i] = spec
        return out

    def _table(self, pooled_map, folded):
        n = len(self.entries)
        key = (pooled_map, folded)
        if key not in self._tables or len(self._tables[key]) < n:
            rows = []
            for i, spec in self.entries:
                cost = self.profile.cost(self.profile.layers[i], spec, pooled_map)
                rows.append(cost - self._owned[i] if folded and spec is not None else cost)
            self._tables[key] = np.array(rows, dtype=np.int64).reshape(n, 3)
        return self._tables[key]

    def total(self, ids, pooled_map, bn_folded) -> np.ndarray:
        """(adds, mults, params) of the model with the layers' entries ``ids``: their costs, the
        BNs (less those after a decomposed conv when ``bn_folded``) and any other parameters."""
        return self._table(pooled_map, bn_folded)[ids].sum(0) + self._base


def describe(plan):
    return ", ".join(f"{k}={v if not isinstance(v, dict) else 'all=' + str(next(iter(v.values())))}"
                     for k, v in plan.items())


def paper(arch, ver=None):
    row = paper_row(arch, ver)
    return np.array([row.adds, row.mults, row.params], dtype=float)


def check(planner_of, best, n_random, seed=0):
    """Per-layer sums vs ``count_ops`` of the whole structurized + decomposed model (CPU), for
    ``n_random`` random plans and the best one (``best[family, version]``) of each family/version."""
    rng = random.Random(seed)
    bad = checked = 0
    for fam, spec in FAMILIES.items():
        for ver in ("A", "B"):
            if ver not in spec:
                continue
            plans = spec[ver]
            for plan in rng.sample(plans, min(n_random, len(plans))) + [best[fam, ver]]:
                for m in spec["models"]:
                    planner = planner_of(fam, m)
                    specs = planner.specs(plan)
                    overrides = {lay.name: s for lay, s in zip(planner.profile.layers, specs)}
                    model = sc.structurize(create_model(m), overrides=overrides, inplace=True)
                    if any(s is not None for s in specs):
                        model = sc.decompose(model, inplace=True, on_unstructured="ignore")
                    for pooled_map in ("paper", "executed"):
                        ours = planner.total(planner.ids(plan), pooled_map, False)
                        rep = sc.count_ops(model, planner.profile.shape, pooled_map=pooled_map)
                        whole = np.array([rep.adds, rep.mults, rep.params], dtype=np.int64)
                        ok = bool((whole == ours).all())
                        bad += not ok
                        checked += 1
                        print(f"   {'ok ' if ok else 'BAD'} {m}-{ver} [{pooled_map}] per-layer {ours.tolist()} "
                              f"whole model {whole.tolist()}  rule: {describe(plan)}", flush=True)
    print(f"== --check: {checked - bad}/{checked} per-layer sums equal count_ops of the whole model")
    return bad == 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--top", type=int, default=1, help="show the K best rules per family")
    ap.add_argument("--convention", type=int, default=0, choices=range(-1, 4),
                    help="rank under this counting convention (index into CONVENTIONS; default 0 = "
                         "paper pooled map, BN kept); -1 = best over all conventions")
    ap.add_argument("--verbose", action="store_true", help="print per-layer specs of the best rule")
    ap.add_argument("--check", type=int, nargs="?", const=2, default=0, metavar="N",
                    help="then check N random plans (default 2) and the best one per family/version: per-layer "
                         "sums vs count_ops of the whole structurized + decomposed model; exit 1 on a mismatch")
    args = ap.parse_args(argv)
    t0 = time.time()
    profiles: dict[str, Profile] = {}
    planners: dict[tuple, Planner] = {}

    def profile_of(m):
        if m not in profiles:
            profiles[m] = Profile(m)
        return profiles[m]

    def planner_of(fam, m):
        if (fam, m) not in planners:
            spec = FAMILIES[fam]
            planners[fam, m] = Planner(profile_of(m), spec["role"], CIFAR_B_MAPS if fam == "cifar" else RN_B_MAPS)
        return planners[fam, m]

    print("== Baselines (structconv.count_ops, paper accounting: conv mults C*N1*N2*Cout*H'W', adds "
          "(C*N1*N2-1)*Cout*H'W', BN 1 add + 1 mult per element, Linear PQ mults / PQ adds incl. bias)")
    print(f"{'model':28s} {'adds':>10s} {'mults':>10s} {'params':>10s}   gaps vs paper (%)")
    for m in BASELINES:
        b = profile_of(m).base
        ref = paper(m.partition("@")[0])
        print(f"{m:28s} {b[0]:10.4g} {b[1]:10.4g} {b[2]:10.4g}   " +
              " ".join(f"{g:+6.2f}" for g in 100 * (b / ref - 1)))

    summary = []
    conv_table = {}
    best = {}
    for fam, spec in FAMILIES.items():
        for ver in ("A", "B"):
            if ver not in spec:
                continue
            plans = spec[ver]
            refs = [paper(m, ver) for m in spec["models"]]
            by_conv = {conv: [] for conv in CONVENTIONS}
            for plan in plans:
                ids = [planner_of(fam, m).ids(plan) for m in spec["models"]]
                for conv in CONVENTIONS:
                    tots = [planner_of(fam, m).total(e, *conv) for m, e in zip(spec["models"], ids)]
                    errs = np.array([t / ref - 1 for t, ref in zip(tots, refs)])
                    by_conv[conv].append((np.abs(errs).max(), np.abs(errs).mean(), plan, *conv, tots, errs))
            key = lambda x: (round(x[0], 4), x[1])  # noqa: E731
            results = sorted((x for conv in CONVENTIONS for x in by_conv[conv]), key=key)
            for conv in CONVENTIONS:
                conv_table.setdefault((fam, ver), {})[conv] = min(by_conv[conv], key=key)
            if args.convention >= 0:
                results = [x for x in results if (x[3], x[4]) == CONVENTIONS[args.convention]]
            best[fam, ver] = results[0][2]
            for rank, (mx, mean, plan, pooled_map, bnf, tots, errs) in enumerate(results[: args.top]):
                print(f"\n== {fam} {ver} rank {rank + 1}: max|gap| {100 * mx:.1f}%  mean {100 * mean:.1f}%  "
                      f"[pooled map={pooled_map}, BN after decomposed conv {'folded' if bnf else 'counted'}]")
                print("   rule:", describe(plan))
                for m, t, e, ref in zip(spec["models"], tots, errs, refs):
                    print(f"   {m}-{ver:1s}  ours {t[0]:.4g}/{t[1]:.4g}/{t[2]:.4g}  paper {ref[0]:.4g}/{ref[1]:.4g}/{ref[2]:.4g}"
                          f"  gap " + " ".join(f"{g:+5.1f}%" for g in 100 * e))
                    if rank == 0:
                        summary.append((m, ver, t, ref, e))
                if args.verbose and rank == 0:
                    planner = planner_of(fam, spec["models"][0])
                    for lay, role, s in zip(planner.profile.layers, planner.roles, planner.specs(plan)):
                        print("     ", lay.name, role, s)
    print("\n== Summary (best rule per family; adds / mults / params; gap = ours/paper - 1)")
    print(f"{'model':26s} {'ver':3s} {'adds':>9s} {'paper':>9s} {'gap':>7s} {'mults':>9s} {'paper':>9s} {'gap':>7s} {'params':>9s} {'paper':>9s} {'gap':>7s}")
    for m, ver, t, ref, e in summary:
        print(f"{m:26s} {ver:3s} " + " ".join(f"{t[i]:9.4g} {ref[i]:9.4g} {100 * e[i]:+6.1f}%" for i in range(3)))
    print("\n== Best max|gap| per family under each counting convention (pooled map, BN after decomposed conv)")
    print(f"{'family':18s} " + " ".join(f"{p[:5] + '/' + ('folded' if b else 'counted'):>14s}" for p, b in CONVENTIONS))
    for (fam, ver), d in conv_table.items():
        print(f"{fam + ' ' + ver:18s} " + " ".join(f"{100 * d[c][0]:13.1f}%" for c in CONVENTIONS))
    print(f"\n(done in {time.time() - t0:.1f}s)")
    if args.check:
        t1 = time.time()
        print(f"\n== --check: {args.check} random plan(s) and the best per family/version, both pooled maps, "
              "BN counted")
        ok = check(planner_of, best, args.check)
        print(f"(check done in {time.time() - t1:.1f}s)")
        if not ok:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
