"""Saving and loading structured / decomposed models.

A checkpoint is a plain ``torch.save`` dict (loadable with ``weights_only=True``)::

    {"format": "structconv/1", "state_dict": ..., "layers": {fqn: spec}, "model": {...}, ...}

``layers`` records which layers are structured or decomposed and their ``(c, n)``, so
:func:`load` rebuilds the same module types on a freshly built dense model before loading the
weights -- no manual re-conversion.  ``model`` (optional) names the architecture for
:func:`structconv.models.create_model`, so the dense model can be built automatically.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from .basis import CompositeBasis, StructuredBasis
from .convert import StructureSpec, _set_submodule, structurize

from .layers import (
    CompositeConv1d,
    CompositeConv2d,
    CompositeConv3d,
    DecomposedLayer,
    StructuredLayer,
    _small_layer,
    orthonormalize_,
)

__all__ = ["atomic_save", "atomic_write_json", "layer_specs", "restore", "save", "load"]

FORMAT = "structconv/1"
_COMPOSITE = {1: CompositeConv1d, 2: CompositeConv2d, 3: CompositeConv3d}


def _atomic_write(path: str | os.PathLike, write, mode: str) -> None:
    """Write through ``write(file)`` into a temporary file beside ``path``, fsync, rename over it.

    A crash leaves either the old file or the new one, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically (see :func:`_atomic_write`)."""
    _atomic_write(path, lambda f: torch.save(obj, f), "wb")


def atomic_write_json(obj: Any, path: str | os.PathLike, **dump_kwargs: Any) -> None:
    """``json.dump`` ``obj`` to ``path`` atomically (see :func:`_atomic_write`)."""
    _atomic_write(path, lambda f: json.dump(obj, f, **dump_kwargs), "w")


def _spec_of(module: nn.Module) -> dict | None:
    form = "structured" if isinstance(module, StructuredLayer) else "decomposed" if isinstance(module, DecomposedLayer) else None
    if form is None:
        return None
    basis = module.basis
    if isinstance(basis, CompositeBasis):
        return {"form": form, "kind": "composite", "masks": basis.masks.clone()}
    assert isinstance(basis, StructuredBasis)
    spec = {"form": form, "kind": "structured", "c": basis.c, "n": list(basis.n)}
    if form == "decomposed" and parametrize.is_parametrized(_small_layer(module), "weight"):
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
    _set_submodule(model, name, new)
    return model


def restore(model: nn.Module, specs: dict[str, dict]) -> nn.Module:
    """Convert the matching layers of a dense ``model`` (in place) to the forms in ``specs``."""
    structured = {k: StructureSpec(v["c"], tuple(v["n"])) for k, v in specs.items() if v["kind"] == "structured"}
    if structured:
        model = structurize(model, 1.0, overrides=structured, filter_fn=lambda m, name: name in structured, inplace=True)
    for name, spec in specs.items():
        if spec["kind"] == "composite":
            masks = spec["masks"]
            cls = _COMPOSITE[masks.dim() - 2]
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
        raise ValueError(f"checkpoint {str(path)!r} is corrupt or not a torch checkpoint: {err}") from None
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

        model = create_model(args.pop("arch"), **args)
    try:
        model = restore(model, ckpt["layers"])
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, ValueError, AttributeError) as err:
        raise ValueError(f"checkpoint {str(path)!r} does not match the model: {err}") from None
    return model
