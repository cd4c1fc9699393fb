"""Training modes as registered recipes (the handler pattern of torchao's
``register_quantize_module_handler``): ``TrainConfig.mode`` names a :class:`Recipe`, and the loop
asks the recipe -- how the model is built, the defaults of the options it leaves unset, its
loss terms, what happens after backward and before a checkpoint -- instead of testing a mode
string.  A new mode is one subclass and one :func:`register_recipe` call (docs/architecture.md).

Built in:

* ``baseline``  -- the dense model, plain cross-entropy.
* ``sr``        -- Step 1: the structured training form with Structural Regularization
  (normalized per layer by default, ``sr="eq3"`` for the paper's ``CE + lam * Eq. 3``), the last
  5 % of the steps projected; Step 2 (``structconv.decompose``) at the end.
* ``control``   -- ``sr`` with ``lam = 0`` and no projected phase (the control).
* ``direct``    -- the decomposed form trained from scratch (Sec. 6.4), no regularizer.
* ``finetune``  -- a trained dense model (``init_from``) structurized and projected, then
  projected SGD distilled from the dense model (weight 0.9, temperature 4).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import validation as v
from ..convert import to_direct
from ..finetuning import distillation_loss
from ..layers import StructuredLayer
from ..models import create_model, structurize_model
from ..regularizer import (
    add_normalized_regularization_grad_,
    project_gradients_,
    project_weights_,
    structural_regularization,
)
from ..serialization import load_dense_weights


def calibrate_from_dense(run: "Run", dense: nn.Module, batches: int, *, search_structure: bool = False) -> dict:
    """:func:`structconv.calibrate_` of ``run.model`` to ``dense`` on ``batches`` training
    batches (seeded by the run's seed), choosing structures too with ``search_structure``;
    prints the summary and returns the report as a dict."""
    from torch.utils.data import DataLoader

    from ..calibration import calibrate_

    generator = torch.Generator().manual_seed(run.config.seed)
    loader = DataLoader(run.train_data, batch_size=run.config.batch_size, shuffle=True, generator=generator)
    report = calibrate_(
        run.model, dense, loader, max_batches=batches, device=run.ctx.device, search_structure=search_structure
    )
    changed = sum(layer.structure != (layer.own_structure or layer.structure) for layer in report.layers)
    searched = f", {changed} layers given another (c, n) at equal mults" if search_structure else ""
    run.say(
        f"calibrated {len(report.layers)} layers on {batches} batches: mean output error "
        f"{report.mean_error_projection:.3f} (weight-space projection) -> {report.mean_error_calibrated:.3f}{searched}"
    )
    return report.to_dict()


def reconstruct_from_dense(run: "Run", dense: nn.Module, batches: int, steps: int) -> list[dict]:
    """:func:`structconv.reconstruction.reconstruct_blocks_` of ``run.model`` to ``dense`` on the
    batches :func:`calibrate_from_dense` read; prints the summary and returns the rows."""
    from dataclasses import asdict

    from torch.utils.data import DataLoader

    from ..reconstruction import reconstruct_blocks_

    generator = torch.Generator().manual_seed(run.config.seed)
    loader = DataLoader(run.train_data, batch_size=run.config.batch_size, shuffle=True, generator=generator)
    rows = reconstruct_blocks_(run.model, dense, loader, steps=steps, max_batches=batches, device=run.ctx.device)
    kept = [r for r in rows if r.kept]
    if rows:
        before = sum(r.error_before for r in rows) / len(rows)
        after = sum(min(r.error_before, r.error_after) for r in rows) / len(rows)
        run.say(f"reconstructed {len(kept)} of {len(rows)} blocks: mean block output error {before:.3f} -> {after:.3f}")
    return [asdict(r) for r in rows]


if TYPE_CHECKING:  # pragma: no cover
    from .config import TrainConfig
    from .loop import Run

__all__ = [
    "Recipe",
    "StructuralRecipe",
    "register_recipe",
    "unregister_recipe",
    "get_recipe",
    "recipe_names",
    "distillation_loss",
]

_RECIPES: dict[str, type["Recipe"]] = {}


def register_recipe(cls: type["Recipe"]) -> type["Recipe"]:
    """Register ``cls`` under ``cls.name`` (also usable as a class decorator); returns ``cls``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"register_recipe: {cls.__name__}.name={name!r} must be an identifier")
    if name in _RECIPES:
        raise ValueError(f"register_recipe: a recipe named {name!r} is already registered")
    _RECIPES[name] = cls
    return cls


def unregister_recipe(name: str) -> None:
    """Remove a recipe (tests and notebooks that register toy recipes)."""
    _RECIPES.pop(name, None)


def recipe_names() -> tuple[str, ...]:
    """The registered modes, in registration order."""
    return tuple(_RECIPES)


def get_recipe(name: str) -> type["Recipe"]:
    """The recipe class registered as ``name``."""
    try:
        return _RECIPES[name]
    except (KeyError, TypeError):
        v.choice(name, "mode", recipe_names())
        raise


class Recipe:
    """How one training mode builds, trains and finishes its model.

    The loop creates one instance per run (``Recipe(config)``), so a recipe may keep state
    between steps; everything it needs to resume must be derivable from the run's state (step
    counter, model, optimizer), which the loop checkpoints.

    Class attributes:
        name: the ``mode`` it registers under.
        structured: it trains a structured or decomposed model (so it needs a Struct preset or
            a ratio, and results report structure errors).
        uses_lambda: ``lam`` means something to it (reported and compared on resume).
        defaults: values of the options the config leaves ``None`` (``projected_fraction``,
            ``distill``).
        teacher_from_init: it distills from its ``init_from`` model when ``distill > 0``.
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    structured: ClassVar[bool] = False
    uses_lambda: ClassVar[bool] = False
    teacher_from_init: ClassVar[bool] = False
    defaults: ClassVar[dict] = {
        "projected_fraction": 0.0,
        "distill": 0.0,
        "calibration_batches": 0,
        "calibration_structure": "given",
        "reconstruction_steps": 0,
    }

    def __init__(self, config: "TrainConfig") -> None:
        self.config = config

    # ---- configuration -----------------------------------------------------------------
    @classmethod
    def resolve(cls, config: "TrainConfig", key: str):
        """The value the run uses for option ``key``: the config's, else this recipe's default."""
        if key == "lam":
            return float(config.lam)
        value = getattr(config, key)
        value = cls.defaults[key] if value is None else value
        if key == "calibration_structure":
            return str(value)
        return int(value) if key in ("calibration_batches", "reconstruction_steps") else float(value)

    @classmethod
    def validate(cls, config: "TrainConfig") -> None:
        """Checks that depend on the mode (the generic ones ran already)."""
        if not cls.structured and (config.struct or config.ratio):
            raise v.ArgumentError("{mode}={value} trains the dense model; drop {struct}/{ratio}", value=repr(cls.name))
        if config.init_from and not cls.teacher_from_init:
            raise v.ArgumentError("{init_from} is not used by {mode}={value}", value=repr(cls.name))
        if config.calibration_batches and not cls.teacher_from_init:
            raise v.ArgumentError(
                "{calibration_batches} calibrates a trained model; {mode}={value} has none", value=repr(cls.name)
            )
        if config.calibration_batches == 1:
            raise v.ArgumentError("{calibration_batches}=1: calibration needs at least 2 batches (one is held out)")
        if config.calibration_structure == "search" and not cls.teacher_from_init:
            raise v.ArgumentError(
                "{calibration_structure}='search' calibrates a trained model; {mode}={value} has none",
                value=repr(cls.name),
            )
        if config.reconstruction_steps and not cls.teacher_from_init:
            raise v.ArgumentError(
                "{reconstruction_steps} reconstructs a calibrated model; {mode}={value} has none", value=repr(cls.name)
            )
        if config.reconstruction_steps and config.calibration_batches == 0:
            raise v.ArgumentError("{reconstruction_steps} follows calibration, which {calibration_batches}=0 turns off")
        if config.calibration_structure == "search" and config.calibration_batches == 0:
            raise v.ArgumentError(
                "{calibration_structure}='search' chooses structures by calibration, which "
                "{calibration_batches}=0 turns off"
            )

    def describe(self, run: "Run") -> str:
        """What the start-of-run line adds after the mode (e.g. the regularizer's settings)."""
        return ""

    # ---- the model -----------------------------------------------------------------------
    def build_model(self, info) -> nn.Module:
        """The model this mode trains, for a dataset described by ``info`` (:class:`~structconv.data.DataInfo`)."""
        c = self.config
        return create_model(c.arch, num_classes=info.num_classes, in_chans=info.in_chans, pretrained=c.pretrained)

    def build_teacher(self, info) -> nn.Module | None:
        """The model to distill from when the caller gives none (``None``: no distillation)."""
        return None

    def prepare(self, run: "Run") -> None:
        """Every run, fresh or resumed, once the model, optimizer and step budget are known."""

    def start(self, run: "Run") -> None:
        """A fresh run, before the first step (not called when resuming)."""

    def notes(self) -> list[str]:
        """One-line notes for the user about how the config is read (printed unless quiet)."""
        return []

    # ---- each step -------------------------------------------------------------------------
    def before_step(self, run: "Run") -> None:
        """Before the forward of step ``run.state['global_step']``."""

    def loss(self, run: "Run", logits: Tensor, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(loss to minimize, task loss, regularizer value for the log)``."""
        c = self.config
        task = F.cross_entropy(logits, targets, label_smoothing=c.label_smoothing)
        loss = task
        if run.teacher is not None:
            d = c.effective_distill
            with torch.no_grad():
                target = run.teacher(images)
            loss = (1 - d) * task + d * distillation_loss(logits, target, c.distill_temperature)
        return loss, task, task.new_zeros(())

    def after_backward(self, run: "Run", reg: Tensor) -> Tensor:
        """After ``loss.backward()``, before the optimizer step; returns the value to log as the regularizer."""
        return reg

    def before_checkpoint(self, run: "Run") -> None:
        """Before the model is evaluated or saved at an epoch end, a budget end or a stop."""


# ------------------------------------------------------------------------------------------
# built-in recipes
# ------------------------------------------------------------------------------------------
@register_recipe
class Baseline(Recipe):
    name = "baseline"
    summary = "the dense model, plain cross-entropy"


class StructuralRecipe(Recipe):
    """The structured training form with Structural Regularization and a projected phase
    (Sec. 5.1): what ``sr``, ``control`` and ``finetune`` share."""

    structured = True
    uses_lambda = True

    def build_model(self, info) -> nn.Module:
        model = super().build_model(info)
        return structurize_model(model, self.config.arch, struct=self.config.effective_struct, ratio=self.config.ratio)

    def prepare(self, run: "Run") -> None:
        super().prepare(run)
        has_structure = any(isinstance(m, StructuredLayer) for m in run.model.modules())
        self.use_reg = has_structure and self.config.effective_lam > 0
        self.projected = False
        self.projected_from = None
        fraction = self.config.effective_projected_fraction
        if self.use_reg and fraction > 0:
            self.projected_from = run.total_steps - max(1, round(fraction * run.total_steps))

    def describe(self, run: "Run") -> str:
        if not self.use_reg:
            return ""
        text = f", lam={self.config.effective_lam:g}, {self.config.sr} SR"
        if self.projected_from is not None:
            text += f", projected from step {self.projected_from}"
        return text

    def start(self, run: "Run") -> None:
        super().start(run)
        # A run projected from step 0 is projected before anything looks at it: the step-0
        # evaluation (eval_at=0) must see the model training starts from, not the dense one.
        self.before_step(run)

    def before_step(self, run: "Run") -> None:
        if self.projected_from is not None and not self.projected and run.state["global_step"] >= self.projected_from:
            project_weights_(run.model, run.optimizer)  # also on resume: idempotent on projected weights
            self.projected = True

    def loss(self, run, logits, images, targets):
        loss, task, reg = super().loss(run, logits, images, targets)
        if self.use_reg and self.config.sr == "eq3" and not self.projected:
            reg = structural_regularization(run.model)
            loss = loss + self.config.effective_lam * reg
        return loss, task, reg

    def after_backward(self, run, reg):
        c = self.config
        if self.projected:
            project_gradients_(run.model)
        elif self.use_reg and c.sr == "normalized":
            ramp = min(1.0, run.state["global_step"] / (c.kappa_ramp * run.total_steps)) if c.kappa_ramp else 1.0
            worst = add_normalized_regularization_grad_(run.model, lam=c.effective_lam, kappa=c.kappa * ramp)
            reg = reg.new_tensor(worst)  # logged: the largest structure error before this step
        return reg

    def before_checkpoint(self, run: "Run") -> None:
        if self.projected:
            project_weights_(run.model)  # float drift off the subspace, removed where the run is saved


@register_recipe
class StructuralRegularization(StructuralRecipe):
    name = "sr"
    summary = "Step 1 with Structural Regularization, the last 5 % projected, then decomposed"
    defaults = {**Recipe.defaults, "projected_fraction": 0.05}


@register_recipe
class Control(StructuralRecipe):
    name = "control"
    summary = "the structured form with lam = 0 and no projected phase, decomposed at the end"

    @classmethod
    def resolve(cls, config, key):
        return 0.0 if key == "lam" else super().resolve(config, key)

    def notes(self) -> list[str]:
        lam = self.config.lam
        return [] if lam in (0, 1) else [f"mode 'control' trains with lam = 0 (lam={lam:g} is not used)"]


@register_recipe
class Direct(Recipe):
    name = "direct"
    summary = "the decomposed form trained from scratch (Sec. 6.4)"
    structured = True

    def build_model(self, info) -> nn.Module:
        c = self.config
        model = super().build_model(info)
        model = structurize_model(model, c.arch, struct=c.effective_struct, ratio=c.ratio)
        return to_direct(model, init=c.direct_init)


@register_recipe
class Finetune(StructuralRecipe):
    name = "finetune"
    summary = "a trained dense model structurized and projected, then projected SGD distilled from it"
    teacher_from_init = True
    # Fine-tuning a trained model projects at once and trains projected (its weights start far
    # from the structure, and SR cannot pull them there in a short budget); distills from it.
    # The projection is data-aware by default: the weight-space one starts the fine-tune at
    # chance accuracy, and choosing each layer's (c, n) from the data at equal mults starts it
    # higher still (BENCHMARKS.md, "Calibration").
    defaults = {
        **Recipe.defaults,
        "projected_fraction": 1.0,
        "distill": 0.9,
        "calibration_batches": 8,
        "calibration_structure": "search",
        "reconstruction_steps": 200,
    }

    @classmethod
    def validate(cls, config) -> None:
        super().validate(config)
        if not config.init_from:
            raise v.ArgumentError(
                "{mode}='finetune' needs {init_from}: a trained dense model (a state_dict file, or a baseline run's "
                "model.pth)"
            )

    def _dense(self, info) -> nn.Module:
        c = self.config
        model = create_model(c.arch, num_classes=info.num_classes, in_chans=info.in_chans)
        load_dense_weights(model, c.init_from, name="init_from")
        return model

    def build_model(self, info) -> nn.Module:
        c = self.config
        return structurize_model(self._dense(info), c.arch, struct=c.effective_struct, ratio=c.ratio)

    def build_teacher(self, info) -> nn.Module | None:
        return self._dense(info) if self.config.effective_distill > 0 else None

    def describe(self, run: "Run") -> str:
        batches = self.config.effective_calibration_batches
        calibration = f", calibrated on {batches} batches" if batches else ", weight-space projection"
        if batches and self.config.effective_calibration_structure == "search":
            calibration += ", structures searched"
        if batches and self.config.effective_reconstruction_steps:
            calibration += f", blocks reconstructed ({self.config.effective_reconstruction_steps} steps each)"
        return super().describe(run) + calibration

    def start(self, run: "Run") -> None:
        super().start(run)
        batches = self.config.effective_calibration_batches
        if batches and run.train_data is not None:
            search = self.config.effective_calibration_structure == "search"
            dense = self._dense(run.info).to(run.ctx.device)
            run.extra["calibration"] = calibrate_from_dense(run, dense, batches, search_structure=search)
            steps = self.config.effective_reconstruction_steps
            if steps:
                run.extra["reconstruction"] = reconstruct_from_dense(run, dense, batches, steps)
