"""The training loop: ``train(TrainConfig(...))``.

The steps have names, in the shape of torchvision's reference scripts: :func:`load_data`,
:func:`build_optimizer`, :func:`train_one_epoch` (which calls :func:`training_step`),
:func:`evaluate_run`, :func:`save_checkpoint`, :func:`finish`; :func:`train` runs them, and asks
the run's :class:`~structconv.training.recipes.Recipe` wherever the modes differ.

One process is one rank when launched with ``torchrun`` (DDP; gloo on CPU, NCCL on GPU).
Checkpoints are atomic; ``resume`` continues bit-exactly where a killed run stopped
(augmentation is seeded per sample and epoch, the sampler skips what was already trained on,
RNG/optimizer/scheduler states are restored), and a first Ctrl-C or SIGTERM checkpoints before
stopping.
"""

from __future__ import annotations

import copy
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import distributed as dist_utils
from .. import validation as v
from .._io import atomic_write_json
from ..basis import StructuredBasis
from ..complexity import count_ops
from ..convert import StructureSpec, decompose, restructure_
from ..data import ResumableSampler, build_datasets
from ..evaluation import evaluate_structured
from ..layers import DecomposedLayer, StructuredLayer, deorthonormalize_
from ..regularizer import structure_errors
from ..serialization import save
from .config import TrainConfig
from .recipes import Recipe
from .report import RunLog, format_report
from .rundir import CHECKPOINT, prepare_output

__all__ = [
    "RunInterrupted",
    "Run",
    "train",
    "load_data",
    "build_optimizer",
    "train_one_epoch",
    "training_step",
    "evaluate_run",
    "save_checkpoint",
    "finish",
]


class RunInterrupted(v.Message, KeyboardInterrupt):
    """Training stopped by SIGINT / SIGTERM after writing a checkpoint (``resume`` continues it)."""

    def __init__(self, template: str, /, **literals) -> None:
        super().__init__(self._set_message(template, None, literals))


class StopOnSignal:
    """While active (main thread, single process), the first SIGINT/SIGTERM only sets
    ``requested`` so the loop can checkpoint at the next step boundary; a second one
    interrupts at once."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested: int | None = None
        self._old: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signum

    def __enter__(self) -> "StopOnSignal":
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


@dataclass
class Run:
    """What the steps of one run share (built with keywords by :func:`train`)."""

    config: TrainConfig
    recipe: Recipe
    ctx: dist_utils.DistContext
    out_dir: Path
    model: nn.Module
    ddp_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    info: object
    steps_per_epoch: int
    total_steps: int
    log: RunLog
    eval_loader: DataLoader
    state: dict
    history: list = field(default_factory=list)
    teacher: nn.Module | None = None
    say: object = print
    extra: dict = field(default_factory=dict)  # what recipes add to results.json (e.g. a calibration report)
    train_data: object = None  # the training dataset (what a recipe calibrates on)

    @property
    def is_main(self) -> bool:
        return self.ctx.rank == 0


# ------------------------------------------------------------------------------------------
# data and optimizer
# ------------------------------------------------------------------------------------------
def load_data(config: TrainConfig, *, download: bool = False):
    """``(train, test, DataInfo)`` (:func:`structconv.data.build_datasets`)."""
    return build_datasets(
        config.dataset,
        config.data_path,
        download=download,
        image_size=config.image_size,
        in_chans=config.in_chans,
        train_subset=config.train_subset,
        eval_subset=config.eval_subset,
        seed=config.seed,
    )


def build_optimizer(config: TrainConfig, model: nn.Module, total_steps: int):
    """SGD with momentum (no weight decay on biases and norms) and a per-step cosine schedule
    after an optional linear warm-up; returns ``(optimizer, scheduler)``."""
    from torch.optim import lr_scheduler

    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - config.lr_warmup_steps))
    if config.lr_warmup_steps <= 0:
        return optimizer, main
    warm = lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=config.lr_warmup_steps)
    return optimizer, lr_scheduler.SequentialLR(optimizer, [warm, main], milestones=[config.lr_warmup_steps])


def _model_args(config: TrainConfig, info) -> dict:
    return {
        "arch": config.arch,
        "num_classes": info.num_classes,
        "in_chans": info.in_chans,
        "input_size": list(info.input_size),
    }


# ------------------------------------------------------------------------------------------
# the steps
# ------------------------------------------------------------------------------------------
def save_checkpoint(run: Run) -> None:
    """Atomically write ``checkpoint.pth`` (rank 0), then synchronize ranks."""
    if run.is_main:
        save(
            run.model,
            run.out_dir / CHECKPOINT,
            model_args=_model_args(run.config, run.info),
            optimizer=run.optimizer.state_dict(),
            lr_scheduler=run.scheduler.state_dict(),
            rng=torch.get_rng_state(),
            args=asdict(run.config),
            config=run.config.meaning(),
            history=run.history,
            extra=run.extra,
            **run.state,
        )
    dist_utils.barrier(run.ctx)


def evaluate_run(run: Run) -> None:
    """Accuracy before and after decomposition, logged and appended to the history (rank 0)."""
    if run.is_main:
        metrics = evaluate_structured(
            run.model, run.eval_loader, run.ctx.device, channels_last=run.config.channels_last
        )
        errors = metrics.pop("structure_errors", None)
        s = run.state
        row = {
            "epoch": s["epoch"] + s["step_in_epoch"] / run.steps_per_epoch,
            "step": s["global_step"],
            "seconds": s["train_seconds"],
            **metrics,
        }
        run.history.append(row)
        run.log.record("eval", row)
        extra = ""
        if errors:
            extra = (
                f", decomposed {metrics['accuracy_decomposed']:.2f}%, structure error mean "
                f"{metrics['structure_error_mean']:.2e} max {metrics['structure_error_max']:.2e}"
            )
        run.say(f"eval @ step {s['global_step']}: accuracy {metrics['accuracy']:.2f}%{extra}")
    dist_utils.barrier(run.ctx)


def training_step(
    run: Run, images: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimizer step of ``run``'s recipe on a batch; returns ``(loss, task loss, regularizer)``."""
    recipe = run.recipe
    recipe.before_step(run)
    run.ddp_model.train()
    logits = run.ddp_model(images)
    loss, task, reg = recipe.loss(run, logits, images, targets)
    if not torch.isfinite(loss):
        raise v.ArgumentError(
            "loss became {value} at step {step}; lower {lr} or {lam}", value=loss.item(), step=run.state["global_step"]
        )
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    reg = recipe.after_backward(run, reg)
    run.optimizer.step()
    run.scheduler.step()
    return loss, task, reg


def train_one_epoch(run: Run, train_ds, sampler, stop: StopOnSignal, progress=None) -> str:
    """Train from the current position to the end of the epoch, the step budget, ``stop_after``
    or a stop signal; evaluates and checkpoints on the way.  Returns why it returned:
    ``"epoch"``, ``"finished"``, ``"stopped"`` (stop_after) or ``"signal"``."""
    config, state = run.config, run.state
    epoch = state["epoch"]
    train_ds.set_epoch(epoch)
    sampler.set_epoch(epoch)
    sampler.start_index = state["step_in_epoch"] * config.batch_size
    loader = DataLoader(
        train_ds,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        drop_last=True,
        persistent_workers=False,
    )
    tic = time.perf_counter()
    for images, targets in loader:
        images, targets = images.to(run.ctx.device), targets.to(run.ctx.device)
        if config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        loss, task, reg = training_step(run, images, targets)
        state["global_step"] += 1
        state["step_in_epoch"] += 1
        state["steps_this_run"] += 1
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{task.item():.3f}", reg=f"{reg.item():.3f}", refresh=False)
        if state["global_step"] % config.print_freq == 0:
            lr = run.optimizer.param_groups[0]["lr"]
            row = {
                "epoch": epoch,
                "step": state["global_step"],
                "lr": lr,
                "train_loss": loss.item(),
                "task_loss": task.item(),
                "reg_loss": reg.item(),
            }
            run.log.record("train", row)
        epoch_done = state["step_in_epoch"] >= run.steps_per_epoch
        finished = state["global_step"] >= run.total_steps
        if state["global_step"] in config.eval_at and not (epoch_done or finished):
            state["train_seconds"] += time.perf_counter() - tic
            evaluate_run(run)
            tic = time.perf_counter()
        stop_after = bool(config.stop_after) and state["steps_this_run"] >= config.stop_after
        periodic = bool(config.ckpt_every) and state["global_step"] % config.ckpt_every == 0
        if epoch_done or finished or periodic or stop_after or stop.requested:
            run.recipe.before_checkpoint(run)
            state["train_seconds"] += time.perf_counter() - tic
            if epoch_done:
                state["epoch"] += 1
                state["step_in_epoch"] = 0
            if epoch_done or finished:
                evaluate_run(run)
            save_checkpoint(run)
            tic = time.perf_counter()
            if stop.requested and not finished:
                return "signal"
            if stop_after and not finished:
                return "stopped"
        if finished:
            return "finished"
        if epoch_done:
            return "epoch"
    return "epoch"


def finish(run: Run) -> dict:
    """Step 2 (decompose), final checkpoints, ``results.json`` and the report table (rank 0)."""
    config, info, state = run.config, run.info, run.state
    # deployment stores plain alpha (direct training trained it through a parametrization)
    model = deorthonormalize_(copy.deepcopy(run.model).to("cpu", memory_format=torch.contiguous_format).eval())
    last = run.history[-1] if run.history else {}
    structured = any(isinstance(m, StructuredLayer) for m in model.modules())
    errors = None
    deployed = model
    if structured:
        errors = structure_errors(model)
        deployed = decompose(model, on_unstructured="ignore")  # the errors are reported below
    model_args = _model_args(config, info)
    args = asdict(config)
    save(model, run.out_dir / "model.pth", model_args=model_args, metrics=last, args=args)
    if structured:
        save(
            deployed,
            run.out_dir / "model_decomposed.pth",
            model_args=model_args,
            metrics=last,
            args=args,
            structure_errors=errors,
        )
    ops = count_ops(deployed, (1, *info.input_size))
    is_decomposed = structured or any(isinstance(m, DecomposedLayer) for m in model.modules())
    acc = last.get("accuracy")
    results = {
        "mode": config.mode,
        "arch": config.arch,
        "struct": config.effective_struct,
        "ratio": config.ratio,
        "lam": config.effective_lam,
        "dataset": info.name,
        "input_size": list(info.input_size),
        "steps": state["global_step"],
        "epochs_completed": state["global_step"] / run.steps_per_epoch,
        "accuracy_before_decomposition": acc,
        "accuracy_after_decomposition": last.get("accuracy_decomposed", acc if is_decomposed else None),
        "structure_error_mean": last.get("structure_error_mean"),
        "structure_error_max": last.get("structure_error_max"),
        "structure_errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])) if errors else None,
        "adds": ops.adds,
        "mults": ops.mults,
        "params": ops.params,
        "train_seconds": state["train_seconds"],
        "world_size": run.ctx.world_size,
        "history": run.history,
        "args": args,
        **run.extra,
    }
    atomic_write_json(results, run.out_dir / "results.json", indent=2)
    if not config.quiet:
        print()
    print(format_report(results), flush=True)
    return results


# ------------------------------------------------------------------------------------------
# train
# ------------------------------------------------------------------------------------------
def train(config: TrainConfig, *, model: nn.Module | None = None, teacher: nn.Module | None = None) -> dict | None:
    """Run ``config``: returns the results (rank 0; ``None`` on other ranks and when the run
    stopped early by ``stop_after``).  Raises :class:`RunInterrupted` after checkpointing when a
    SIGINT/SIGTERM arrives, ``ValueError`` / ``OSError`` for bad options and unusable paths.

    ``model`` trains a model built by the caller (a pruned or factorized one, say) instead of
    the recipe's; to resume it, pass a model of the same structure again.  ``teacher`` (in eval
    mode, frozen) adds ``config.distill`` times the distillation loss to the task loss.
    """
    config.validate()
    recipe = config.recipe(config)
    if not config.quiet:
        for note in recipe.notes():
            print(f"note: {note}", file=sys.stderr)
    ctx = dist_utils.init_distributed(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        return _train(config, recipe, ctx, model, teacher)
    finally:
        dist_utils.cleanup()


def _structure_of(model: nn.Module, name: str) -> StructureSpec | None:
    """The ``(c, n)`` of the structured layer ``name`` of ``model`` (None: no such layer)."""
    try:
        basis = getattr(model.get_submodule(name), "basis", None)
    except AttributeError:
        return None
    return StructureSpec(basis.c, tuple(basis.n)) if isinstance(basis, StructuredBasis) else None


def _restore(run: Run, ckpt: dict) -> None:
    # a run whose structures were chosen from data (calibrate_(search_structure=True)) resumes
    # with them: the checkpoint records every layer's (c, n), the rebuilt model has the preset's
    saved = {
        name: StructureSpec(spec["c"], tuple(spec["n"]))
        for name, spec in (ckpt.get("layers") or {}).items()
        if spec.get("kind") == "structured" and spec.get("form") == "structured"
    }
    changed = {name: spec for name, spec in saved.items() if _structure_of(run.model, name) not in (None, spec)}
    if changed:
        restructure_(run.model, changed)
    try:
        run.model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise v.ArgumentError(
            "{resume}={path} does not match this model: {why}", path=repr(ckpt["_path"]), why=str(err).splitlines()[0]
        ) from None
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["lr_scheduler"])
    torch.set_rng_state(ckpt["rng"])
    run.state.update({k: ckpt[k] for k in ("epoch", "step_in_epoch", "global_step", "train_seconds")})
    run.history[:] = list(ckpt.get("history", []))
    run.extra.update(ckpt.get("extra") or {})


def _train(config: TrainConfig, recipe: Recipe, ctx, model: nn.Module | None, teacher: nn.Module | None) -> dict | None:
    if config.threads:
        torch.set_num_threads(config.threads)
    elif ctx.world_size > 1 and ctx.device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.local_world_size))
    out_dir, ckpt = prepare_output(config, is_main=ctx.rank == 0)
    torch.manual_seed(config.seed)
    train_ds, test_ds, info = load_data(config, download=config.download and ctx.rank == 0)
    if teacher is not None and not config.effective_distill > 0:
        raise v.ArgumentError("a teacher is given but {distill} is 0; set the weight of the distillation term")
    if teacher is None and config.effective_distill > 0:
        teacher = recipe.build_teacher(info)
        if teacher is None:
            raise v.ArgumentError(
                "{distill} needs a teacher: pass train(teacher=...), or use a recipe that has one ({mode}='finetune')"
            )
    model = (recipe.build_model(info) if model is None else model).to(ctx.device)
    if teacher is not None:
        teacher = teacher.to(ctx.device).eval().requires_grad_(False)
        if config.channels_last:
            teacher = teacher.to(memory_format=torch.channels_last)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    sampler = ResumableSampler(
        train_ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=config.seed, drop_last=True
    )
    steps_per_epoch = len(sampler) // config.batch_size
    if steps_per_epoch < 1:
        raise v.ArgumentError(
            "{batch_size}={value} is larger than the {n} training images per process",
            value=config.batch_size,
            n=len(sampler),
        )
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    optimizer, scheduler = build_optimizer(config, model, total_steps)
    is_main = ctx.rank == 0
    say = (lambda *a: print(*a, flush=True)) if (is_main and not config.quiet) else (lambda *a: None)
    eval_loader = DataLoader(test_ds, batch_size=max(256, config.batch_size), shuffle=False, num_workers=config.workers)
    run = Run(
        config=config,
        recipe=recipe,
        ctx=ctx,
        out_dir=out_dir,
        model=model,
        ddp_model=dist_utils.wrap(model, ctx),
        optimizer=optimizer,
        scheduler=scheduler,
        info=info,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        log=RunLog(out_dir, is_main, config.tensorboard),
        eval_loader=eval_loader,
        state={"epoch": 0, "step_in_epoch": 0, "global_step": 0, "train_seconds": 0.0},
        teacher=teacher,
        say=say,
        train_data=train_ds,
    )
    if ckpt is not None:
        _restore(run, ckpt)
    run.state["steps_this_run"] = 0
    recipe.prepare(run)
    if ckpt is None:
        say(
            f"training {config.arch} ({config.mode}{recipe.describe(run)}) on {info.name} "
            f"{'x'.join(map(str, info.input_size))}: {total_steps} steps of {config.batch_size}x{ctx.world_size} images"
        )
        recipe.start(run)
    else:
        say(f"resumed from {ckpt['_path']} at step {run.state['global_step']} / {total_steps}")
    progress = None
    if is_main and not config.no_progress and not config.quiet:
        from tqdm.auto import tqdm

        progress = tqdm(
            total=total_steps, initial=run.state["global_step"], desc="train", unit="step", dynamic_ncols=True
        )
    if 0 in config.eval_at and run.state["global_step"] == 0:
        evaluate_run(run)  # where training starts from (e.g. right after projection or pruning)
    why = "epoch"
    try:
        with StopOnSignal(ctx.world_size == 1) as stop:
            while run.state["global_step"] < total_steps and why == "epoch":
                why = train_one_epoch(run, train_ds, sampler, stop, progress)
    finally:
        if progress is not None:
            progress.close()
    if why == "signal":
        raise RunInterrupted(
            "stopped by signal {signal} at step {step} / {total}; checkpoint saved in {path}, continue with {resume}",
            signal=signal.Signals(stop.requested).name,
            step=run.state["global_step"],
            total=total_steps,
            path=repr(str(out_dir / CHECKPOINT)),
        )
    if why == "stopped":
        say(f"stopped after {run.state['steps_this_run']} steps as asked; resume the run to continue it")
        return None
    results = finish(run) if is_main else None
    dist_utils.barrier(ctx)
    return results
