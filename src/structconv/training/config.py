"""What a training run depends on: :class:`TrainConfig`, its checks, and its fingerprint.

Every option is declared once, with its check beside it (:mod:`structconv.validation`); the
options a recipe leaves unset (``None``) take the recipe's default (:mod:`.recipes`).
:meth:`TrainConfig.meaning` is the run's fingerprint: the options that change what it
computes, compared when a run is resumed or a finished run is reused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .. import validation as v
from .._io import json_safe
from ..data import DATASETS
from ..distributed import parse_device

__all__ = ["TrainConfig", "RUN_CONTROL", "saved_meaning", "config_fields"]

#: options that do not change what a run computes; every other one must match on resume
RUN_CONTROL = frozenset(
    {
        "data_path",
        "download",
        "workers",
        "output_dir",
        "resume",
        "overwrite",
        "ckpt_every",
        "stop_after",
        "device",
        "threads",
        "print_freq",
        "no_progress",
        "tensorboard",
        "quiet",
    }
)


def _recipe_names():
    from .recipes import recipe_names

    return recipe_names()


@dataclass
class TrainConfig:
    """Everything a training run depends on; :meth:`validate` checks it before any work.

    ``mode`` names a registered recipe (:func:`structconv.training.recipe_names`: ``baseline``,
    ``sr``, ``control``, ``direct``, ``finetune``, and any registered later); options left
    ``None`` take that recipe's default.
    """

    arch: str = v.option("cifar_resnet20", v.Text())
    mode: str = v.option("sr", v.Choice(_recipe_names))
    struct: str | None = v.option(None, v.Choice(("A", "B"), optional=True))
    ratio: float | None = v.option(None, v.Number(low=1.0, optional=True))
    lam: float = v.option(1.0, v.Number(low=0.0))
    # Step 1 (sr / finetune): "normalized" weights each layer's Eq. 3 term so it beats the task
    # off the structured subspace (regularizer.add_normalized_regularization_grad_), with kappa
    # ramped up over the first kappa_ramp of the steps, then trains the last projected_fraction
    # of the steps in the projected form; sr="eq3" with projected_fraction=0 is the paper's recipe.
    sr: str = v.option("normalized", v.Choice(("normalized", "eq3")))
    kappa: float = v.option(2.0, v.Number(low=0.0))
    kappa_ramp: float = v.option(0.5, v.Number(low=0.0, high=1.0))
    projected_fraction: float | None = v.option(None, v.Number(low=0.0, high=1.0, optional=True))
    init_from: str | None = v.option(None, v.PathArg(optional=True))
    # finetune: training batches for the data-aware projection (structconv.calibrate_); 0: weight-space projection
    calibration_batches: int | None = v.option(None, v.Integer(low=0, optional=True))
    # finetune: "search" also chooses each layer's (c, n) from the data at equal mults
    # (calibrate_(search_structure=True)); "given" keeps the preset's / the ratio plan's
    calibration_structure: str | None = v.option(None, v.Choice(("given", "search"), optional=True))
    # finetune: Adam steps per block of structconv.reconstruct_blocks_ after calibration (0: none)
    reconstruction_steps: int | None = v.option(None, v.Integer(low=0, optional=True))
    direct_init: str = v.option("default", v.Choice(("own", "default")))
    pretrained: bool = False
    # data
    dataset: str = v.option("fashion-mnist", v.Choice(DATASETS))
    data_path: str = v.option("data", v.PathArg())
    download: bool = False
    image_size: int | None = v.option(None, v.Integer(low=1, optional=True))
    in_chans: int | None = v.option(None, v.Choice((1, 3), optional=True))
    train_subset: int | None = v.option(None, v.Integer(low=1, optional=True))
    eval_subset: int | None = v.option(None, v.Integer(low=1, optional=True))
    workers: int = v.option(0, v.Integer(low=0))
    # optimisation
    epochs: int = v.option(1, v.Integer(low=1))
    max_steps: int | None = v.option(None, v.Integer(low=1, optional=True))
    batch_size: int = v.option(128, v.Integer(low=1))
    lr: float = v.option(0.1, v.Number(low=0.0, low_open=True))
    momentum: float = v.option(0.9, v.Number(low=0.0, high=1.0, high_open=True))
    weight_decay: float = v.option(1e-4, v.Number(low=0.0))
    lr_warmup_steps: int = v.option(0, v.Integer(low=0))
    label_smoothing: float = v.option(0.0, v.Number(low=0.0, high=1.0, high_open=True))
    seed: int = v.option(0, v.Integer(low=0))
    # weight of the distillation term (teacher: the recipe's, e.g. finetune's init_from, or train(teacher=))
    distill: float | None = v.option(None, v.Number(low=0.0, high=1.0, optional=True))
    distill_temperature: float = v.option(4.0, v.Number(low=0.0, low_open=True))
    eval_at: tuple = v.option((), v.Items(v.Integer(low=0), allow_empty=True))  # extra steps to evaluate at (0: start)
    # run control
    output_dir: str = v.option("runs/train", v.PathArg())
    resume: str | None = v.option(None, v.PathArg(optional=True))  # a checkpoint path, or "auto"
    overwrite: bool = False
    ckpt_every: int = v.option(0, v.Integer(low=0))
    stop_after: int | None = v.option(None, v.Integer(low=1, optional=True))
    device: str | None = None  # None: cuda when available, else cpu (as the command line)
    threads: int | None = v.option(None, v.Integer(low=1, optional=True))
    channels_last: bool = True
    print_freq: int = v.option(50, v.Integer(low=1))
    no_progress: bool = False
    tensorboard: bool = False
    quiet: bool = False

    @property
    def recipe(self):
        """The registered :class:`~structconv.training.recipes.Recipe` class of ``mode``."""
        from .recipes import get_recipe

        return get_recipe(self.mode)

    # the values the run uses where an option is left to the recipe
    @property
    def effective_lam(self) -> float:
        return self.recipe.resolve(self, "lam")

    @property
    def effective_projected_fraction(self) -> float:
        return self.recipe.resolve(self, "projected_fraction")

    @property
    def effective_distill(self) -> float:
        return self.recipe.resolve(self, "distill")

    @property
    def effective_calibration_batches(self) -> int:
        return int(self.recipe.resolve(self, "calibration_batches"))

    @property
    def effective_reconstruction_steps(self) -> int:
        return int(self.recipe.resolve(self, "reconstruction_steps"))

    @property
    def effective_calibration_structure(self) -> str:
        return str(self.recipe.resolve(self, "calibration_structure"))

    @property
    def effective_struct(self) -> str | None:
        """The Struct preset of a structured run (A unless a uniform ratio is given)."""
        if not self.recipe.structured:
            return None
        return self.struct or (None if self.ratio else "A")

    def validate(self) -> None:
        """One :class:`~structconv.validation.ArgumentError` naming the first bad option; no work is done before."""
        v.check_fields(self)
        v.exclusive({"struct": self.struct, "ratio": self.ratio})
        self.recipe.validate(self)
        if self.effective_struct is not None:
            from ..models import check_known
            from ..models.presets import has_preset

            check_known(self.arch)
            if not has_preset(self.arch, self.effective_struct):
                raise v.ArgumentError(
                    "{arch}={value} has no Struct-{preset} preset; use {ratio} R for a uniform compression "
                    "(or register a preset: docs/architecture.md)",
                    value=repr(self.arch),
                    preset=self.effective_struct,
                )
        if self.device is not None:
            parse_device(self.device)

    def meaning(self) -> dict:
        """The options that change what the run computes (compared on resume)."""
        d = asdict(self)
        for key in (
            "lam",
            "projected_fraction",
            "distill",
            "calibration_batches",
            "calibration_structure",
            "reconstruction_steps",
        ):
            d[key] = self.recipe.resolve(self, key)
        if self.init_from:  # the same file, named relative to the working directory or not
            d["init_from"] = str(Path(self.init_from).expanduser().resolve())
        return {k: val for k, val in d.items() if k not in RUN_CONTROL}


def saved_meaning(args: dict) -> dict:
    """:meth:`TrainConfig.meaning` of a run recorded as ``args`` (``results.json``'s ``args``, a
    checkpoint's ``args``), JSON-normalized; keys this version does not know are dropped."""
    known = {f.name for f in fields(TrainConfig)}
    values = {k: (tuple(val) if isinstance(val, list) else val) for k, val in args.items() if k in known}
    if "sr" not in args:  # written before the recipe options existed: the paper's recipe
        values.update(sr="eq3", projected_fraction=0.0, direct_init="default", distill=0.0)
    if "calibration_structure" not in args:  # written before structures could be searched
        values.update(calibration_structure="given")
    if "reconstruction_steps" not in args:  # written before block reconstruction existed
        values.update(reconstruction_steps=0)
    return json_safe(TrainConfig(**values).meaning())


def config_fields() -> list[str]:
    """The names of :class:`TrainConfig`'s options (what the command line sets)."""
    return [f.name for f in fields(TrainConfig)]
