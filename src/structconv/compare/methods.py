"""The compared methods as registered objects: each says how its model is built and trained,
what it starts from, and what it deploys.  The study asks the method; it never tests a method
name.  A new method is one :class:`CompareMethod` subclass and one :func:`register_method` call.

Built in (in study order; ``dense`` first, the others start from it or match its cost):

* ``dense``: the baseline, trained once per seed; the trained model every from-trained method
  starts from (and distills from).
* ``struct_sr`` (Step 1 with Structural Regularization, from scratch), ``struct_ft`` (the
  same preset calibrated to the trained dense model and fine-tuned; ``struct_ft_plain`` with
  the weight-space projection instead, selected by name), ``struct_direct`` (the decomposed form
  trained from scratch, Sec. 6.4), each at the paper's Struct-A / Struct-B presets;
* ``prune`` (channel pruning with Torch-Pruning), ``svd_weight`` / ``svd_spatial`` (low-rank
  factorization), from the trained dense model, brought to the multiplications of the
  decomposed Struct model (±3 %) and fine-tuned with the same budget and recipe as ``struct_ft``;
* ``narrow``: the same architecture with fewer channels at those multiplications, from scratch.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from .. import validation as v
from ..serialization import load
from ..training import TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    from .config import Run
    from .study import Study

__all__ = [
    "CompareMethod",
    "register_method",
    "unregister_method",
    "get_method",
    "method_names",
    "selectable_names",
    "expand_methods",
]

_METHODS: dict[str, "CompareMethod"] = {}


def register_method(method: "CompareMethod") -> "CompareMethod":
    """Add ``method`` (an instance) to the study's methods, after those registered before it."""
    if not isinstance(method.name, str) or not method.name.isidentifier() or method.name in _METHODS:
        raise ValueError(f"register_method: name {method.name!r} is taken or not an identifier")
    _METHODS[method.name] = method
    return method


def unregister_method(name: str) -> None:
    _METHODS.pop(name, None)


def get_method(name: str) -> "CompareMethod":
    try:
        return _METHODS[name]
    except KeyError:
        v.choice(name, "methods", method_names())
        raise


def method_names() -> tuple[str, ...]:
    """Every method, in study order."""
    return tuple(_METHODS)


def _groups() -> dict[str, tuple[str, ...]]:
    groups: dict[str, list[str]] = {}
    for name, method in _METHODS.items():
        if method.group:
            groups.setdefault(method.group, []).append(name)
    return {g: tuple(names) for g, names in groups.items()}


def selectable_names() -> tuple[str, ...]:
    """What ``methods=`` accepts: the group names (``struct``, ``svd``) and every method."""
    return (*_groups(), *_METHODS)


def expand_methods(selected) -> tuple[str, ...]:
    """``selected`` with groups spelled out, plus every method that always runs, in study order."""
    groups = _groups()
    chosen = {name for name, m in _METHODS.items() if m.always}
    for name in selected:
        chosen.update(groups.get(name, (name,)))
    return tuple(name for name in _METHODS if name in chosen)


class CompareMethod:
    """One compared method.

    Attributes:
        name: how the study, its files and its tables call it.
        label, marker, color: how reports and figures show it.
        group: a name that selects several methods at once (``struct``, ``svd``).
        always: it runs in every study (the dense baseline).
        per_target: it runs once per Struct target (everything but the baseline).
        from_trained: it starts from the trained dense model and gets the fine-tune budget.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    marker: ClassVar[str] = "o"
    color: ClassVar[str] = "gray"
    group: ClassVar[str | None] = None
    always: ClassVar[bool] = False
    per_target: ClassVar[bool] = True
    from_trained: ClassVar[bool] = False

    def check_available(self) -> None:
        """Raise a one-line error when what the method needs is not installed."""

    def latency_key(self, target: str | None) -> str:
        """The column of the latency tables (methods that deploy the same model share one)."""
        return f"{self.name}-{target}"

    def train_config(self, study: "Study", run: "Run") -> TrainConfig:
        """The training run: from scratch at the dense budget, or a fine-tune of the trained model."""
        c = study.config
        if self.from_trained:
            return study.train_config(run, mode="baseline", **study.finetune_options())
        return study.train_config(run, mode="baseline", max_steps=c.dense_steps, lr=c.lr)

    def build_model(self, study: "Study", run: "Run") -> nn.Module | None:
        """A model the method builds itself (``None``: the recipe of its config builds it).
        Deterministic, so a resumed run rebuilds the same structure."""
        return None

    def teacher(self, study: "Study", run: "Run", config: TrainConfig) -> nn.Module | None:
        """The model to distill from when the method builds its own model."""
        return study.trained_dense(run.seed) if self.from_trained and config.effective_distill > 0 else None

    def before_training(self, study: "Study", run: "Run", model: nn.Module | None) -> None:
        """Once, before a fresh (not resumed) run trains."""

    def deployed(self, study: "Study", run: "Run") -> nn.Module:
        """The seed's trained model as it deploys (BatchNorm is folded by the caller)."""
        model = self.build_model(study, run)
        state = torch.load(study.run_dir(run) / "model.pth", map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict(state)
        return model


class _Recorded(CompareMethod):
    """A method whose model the training recipe builds and saves (dense or structured)."""

    def deployed(self, study, run):
        out = study.run_dir(run)
        # decomposed when structured; direct training saves its decomposed model as model.pth
        path = out / "model_decomposed.pth" if (out / "model_decomposed.pth").exists() else out / "model.pth"
        return load(path)


class Dense(_Recorded):
    name, label, marker, color = "dense", "dense", "*", "black"
    always, per_target = True, False

    def latency_key(self, target):
        return "dense"


class _Struct(_Recorded):
    group = "struct"

    def latency_key(self, target):
        return f"struct-{target}"  # every Struct method deploys the same decomposed architecture


class StructSR(_Struct):
    name, label, marker, color = "struct_sr", "Struct, SR from scratch", "o", "tab:blue"

    def train_config(self, study, run):
        c = study.config
        return study.train_config(run, mode="sr", struct=run.target, max_steps=c.dense_steps, lr=c.lr)


class StructFinetune(_Struct):
    name, label, marker, color = "struct_ft", "Struct, fine-tuned from dense", "s", "tab:cyan"
    from_trained = True

    def train_config(self, study, run):
        return study.train_config(
            run,
            mode="finetune",
            struct=run.target,
            init_from=str(study.dense_path(run.seed)),
            **study.finetune_options(),
        )


class StructFinetunePlain(StructFinetune):
    """``struct_ft`` with the weight-space projection ``A A^+ W`` instead of the data-aware one
    (the row that shows what calibration is worth; selected by name, not by ``struct``)."""

    name, label, marker, color = "struct_ft_plain", "Struct, fine-tuned, weight-space projection", "v", "tab:olive"
    group = None

    def train_config(self, study, run):
        return dataclasses.replace(super().train_config(study, run), calibration_batches=0)


class StructDirect(_Struct):
    name, label, marker, color = "struct_direct", "Struct, direct (Sec. 6.4)", "D", "tab:purple"

    def train_config(self, study, run):
        c = study.config
        return study.train_config(run, mode="direct", struct=run.target, max_steps=c.dense_steps, lr=c.lr)


class _NeedsTorchPruning(CompareMethod):
    def check_available(self) -> None:
        try:
            import torch_pruning  # noqa: F401
        except ImportError:
            raise v.ArgumentError(
                "{methods}=" + self.name + " needs Torch-Pruning: pip install 'structconv[compare]'"
            ) from None


class Prune(_NeedsTorchPruning):
    name, label, marker, color = "prune", "channel pruning (Torch-Pruning)", "v", "tab:red"
    from_trained = True

    def build_model(self, study, run):
        from ..baselines import prune_to_mults

        return prune_to_mults(study.trained_dense(run.seed), study.example(), study.target_mults(run.target))

    def before_training(self, study, run, model):
        from ..baselines import save_pruned

        out = study.run_dir(run)
        out.mkdir(parents=True, exist_ok=True)
        save_pruned(model, out / "pruned_init.pth")  # Torch-Pruning's format: the structure, for load_pruned


class _SVD(CompareMethod):
    group = "svd"
    from_trained = True
    spatial: ClassVar[bool] = False

    def build_model(self, study, run):
        from ..baselines import spatial_svd, weight_svd

        factor = spatial_svd if self.spatial else weight_svd
        return factor(study.trained_dense(run.seed), study.example(), study.target_mults(run.target))


class WeightSVD(_SVD):
    name, label, marker, color = "svd_weight", "weight SVD", "^", "tab:orange"


class SpatialSVD(_SVD):
    name, label, marker, color = "svd_spatial", "spatial SVD", "<", "tab:brown"
    spatial = True


class Narrow(_NeedsTorchPruning):
    name, label, marker, color = "narrow", "narrow net from scratch", "x", "tab:green"

    def build_model(self, study, run):
        from ..baselines import narrow_to_mults
        from ..models import get_entry

        torch.manual_seed(run.seed)
        entry = get_entry(study.config.arch)
        init = entry.init if entry is not None else None  # the architecture's own init, where it is registered
        return narrow_to_mults(study.fresh_dense, study.example(), study.target_mults(run.target), init_fn=init)


for _method in (
    Dense,
    StructSR,
    StructFinetune,
    StructFinetunePlain,
    StructDirect,
    Prune,
    WeightSVD,
    SpatialSVD,
    Narrow,
):
    register_method(_method())
