"""Saving and loading structured / decomposed models.

A checkpoint is a plain ``torch.save`` dict (loadable with ``weights_only=True``)::

    {"format": "structconv/1", "state_dict": ..., "layers": {fqn: spec}, "model": {...}, ...}

``layers`` records which layers are structured or decomposed and their ``(c, n)``, so
:func:`load` rebuilds the same module types on a freshly built dense model before loading the
weights -- no manual re-conversion.  ``model`` (optional) names the architecture for
:func:`structconv.models.create_model`, so the dense model can be built automatically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from . import validation as v
from ._io import atomic_save, atomic_write_json
from .basis import CompositeBasis, StructuredBasis
from .convert import StructureSpec, set_submodule, structurize
from .layers import DecomposedLayer, StructuredLayer, orthonormalize_, small_layer
from .layers.composite import COMPOSITE_CONV

__all__ = [
    "atomic_save",
    "atomic_write_json",
    "layer_specs",
    "restore",
    "save",
    "load",
    "read_checkpoint",
    "load_dense_weights",
    "state_dict_mismatch",
]

FORMAT = "structconv/1"


def _spec_of(module: nn.Module) -> dict | None:
    form = (
        "structured"
        if isinstance(module, StructuredLayer)
        else "decomposed"
        if isinstance(module, DecomposedLayer)
        else None
    )
    if form is None:
        return None
    basis = module.basis
    if isinstance(basis, CompositeBasis):
        return {"form": form, "kind": "composite", "masks": basis.masks.clone()}
    assert isinstance(basis, StructuredBasis)
    spec = {"form": form, "kind": "structured", "c": basis.c, "n": list(basis.n)}
    if form == "decomposed" and parametrize.is_parametrized(small_layer(module), "weight"):
        spec["orthonormal"] = True  # trained through OrthonormalCoefficients (direct training)
    return spec


def layer_specs(model: nn.Module) -> dict[str, dict]:
    """``{fqn: spec}`` for every structured or decomposed layer of ``model``."""
    specs = {}
    for name, module in model.named_modules():
        spec = _spec_of(module)
        if spec is not None:
            specs[name] = spec
    return specs


def _replace(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    if not name:
        return new
    set_submodule(model, name, new)
    return model


def restore(model: nn.Module, specs: dict[str, dict]) -> nn.Module:
    """Convert the matching layers of a dense ``model`` (in place) to the forms in ``specs``."""
    structured = {k: StructureSpec(v["c"], tuple(v["n"])) for k, v in specs.items() if v["kind"] == "structured"}
    if structured:
        model = structurize(
            model, 1.0, overrides=structured, filter_fn=lambda m, name: name in structured, inplace=True
        )
    for name, spec in specs.items():
        if spec["kind"] == "composite":
            masks = spec["masks"]
            cls = COMPOSITE_CONV[masks.dim() - 2]
            model = _replace(model, name, cls.from_dense(model.get_submodule(name), basis=CompositeBasis(masks)))
    for name, spec in specs.items():
        if spec["form"] == "decomposed":
            layer = model.get_submodule(name).decompose()
            model = _replace(model, name, orthonormalize_(layer) if spec.get("orthonormal") else layer)
    return model


def save(model: nn.Module, path: str | os.PathLike, *, model_args: dict | None = None, **extra: Any) -> None:
    """Atomically save ``model``'s weights with the layer specs needed to rebuild it.

    ``model_args`` (e.g. ``{"arch": "resnet18", "num_classes": 10}``) lets :func:`load` build
    the dense model by itself; ``extra`` entries are stored alongside (epoch, metrics, ...).
    """
    payload = {"format": FORMAT, "state_dict": model.state_dict(), "layers": layer_specs(model), **extra}
    if model_args is not None:
        payload["model"] = dict(model_args)
    atomic_save(payload, path)


def read_checkpoint(path: str | os.PathLike, *, map_location="cpu") -> dict:
    """Load a structconv checkpoint dict, with a clear error for missing or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises RuntimeError / UnpicklingError / EOFError / zipfile errors
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"checkpoint {str(path)!r} is corrupt or not a torch checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"checkpoint {str(path)!r} is not a structconv checkpoint (format {FORMAT!r} expected)")
    return ckpt


def load(path: str | os.PathLike, model: nn.Module | None = None, *, map_location="cpu") -> nn.Module:
    """Rebuild a saved model: convert ``model`` (dense, built by the caller) as recorded, load weights.

    If ``model`` is None the checkpoint must carry ``model_args`` with an ``arch`` known to
    :func:`structconv.models.create_model`.
    """
    ckpt = read_checkpoint(path, map_location=map_location)
    if model is None:
        args = dict(ckpt.get("model") or {})
        if "arch" not in args:
            raise ValueError(f"checkpoint {str(path)!r} records no architecture; pass the dense model to load()")
        from .models import create_model

        model = create_model(args["arch"], **{k: args[k] for k in ("num_classes", "in_chans") if k in args})
    elif any(isinstance(m, (StructuredLayer, DecomposedLayer)) for m in model.modules()):
        raise ValueError(
            f"load({str(path)!r}, model): pass the dense model it was built from; this one already "
            "has structured or decomposed layers"
        )
    try:
        model = restore(model, ckpt["layers"])
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, ValueError, AttributeError, KeyError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"checkpoint {str(path)!r} does not match the model: {first}") from None
    return model


def state_dict_mismatch(model: nn.Module, state: dict) -> str | None:
    """One line saying how ``state`` does not fit ``model`` (missing and unexpected keys, shapes),
    or ``None`` when it fits."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape of", shapes)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            parts.append(
                f"{len(keys)} {what} ({', '.join(keys[:3])}{more})"
                if what != "shape of"
                else f"shape of {', '.join(keys[:3])}{more}"
            )
    return "; ".join(parts) or None


def _plain_state_dict(obj) -> dict | None:
    """The state dict inside a file written by other training code: the dict itself, or the
    one under ``state_dict`` / ``model`` / ``model_state_dict`` (timm, torchvision's references,
    Lightning), with DistributedDataParallel's ``module.`` prefix removed."""
    if not isinstance(obj, dict):
        return None
    for key in ("state_dict", "model_state_dict", "model"):
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(t, torch.Tensor) for t in inner.values()):
            obj = inner
            break
    if not obj or not all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in obj.items()):
        return None
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: t for k, t in obj.items()}
    return obj


def load_dense_weights(model: nn.Module, path: str | os.PathLike, *, name: str = "path") -> nn.Module:
    """Load the weights of a *dense* ``model`` from ``path``, in place; returns ``model``.

    ``path`` is a structconv checkpoint of a dense model (``structconv train --mode baseline``'s
    ``model.pth``) or a file written by any other training code: ``torch.save(model.state_dict())``,
    or a dict holding it under ``state_dict`` / ``model``.  Errors are one line naming the file
    and argument ``name``: a missing or corrupt file, a structured checkpoint, a state dict that
    does not fit the architecture (its missing / unexpected keys and shapes)."""
    p = v.path(path, name)
    if not p.is_file():
        raise FileNotFoundError(f"{name}: {str(p)!r} does not exist")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise v.ArgumentError(
            "{%s}={path} is corrupt or not a torch file ({why})" % name, path=repr(str(p)), why=first[:200]
        ) from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if obj.get("layers"):
            raise v.ArgumentError(
                "{%s}={path} holds a structured/decomposed model; this needs the dense one it came from" % name,
                path=repr(str(p)),
            )
        state = obj.get("state_dict")
    else:
        state = _plain_state_dict(obj)
    if not isinstance(state, dict):
        raise v.ArgumentError("{%s}={path} holds no state dict (a dict of tensors)" % name, path=repr(str(p)))
    problem = state_dict_mismatch(model, state)
    if problem:
        raise v.ArgumentError(
            "{%s}={path} does not match {arch}: {problem}" % name,
            path=repr(str(p)),
            arch=type(model).__name__,
            problem=problem,
        )
    model.load_state_dict(state)
    return model
