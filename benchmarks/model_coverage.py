"""Which models structurize and decompose exactly: every torchvision classifier and a timm sample.

For each model, in a child process of its own (address space capped, one thread): build it
with random weights in float64 at the smallest input size it accepts, find the layers that are
unsafe to replace (:func:`structconv.usage.find_unsafe_layers`), then convert it twice --
"today" (``plan(model, 2.0)`` as it is) and "detected" (the unsafe layers left dense through
``overrides``); each conversion is ``structurize``, ``project_()`` of every structured layer,
output, ``decompose``, output again, and the relative error between the two outputs must be
<= 1e-8.  When no unsafe layer is in the plan the two conversions are the same and run once.
Also records the fx (static) answer and whether it names the same layers, times, peak memory,
the exception with its stage, and for models with RepVGG-style branches whether timm's
``reparameterize_model`` still works on the decomposed model.

Cost controls, all recorded in the table: by default layers wider than ``--max-width 1024``
input channels per group stay dense (the projections are linear in the width, but a float64
check of many wide layers still costs minutes per model on a shared core), and models are
built by ``cheap_model`` (no own init, every run of repeated shape-preserving blocks cut to its
first two).  The committed tables predate the linear-time operators, hence their footnotes on
VGG's 25088-wide Linear; ``tests/test_coverage.py`` checks every width.
``--full --max-width 0`` checks the real thing.

    python benchmarks/model_coverage.py --jobs 2             # everything, results/ JSON + markdown
    python benchmarks/model_coverage.py --only resnet18 swin_t
    python benchmarks/model_coverage.py --full --max-width 0 --only convnext_tiny
    python benchmarks/model_coverage.py --worker torchvision:swin_t   # one model, JSON on stdout

The helpers (``build_model``, ``smallest_input``, ``check_model``, ``cheap_model``) are
imported by ``tests/test_coverage.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

import structconv as sc
from structconv.usage import candidate_layers, find_unsafe_layers, find_unsafe_layers_static

HERE = Path(__file__).resolve().parent
TOL = 1e-8
SIZES = (28, 32, 48, 56, 64, 96, 112, 128, 160, 192, 224, 240, 256, 288, 299, 320, 384)

TIMM_SAMPLE = (
    "resnet18d", "resnet50d", "efficientnet_b0", "mobilenetv3_small_100", "mobilenetv2_050", "ghostnet_100",
    "convnext_atto", "regnetx_002", "rexnet_100", "repvgg_a0", "mobileone_s0", "fastvit_t8", "efficientformer_l1",
    "efficientformerv2_s0", "levit_128s", "vit_tiny_patch16_224", "deit_tiny_patch16_224",
    "swin_tiny_patch4_window7_224", "swinv2_cr_tiny_ns_224", "maxvit_tiny_tf_224", "coatnet_0_rw_224",
    "mobilevit_xxs", "mobilevitv2_050", "edgenext_xx_small", "poolformer_s12", "convmixer_768_32",
    "mixer_s16_224", "resmlp_12_224", "cait_xxs24_224", "xcit_nano_12_p16_224", "pit_ti_224",
    "tnt_s_patch16_224", "crossvit_tiny_240", "inception_v3", "densenet121", "hrnet_w18_small", "dla34",
    "selecsls42b", "tf_efficientnetv2_b0",
)  # fmt: skip


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
            ok = [tuple(t.shape) for t in pytree.tree_leaves(_forward(model, x)) if isinstance(t, torch.Tensor)] == shapes
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
        s = sc.structurize(model, the_plan, inplace=inplace)
        stage = "structured forward"
        res["structurize_err"] = rel_err(_forward(s, x), dense_y)
        del dense_y
        stage = "project_"
        for m in s.modules():
            if isinstance(m, sc.StructuredLayer):
                m.project_()
        stage = "projected forward"
        y = _forward(s, x)
        stage = "decompose"
        d = sc.decompose(s, inplace=True)
        stage = "decomposed forward"
        err = rel_err(_forward(d, x), y)
        res["rel_err"] = err
        res["status"] = "ok" if err <= TOL else "mismatch"
        res["model"] = d
    except Exception as err:  # noqa: BLE001 - recorded
        res.update(status="error", stage=stage, exception=f"{type(err).__name__}: {str(err)[:300]}",
                   where=_where(err))  # fmt: skip
    return res


def _where(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    for f in reversed(frames):
        if "site-packages" in f.filename or "/structconv/" in f.filename:
            return f"{Path(f.filename).name}:{f.lineno} {f.name}"
    return ""


def check_model(model: nn.Module, size: int, *, today: bool = True, static: bool = True,
                reparameterize: bool = True, inplace: bool = False, max_width: int | None = None) -> dict:  # fmt: skip
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
            rec["static"] = {"traceable": True, "agrees": set(stat) == set(unsafe),
                             "only_dynamic": sorted(set(unsafe) - set(stat))[:5],
                             "only_static": sorted(set(stat) - set(unsafe))[:5]}  # fmt: skip
    base = sc.plan(model, 2.0, filter_fn=filter_fn, check_usage=False)  # the plan without the check
    hit = [p.name for p in base.structured if p.name in unsafe]
    rec["unsafe_in_plan"] = len(hit)
    # the library's own check, as users get it: plan() with an example input
    safe = sc.plan(model, 2.0, filter_fn=filter_fn, example_inputs=x)
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
        return {"status": "error", "exception": f"{type(err).__name__}: {str(err)[:300]}", "where": _where(err)}


# ------------------------------------------------------------------------------------------
# Sweep driver
# ------------------------------------------------------------------------------------------
def worker(spec: str, mem_gb: float, full: bool = False, max_width: int | None = None) -> dict:
    import resource

    limit = int(mem_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    torch.set_num_threads(1)
    source, name = spec.split(":", 1)
    rec: dict = {"source": source, "name": name, "mode": "full" if full else "shrunk"}
    t = time.perf_counter()
    try:
        torch.manual_seed(0)
        if full:
            model, size = smallest_input(source, name)
        else:
            model, size, info = cheap_model(source, name, max_params=0)
            rec.update(full_params=info["params"], removed_blocks=info["removed_blocks"])
        rec["t_build"] = time.perf_counter() - t
        rec["max_width"] = max_width
        rec.update(check_model(model, size, inplace=True, max_width=max_width))
    except BaseException as err:  # noqa: BLE001 - MemoryError included
        rec["failure"] = f"{type(err).__name__}: {str(err)[:300]}"
        rec["where"] = _where(err)
    rec["t_total"] = time.perf_counter() - t
    rec["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return rec


def _run_child(spec: str, mem_gb: float, timeout: float, full: bool, max_width: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", spec, "--mem-gb", str(mem_gb)]
    cmd += (["--full"] if full else []) + ["--max-width", str(max_width)]
    source, name = spec.split(":", 1)
    t = time.perf_counter()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"source": source, "name": name, "failure": f"timeout after {timeout:.0f} s", "t_total": timeout}
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (out.stderr or "").strip().splitlines()[-3:]
    return {"source": source, "name": name, "failure": f"child exited {out.returncode}: {' | '.join(tail)[:300]}",
            "t_total": time.perf_counter() - t}  # fmt: skip


def _status(res: dict | None) -> str:
    if not res:
        return "-"
    if res.get("status") == "error":
        return f"error ({res.get('stage')})"
    if res.get("status") == "mismatch":
        return f"MISMATCH {res['rel_err']:.1e}"
    return res.get("status", "-")


def summarize(records: list[dict]) -> dict:
    out = {}
    for source in ("torchvision", "timm"):
        recs = [r for r in records if r["source"] == source]
        ok = lambda res: bool(res) and res.get("status") == "ok"  # noqa: E731
        out[source] = {
            "models": len(recs),
            "build_failures": sum("failure" in r for r in recs),
            "today_ok": sum(ok(r.get("today")) for r in recs),
            "detected_ok": sum(ok(r.get("detected")) for r in recs),
            "detection_changed_plan": sum(r.get("unsafe_in_plan", 0) > 0 for r in recs),
            "static_traceable": sum(r.get("static", {}).get("traceable", False) for r in recs),
            "static_agrees": sum(r.get("static", {}).get("agrees", False) for r in recs),
        }
    return out


def markdown(records: list[dict], summary: dict) -> str:
    lines = ["# Model coverage: structurize -> project_ -> decompose, float64, ratio 2", ""]
    for source, s in summary.items():
        lines.append(
            f"- **{source}**: {s['models']} models; exact today {s['today_ok']}, exact with detection "
            f"{s['detected_ok']}; detection changed the plan of {s['detection_changed_plan']}; build failures "
            f"{s['build_failures']}; fx-traceable {s['static_traceable']}, static == dynamic {s['static_agrees']}"
        )
    lines += ["", "`‡` layers wider than --max-width left dense (a cheap sweep's trim).", ""]
    head = ["source", "model", "px", "params M checked (full)", "layers", "structured", "left dense (reason: n)", "today",
            "with detection", "rel err", "static", "time s", "peak MB"]  # fmt: skip
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        if "failure" in r:
            cells = [r["source"], r["name"], "", "", "", "", "", f"FAIL: {r['failure'][:80]}", "", "", "", "",
                     f"{r.get('peak_rss_mb', 0):.0f}"]  # fmt: skip
        else:
            det = r["detected"]
            st = r.get("static", {})
            static = "n/a" if not st.get("traceable") else ("=" if st["agrees"] else "≠")
            dense = ", ".join(f"{k}: {v}" for k, v in sorted(r["dense_by_reason"].items()))
            name = r["name"] + (" ‡" if r.get("width_filtered") else "")
            err = det.get("rel_err")
            full = f" ({r['full_params'] / 1e6:.1f})" if r.get("full_params", r["params"]) != r["params"] else ""
            cells = [r["source"], name, str(r["input"]), f"{r['params'] / 1e6:.1f}{full}", str(r["candidates"]),
                     str(det.get("structured", 0)), dense, _status(r.get("today")), _status(det),
                     "" if err is None else f"{err:.1e}", static, f"{r['t_total']:.1f}", f"{r['peak_rss_mb']:.0f}"]  # fmt: skip
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    fails = [r for r in records if "failure" in r or any((r.get(k) or {}).get("status") in ("error", "mismatch")
                                                         for k in ("today", "detected", "reparameterize"))]  # fmt: skip
    if fails:
        lines += ["", "## Failures", ""]
        for r in fails:
            for key in ("today", "detected", "reparameterize"):
                res = r.get(key) or {}
                if res.get("status") in ("error", "mismatch") and not res.get("same_as_detected"):
                    lines.append(f"- {r['source']} `{r['name']}` [{key}] {res.get('stage', '')}: "
                                 f"{res.get('exception', res.get('rel_err'))} ({res.get('where', '')})")  # fmt: skip
            if "failure" in r:
                lines.append(f"- {r['source']} `{r['name']}` [build]: {r['failure']} ({r.get('where', '')})")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", help="model names (either library)")
    p.add_argument("--source", choices=["torchvision", "timm"], help="one library only")
    p.add_argument("--jobs", type=int, default=1, help="children at once (each single-threaded)")
    p.add_argument("--mem-gb", type=float, default=12.0, help="address-space cap per child")
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--out", default=str(HERE / "results" / "model_coverage"))
    p.add_argument("--full", action="store_true",
                   help="build each model with its own init and all its blocks (default: cheap_model with every "
                        "repeated shape-preserving block past the second dropped, max_params=0)")  # fmt: skip
    p.add_argument("--max-width", type=int, default=1024,
                   help="leave layers with more input channels per group / in_features dense (0: no limit)")
    p.add_argument("--resume", action="store_true", help="keep the models already in the JSON, run the others")
    p.add_argument("--rewrite", action="store_true", help="only rewrite the markdown from the JSON")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rewrite:
        data = json.loads(Path(args.out).with_suffix(".json").read_text())
        Path(args.out).with_suffix(".md").write_text(markdown(data["models"], data["summary"]))
        return 0
    if args.worker:
        width = args.max_width if args.max_width > 0 else None
        print(json.dumps(worker(args.worker, args.mem_gb, args.full, width), default=str), flush=True)
        return 0
    specs = all_models()
    if args.source:
        specs = [s for s in specs if s[0] == args.source]
    if args.only:
        specs = [s for s in specs if s[1] in args.only]
    from concurrent.futures import ThreadPoolExecutor

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    existing = {}
    if out.with_suffix(".json").exists() and (args.only or args.source or args.resume):
        for r in json.loads(out.with_suffix(".json").read_text())["models"]:
            existing[f"{r['source']}:{r['name']}"] = r
    if args.resume:
        specs = [s for s in specs if f"{s[0]}:{s[1]}" not in existing]
    order = {f"{s}:{n}": i for i, (s, n) in enumerate(all_models())}
    meta = {"torch": torch.__version__, "tolerance": TOL, "ratio": 2.0, "mode": "full" if args.full else "shrunk",
            "max_width": args.max_width or None}
    try:
        import timm
        import torchvision

        meta.update(torchvision=torchvision.__version__, timm=timm.__version__)
    except ImportError:
        pass

    def write() -> dict:
        final = sorted(existing.values(), key=lambda r: order.get(f"{r['source']}:{r['name']}", 1 << 30))
        summary = summarize(final)
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "summary": summary, "models": final},
                                                       indent=1, default=str))  # fmt: skip
        out.with_suffix(".md").write_text(markdown(final, summary))
        return summary

    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {f"{s}:{n}": pool.submit(_run_child, f"{s}:{n}", args.mem_gb, args.timeout, args.full, args.max_width)
                   for s, n in specs}  # fmt: skip
        for spec, fut in futures.items():
            r = fut.result()
            existing[spec] = r
            det = r.get("detected", {})
            print(f"{spec:45s} today={_status(r.get('today')):22s} detected={_status(det):22s} "
                  f"{r.get('failure', '')[:60]} {r.get('t_total', 0):7.1f}s {r.get('peak_rss_mb', 0):6.0f}MB",
                  flush=True)  # fmt: skip
            write()
    print(json.dumps(write(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
