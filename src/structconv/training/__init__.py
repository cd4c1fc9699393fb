"""Training as a library: ``train(TrainConfig(...))`` runs one mode's recipe.

One concern per module: :mod:`.config` (the options and the run's fingerprint),
:mod:`.rundir` (the output directory, resume and the settings check), :mod:`.recipes` (the
registered modes), :mod:`.loop` (the steps), :mod:`.report` (the log and the final table).
"""

from .config import RUN_CONTROL, TrainConfig, config_fields, saved_meaning
from .loop import (
    Run,
    RunInterrupted,
    build_optimizer,
    evaluate_run,
    finish,
    load_data,
    save_checkpoint,
    train,
    train_one_epoch,
    training_step,
)
from .recipes import (
    Recipe,
    StructuralRecipe,
    distillation_loss,
    get_recipe,
    recipe_names,
    register_recipe,
    unregister_recipe,
)
from .report import RunLog, format_report
from .rundir import CHECKPOINT, RUN_FILES, check_resume, format_diff, prepare_output, settings_diff

__all__ = [
    "TrainConfig",
    "train",
    "RunInterrupted",
    "Recipe",
    "StructuralRecipe",
    "register_recipe",
    "unregister_recipe",
    "get_recipe",
    "recipe_names",
    "distillation_loss",
    "Run",
    "load_data",
    "build_optimizer",
    "train_one_epoch",
    "training_step",
    "evaluate_run",
    "save_checkpoint",
    "finish",
    "RunLog",
    "format_report",
    "CHECKPOINT",
    "RUN_FILES",
    "RUN_CONTROL",
    "prepare_output",
    "check_resume",
    "settings_diff",
    "format_diff",
    "saved_meaning",
    "config_fields",
]
