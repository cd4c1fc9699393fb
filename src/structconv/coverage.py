"""Model coverage: does ``structurize -> project_ -> decompose`` stay exact on a given model?

:func:`check_model` converts a model twice -- as :func:`structconv.plan` does it today, and with
the layers :func:`structconv.usage.find_unsafe_layers` flags left dense -- and compares the
outputs before and after decomposition in float64 (relative error <= :data:`TOL`).  The other
helpers build models cheaply enough to check every torchvision classifier and a timm sample:
:func:`cheap_model` skips the model's own initialization, cuts every run of repeated
shape-preserving blocks to its first two and re-initializes at random; :func:`smallest_input`
finds the smallest input size a model accepts.  ``tests/test_coverage.py`` and
``benchmarks/model_coverage.py`` (the sweep over all models) use them.
"""

from __future__ import annotations

import contextlib
import math
import time
import traceback
from collections import Counter
from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from .convert import decompose, plan, structurize
from .layers import StructuredLayer
from .usage import candidate_layers, find_unsafe_layers, find_unsafe_layers_static

__all__ = [
    "TOL",
    "SIZES",
    "TIMM_SAMPLE",
    "torchvision_models",
    "all_models",
    "smallest_input",
    "layer_width",
    "width_filter",
    "reinit_",
    "shrink_",
    "cheap_model",
    "check_model",
    "failure_site",
]

TOL = 1e-8
SIZES = (28, 32, 48, 56, 64, 96, 112, 128, 160, 192, 224, 240, 256, 288, 299, 320, 384)

TIMM_SAMPLE = (
    "resnet18d",
    "resnet50d",
    "efficientnet_b0",
    "mobilenetv3_small_100",
    "mobilenetv2_050",
    "ghostnet_100",
    "convnext_atto",
    "regnetx_002",
    "rexnet_100",
    "repvgg_a0",
    "mobileone_s0",
    "fastvit_t8",
    "efficientformer_l1",
    "efficientformerv2_s0",
    "levit_128s",
    "vit_tiny_patch16_224",
    "deit_tiny_patch16_224",
    "swin_tiny_patch4_window7_224",
    "swinv2_cr_tiny_ns_224",
    "maxvit_tiny_tf_224",
    "coatnet_0_rw_224",
    "mobilevit_xxs",
    "mobilevitv2_050",
    "edgenext_xx_small",
    "poolformer_s12",
    "convmixer_768_32",
    "mixer_s16_224",
    "resmlp_12_224",
    "cait_xxs24_224",
    "xcit_nano_12_p16_224",
    "pit_ti_224",
    "tnt_s_patch16_224",
    "crossvit_tiny_240",
    "inception_v3",
    "densenet121",
    "hrnet_w18_small",
    "dla34",
    "selecsls42b",
    "tf_efficientnetv2_b0",
)


def torchvision_models() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def all_models() -> list[tuple[str, str]]:
    return [("torchvision", n) for n in torchvision_models()] + [("timm", n) for n in TIMM_SAMPLE]


# ------------------------------------------------------------------------------------------
# Building
# ------------------------------------------------------------------------------------------
_TAKES_SIZE: dict[tuple[str, str], bool] = {}


def _constructor(source: str, name: str, size: int):
    """A zero-argument builder of ``name`` for ``size``-pixel inputs (where the builder takes it)."""
    if source == "torchvision":
        import torchvision

        kwargs = {"image_size": size} if name.startswith("vit_") else {}
        if name in ("inception_v3", "googlenet"):
            kwargs["init_weights"] = True  # and no FutureWarning about the default
        return lambda: torchvision.models.get_model(name, weights=None, **kwargs)
    import timm

    def make():
        try:
            model = timm.create_model(name, pretrained=False, img_size=size)
            _TAKES_SIZE[source, name] = True
        except TypeError as err:
            if "img_size" not in str(err):
                raise
            model = timm.create_model(name, pretrained=False)
            _TAKES_SIZE[source, name] = False
        return model

    return make


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _forward(model: nn.Module, x: torch.Tensor):
    with torch.no_grad():
        return model(x)


def smallest_input(source: str, name: str, *, build=None, dtype=torch.float64, sizes=SIZES):
    """``(model, size)``: the model built for, and running on, the smallest square input in
    ``sizes`` (eval mode, ``dtype``).  ViT-like builders get the size as ``image_size`` /
    ``img_size``; models that take any size are built once."""
    build = build or (lambda src, n, s: _constructor(src, n, s)())
    errors = []
    fixed = None  # a model whose builder ignores the size: reuse it for every size
    for size in sizes:
        try:
            with _default_dtype(dtype):
                model = fixed if fixed is not None else build(source, name, size)
            model = model.to(dtype).eval()
            if fixed is None and not _takes_size(source, name, size):
                fixed = model
            _forward(model, torch.randn(1, 3, size, size, dtype=dtype))
            return model, size
        except Exception as err:  # noqa: BLE001 - try the next size
            errors.append(f"{size}: {type(err).__name__}: {str(err)[:120]}")
    raise RuntimeError(f"{name}: no input size in {sizes} works: {errors[-1]}")


def _takes_size(source: str, name: str, size: int) -> bool:
    """Whether the builder made a model for this size (else it takes any size: build it once)."""
    if source == "torchvision":
        return name.startswith("vit_")
    return _TAKES_SIZE.get((source, name), True)


def layer_width(module: nn.Module) -> int:
    """Length of the channel axis the structure pools over: ``in_features`` or ``in_channels / groups``."""
    if isinstance(module, nn.Linear):
        return module.in_features
    return module.in_channels // module.groups


def width_filter(max_width: int | None = None):
    """``filter_fn`` leaving dense the layers wider than ``max_width`` (``None``: every width;
    the projections are linear in the width, so this only trims the cheap sweep)."""

    def keep(module: nn.Module, name: str) -> bool:
        return max_width is None or layer_width(module) <= max_width

    return keep


# ------------------------------------------------------------------------------------------
# Cheap builds for CI: parameters are never initialized by the model (no memory touched),
# repeated shape-preserving blocks of very large models are dropped, then every remaining
# parameter gets a simple random init.
# ------------------------------------------------------------------------------------------
class _SkipParameterInit(TorchFunctionMode):
    """In-place ops on Parameters (``nn.init.*``, ``p.normal_()``) do nothing while building."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.endswith("__") and args and isinstance(args[0], nn.Parameter):
            return args[0]
        return func(*args, **(kwargs or {}))


def reinit_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Deterministic random values for every parameter: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``
    for matrices and kernels, ``1 + 0.1 N`` for 1-D ``weight`` (norm scales), ``0.1 N`` else."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                bound = 1 / math.sqrt(max(1, p[0].numel()))
                p.copy_(torch.rand(p.shape, generator=gen, dtype=torch.float64) * 2 * bound - bound)
            elif name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return model


def shrink_(model: nn.Module, x: torch.Tensor, *, keep: int = 2, output_shapes: list | None = None) -> int:
    """Drop repeated blocks that keep their input's shape, keeping the first ``keep`` of each
    run: in every ``nn.Sequential`` / ``nn.ModuleList`` whose children share one type, a child
    past position ``keep`` that ran once with output shape == input shape is removed.  Returns
    the number of blocks removed; the caller checks that the model still runs (``output_shapes``
    receives the shapes of the full model's outputs)."""
    shapes: dict[int, list] = {}

    def sig(value):
        return [tuple(t.shape) for t in pytree.tree_leaves(value) if isinstance(t, torch.Tensor)]

    def hook(module, args, output):
        shapes.setdefault(id(module), []).append((sig(args), sig(output)))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        out = _forward(model, x)
    finally:
        for h in handles:
            h.remove()
    if output_shapes is not None:  # the full model's output shapes, for the caller's check
        output_shapes[:] = sig(out)
    removed = 0
    for parent in list(model.modules()):
        if not isinstance(parent, (nn.Sequential, nn.ModuleList)) or len(parent) <= keep:
            continue
        children = list(parent)
        if len({type(c) for c in children}) != 1:
            continue
        drop = []
        for i, child in enumerate(children):
            calls = shapes.get(id(child), [])
            if i >= keep and len(calls) == 1 and calls[0][0][:1] == calls[0][1][:1] and calls[0][1]:
                drop.append(i)
        for i in reversed(drop):
            del parent[i]
        removed += len(drop)
    return removed


def cheap_model(source: str, name: str, *, max_params: int = 40_000_000, sizes=SIZES):
    """``(model, size, info)`` for CI: built without the model's own initialization (fast, no
    memory touched), blocks dropped with :func:`shrink_` when it has more than ``max_params``
    parameters, then :func:`reinit_`; float64, eval mode."""

    def build(src, n, s):
        with _SkipParameterInit():
            return _constructor(src, n, s)()

    model, size = smallest_input(source, name, build=build, dtype=torch.float32, sizes=sizes)
    params = sum(p.numel() for p in model.parameters())
    info = {"params": params, "removed_blocks": 0}
    if params > max_params:
        x = torch.randn(1, 3, size, size)
        shapes: list = []
        info["removed_blocks"] = shrink_(model, x, output_shapes=shapes)
        try:
            ok = [
                tuple(t.shape) for t in pytree.tree_leaves(_forward(model, x)) if isinstance(t, torch.Tensor)
            ] == shapes
        except Exception:  # noqa: BLE001
            ok = False
        if not ok:  # a container indexed by position, or zipped with another: keep every block
            del model
            model, size = smallest_input(source, name, build=build, dtype=torch.float32, sizes=(size,))
            info["removed_blocks"] = 0
        info["params_checked"] = sum(p.numel() for p in model.parameters())
    reinit_(model)
    return model.double().eval(), size, info


# ------------------------------------------------------------------------------------------
# The check
# ------------------------------------------------------------------------------------------
def _leaves(output) -> torch.Tensor:
    ts = [t.reshape(-1).double() for t in pytree.tree_leaves(output) if isinstance(t, torch.Tensor)]
    return torch.cat(ts) if ts else torch.zeros(0)


def rel_err(a, b) -> float:
    a, b = _leaves(a), _leaves(b)
    if a.shape != b.shape:
        return math.inf
    den = float(torch.linalg.vector_norm(b))
    num = float(torch.linalg.vector_norm(a - b))
    return num / den if den > 0 else num


def _category(reason: str) -> str:
    if "outside its own forward" in reason:
        return "params used outside forward"
    if "never r" in reason:
        return "forward never ran"
    if "shares" in reason:
        return "tied parameters"
    if "several names" in reason:
        return "module registered twice"
    if "not a Parameter" in reason:
        return "weight not a Parameter"
    if reason.startswith("unsupported layer type"):
        return "unsupported layer type"
    return reason or "?"


def _convert(model, the_plan, x, *, inplace: bool) -> dict:
    """structurize -> project_ -> output -> decompose -> output; status, error, stage."""
    res: dict = {"structured": len(the_plan.structured)}
    stage = "structurize"
    try:
        if not the_plan.structured:
            res.update(status="nothing structured", rel_err=None)
            return res
        dense_y = _forward(model, x)
        s = structurize(model, the_plan, inplace=inplace)
        stage = "structured forward"
        res["structurize_err"] = rel_err(_forward(s, x), dense_y)
        del dense_y
        stage = "project_"
        for m in s.modules():
            if isinstance(m, StructuredLayer):
                m.project_()
        stage = "projected forward"
        y = _forward(s, x)
        stage = "decompose"
        d = decompose(s, inplace=True)
        stage = "decomposed forward"
        err = rel_err(_forward(d, x), y)
        res["rel_err"] = err
        res["status"] = "ok" if err <= TOL else "mismatch"
        res["model"] = d
    except Exception as err:  # noqa: BLE001 - recorded
        res.update(
            status="error", stage=stage, exception=f"{type(err).__name__}: {str(err)[:300]}", where=failure_site(err)
        )
    return res


def failure_site(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    for f in reversed(frames):
        if "site-packages" in f.filename or "/structconv/" in f.filename:
            return f"{Path(f.filename).name}:{f.lineno} {f.name}"
    return ""


def check_model(
    model: nn.Module,
    size: int,
    *,
    today: bool = True,
    static: bool = True,
    reparameterize: bool = True,
    inplace: bool = False,
    max_width: int | None = None,
) -> dict:
    """Detection + conversion of one float64 eval-mode model on a ``1 x 3 x size x size`` input.

    ``today``: also convert with the plan as it is (when it differs from the detected one).
    ``inplace``: the last conversion may consume ``model`` (saves a copy of a big model).
    ``max_width``: leave layers wider than this dense (see :func:`width_filter`).
    """
    filter_fn = width_filter(max_width)
    torch.manual_seed(0)
    x = torch.randn(1, 3, size, size, dtype=torch.float64)
    rec: dict = {"input": size, "params": sum(p.numel() for p in model.parameters())}
    t = time.perf_counter()
    unsafe = find_unsafe_layers(model, x)
    rec["t_detect"] = time.perf_counter() - t
    rec["candidates"] = len(candidate_layers(model))
    rec["n_unsafe"] = len(unsafe)
    rec["unsafe_sample"] = dict(list(unsafe.items())[:4])
    rec["unsafe_by_reason"] = dict(Counter(_category(r.split("; ")[0]) for r in unsafe.values()))
    if static:
        t = time.perf_counter()
        stat = find_unsafe_layers_static(model)
        rec["t_static"] = time.perf_counter() - t
        if stat is None:
            rec["static"] = {"traceable": False}
        else:
            rec["static"] = {
                "traceable": True,
                "agrees": set(stat) == set(unsafe),
                "only_dynamic": sorted(set(unsafe) - set(stat))[:5],
                "only_static": sorted(set(stat) - set(unsafe))[:5],
            }
    base = plan(model, 2.0, filter_fn=filter_fn, check_usage=False)  # the plan without the check
    hit = [p.name for p in base.structured if p.name in unsafe]
    rec["unsafe_in_plan"] = len(hit)
    # the library's own check, as users get it: plan() with an example input
    safe = plan(model, 2.0, filter_fn=filter_fn, example_inputs=x)
    assert {p.name for p in base.structured} - {p.name for p in safe.structured} == set(hit)
    filtered = [p for p in base.skipped if p.reason.startswith("excluded by filter_fn")]
    rec["width_filtered"] = len(filtered)
    for p in safe.skipped:
        if p.reason.startswith("excluded by filter_fn"):
            p.reason = f"wider than {max_width}"
    rec["dense_by_reason"] = dict(Counter(_category(p.reason) for p in safe.skipped))
    t = time.perf_counter()
    if hit and today:
        rec["today"] = _strip(_convert(model, base, x, inplace=False))
    t_detected = time.perf_counter()
    detected = _convert(model, safe, x, inplace=inplace)
    rec["t_convert"] = time.perf_counter() - t_detected
    decomposed = detected.pop("model", None)
    rec["detected"] = detected
    if not hit:
        rec["today"] = dict(detected, same_as_detected=True)
    rec["t_convert_all"] = time.perf_counter() - t
    if reparameterize and decomposed is not None:
        rec["reparameterize"] = _reparameterize_check(decomposed, x)
    return rec


def _strip(res: dict) -> dict:
    res.pop("model", None)
    return res


def _reparameterize_check(decomposed: nn.Module, x) -> dict | None:
    """timm's ``reparameterize_model`` (RepVGG/MobileOne/FastViT branch fusion) on the
    decomposed model: does it still work, and keep the function?"""
    if not any(hasattr(m, "reparameterize") or hasattr(m, "fuse") for m in decomposed.modules()):
        return None
    try:
        from timm.utils.model import reparameterize_model
    except ImportError:
        return None
    y = _forward(decomposed, x)
    try:
        fused = reparameterize_model(decomposed, inplace=False)
        err = rel_err(_forward(fused, x), y)
        return {"status": "ok" if err <= TOL else "mismatch", "rel_err": err}
    except Exception as err:  # noqa: BLE001
        return {"status": "error", "exception": f"{type(err).__name__}: {str(err)[:300]}", "where": failure_site(err)}
