"""The paper's training recipe (Sec. 5.1, 6.4) as a library: ``train(TrainConfig(...))``.

Modes (``TrainConfig.mode``):

* ``baseline``  -- the dense model, plain cross-entropy.
* ``sr``        -- Step 1: the structured training form with Structural Regularization (by
  default normalized per layer, ``sr="eq3"`` for the paper's ``CE + lam * Eq. 3``), the last
  5 % of the steps projected; Step 2 at the end: ``structconv.decompose`` into sum-pool +
  small convs.
* ``control``   -- the same as ``sr`` with ``lam = 0`` and no projected phase, decomposed at
  the end (the control).
* ``direct``    -- the decomposed form trained from scratch (Sec. 6.4), no regularizer.
* ``finetune``  -- load a dense checkpoint (``init_from``), structurize and project it, then
  projected SGD distilled from the dense model (weight 0.9, temperature 4).

The steps have names, in the shape of torchvision's reference scripts: :func:`prepare_output`,
:func:`load_data`, :func:`build_model`, :func:`build_optimizer`, :func:`train_one_epoch`,
:func:`evaluate_run`, :func:`finish`; :func:`train` runs them.  One process is one rank when
launched with ``torchrun`` (DDP; gloo on CPU, NCCL on GPU).  Checkpoints are atomic;
``resume`` continues bit-exactly where a killed run stopped (augmentation is seeded per sample
and epoch, the sampler skips what was already trained on, RNG/optimizer/scheduler states are
restored), and a first Ctrl-C or SIGTERM checkpoints before stopping.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from . import distributed as dist_utils
from .distributed import parse_device
from ._io import atomic_write_json, json_safe, remove_stale_temp_files
from .complexity import count_ops
from .convert import _set_submodule, decompose
from .data import DATASETS, ResumableSampler, build_datasets
from .evaluation import evaluate_structured, worst_errors
from .layers import DecomposedLayer, StructuredLayer, deorthonormalize_, orthonormalize_
from .layers.conv import _DECOMPOSED, _StructuredConvNd
from .layers.linear import DecomposedLinear, StructuredLinear
from .models import create_model, structurize_model
from .regularizer import (
    add_normalized_regularization_grad_,
    project_gradients_,
    project_weights_,
    structural_regularization,
    structure_errors,
)
from .serialization import read_checkpoint, save

__all__ = [
    "MODES", "CHECKPOINT", "RUN_FILES", "TrainConfig", "RunInterrupted", "train", "prepare_output", "load_data",
    "build_model", "build_optimizer", "train_one_epoch", "evaluate_run", "finish", "to_direct",
]  # fmt: skip

MODES = ("baseline", "sr", "control", "direct", "finetune")
SR_RECIPES = ("normalized", "eq3")
CHECKPOINT = "checkpoint.pth"
#: files a run writes into its output directory
RUN_FILES = (CHECKPOINT, "model.pth", "model_decomposed.pth", "results.json", "metrics.csv", "log.jsonl")
# Arguments that do not change what a run computes; every other one must match on --resume.
_RUN_CONTROL = {"data_path", "download", "workers", "output_dir", "resume", "overwrite", "ckpt_every", "stop_after",
                "device", "threads", "print_freq", "no_progress", "tensorboard", "quiet"}  # fmt: skip


class RunInterrupted(KeyboardInterrupt):
    """Training stopped by SIGINT / SIGTERM after writing a checkpoint (``resume`` continues it)."""


# ------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Everything a training run depends on; :meth:`validate` checks it before any work."""

    arch: str = "cifar_resnet20"
    mode: str = "sr"
    struct: str | None = None
    ratio: float | None = None
    lam: float = 1.0
    # The recipe of Step 1 (sr / finetune): "normalized" weights each layer's Eq. 3 term so it
    # beats the task off the structured subspace (regularizer.add_normalized_regularization_grad_),
    # with kappa ramped up over the first kappa_ramp of the steps, then trains the last
    # projected_fraction of the steps in the projected form; sr="eq3" with projected_fraction=0
    # is the paper's recipe (loss + lam * Eq. 3).  None: the mode's default (effective_*).
    sr: str = "normalized"
    kappa: float = 2.0
    kappa_ramp: float = 0.5
    projected_fraction: float | None = None
    init_from: str | None = None
    direct_init: str = "default"  # mode direct: see to_direct; "own" was not better in a 1-seed A/B (RESULTS.md)
    pretrained: bool = False
    # data
    dataset: str = "fashion-mnist"
    data_path: str = "data"
    download: bool = False
    image_size: int | None = None
    in_chans: int | None = None
    train_subset: int | None = None
    eval_subset: int | None = None
    workers: int = 0
    # optimisation
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_warmup_steps: int = 0
    label_smoothing: float = 0.0
    seed: int = 0
    distill: float | None = None  # weight of the distillation term (teacher: finetune's --init-from, or train(teacher=))
    distill_temperature: float = 4.0
    eval_at: tuple = ()  # extra optimizer steps to evaluate at (0: before the first step), for curves
    # run control
    output_dir: str = "runs/train"
    resume: str | None = None  # a checkpoint path, or "auto" for OUTPUT_DIR/checkpoint.pth
    overwrite: bool = False
    ckpt_every: int = 0
    stop_after: int | None = None
    device: str | None = None  # None: cuda when available, else cpu (as the command line)
    threads: int | None = None
    channels_last: bool = True
    print_freq: int = 50
    no_progress: bool = False
    tensorboard: bool = False
    quiet: bool = False

    @property
    def effective_lam(self) -> float:
        """The lambda the run uses: 0 for the control, the given one for ``sr`` / ``finetune``."""
        return 0.0 if self.mode == "control" else float(self.lam)

    @property
    def effective_projected_fraction(self) -> float:
        """Fine-tuning from a trained dense model projects at once and trains projected (the
        weights start far from the structure, and SR cannot pull them there in a short budget);
        Step 1 from scratch projects the last 5 %."""
        if self.projected_fraction is not None:
            return float(self.projected_fraction)
        return {"finetune": 1.0, "sr": 0.05}.get(self.mode, 0.0)

    @property
    def effective_distill(self) -> float:
        """Fine-tuning distills from its dense model (weight 0.9, temperature 4) by default."""
        if self.distill is not None:
            return float(self.distill)
        return 0.9 if self.mode == "finetune" else 0.0

    @property
    def effective_struct(self) -> str | None:
        """The Struct plan of a structured run (A unless a uniform ratio is given)."""
        if self.mode == "baseline":
            return None
        return self.struct or (None if self.ratio else "A")

    def validate(self) -> None:
        """One ``ValueError`` naming the first bad option and its value; no work is done before."""
        _choice(self.mode, "--mode", MODES)
        _choice(self.dataset, "--dataset", DATASETS)
        if self.struct is not None:
            _choice(str(self.struct), "--struct", ("A", "B"))
        if self.mode == "baseline" and (self.struct or self.ratio):
            raise ValueError("--mode baseline trains the dense model; drop --struct/--ratio or pick --mode sr")
        if self.struct and self.ratio:
            raise ValueError("give --struct or --ratio, not both")
        if self.effective_struct is not None:
            from .models import check_known
            from .models.plans import has_plan

            check_known(self.arch)
            if not has_plan(self.arch, self.effective_struct):
                raise ValueError(f"--arch {self.arch!r} has no Struct-{self.effective_struct} plan; use --ratio R for a "
                                 "uniform compression (or register a plan: docs/architecture.md)")  # fmt: skip
        if self.ratio is not None:
            _number(self.ratio, "--ratio", low=1.0)
        _number(self.lam, "--lam", low=0.0)
        _choice(self.sr, "--sr", SR_RECIPES)
        _choice(self.direct_init, "--direct-init", DIRECT_INITS)
        _number(self.kappa, "--kappa", low=0.0)
        _number(self.kappa_ramp, "--kappa-ramp", low=0.0, high=1.0)
        if self.projected_fraction is not None:
            _number(self.projected_fraction, "--projected-fraction", low=0.0, high=1.0)
        if self.mode == "finetune" and not self.init_from:
            raise ValueError("--mode finetune needs --init-from DENSE_CHECKPOINT (e.g. a baseline run's model.pth)")
        if self.init_from and self.mode != "finetune":
            raise ValueError("--init-from is only used by --mode finetune")
        for name in ("epochs", "batch_size", "print_freq"):
            _integer(getattr(self, name), _flag(name), low=1)
        for name in ("max_steps", "train_subset", "eval_subset", "stop_after", "threads", "image_size", "in_chans"):
            if getattr(self, name) is not None:
                _integer(getattr(self, name), _flag(name), low=1)
        for name in ("workers", "ckpt_every", "lr_warmup_steps", "seed"):
            _integer(getattr(self, name), _flag(name), low=0)
        _number(self.lr, "--lr", low=0.0, strict=True)
        _number(self.momentum, "--momentum", low=0.0, high=1.0, high_strict=True)
        _number(self.weight_decay, "--weight-decay", low=0.0)
        _number(self.label_smoothing, "--label-smoothing", low=0.0, high=1.0, high_strict=True)
        if self.distill is not None:
            _number(self.distill, "--distill", low=0.0, high=1.0)
        _number(self.distill_temperature, "--distill-temperature", low=0.0, strict=True)
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.eval_at):
            raise ValueError(f"--eval-at {self.eval_at!r} must list step numbers >= 0")
        if self.in_chans is not None and self.in_chans not in (1, 3):
            raise ValueError(f"--in-chans {self.in_chans}: images convert to 1 (grayscale) or 3 (RGB) channels")
        if self.device is not None:
            parse_device(self.device)

    def meaning(self) -> dict:
        """The options that change what the run computes (compared on resume)."""
        d = asdict(self)
        d["lam"] = self.effective_lam
        d["projected_fraction"], d["distill"] = self.effective_projected_fraction, self.effective_distill
        if self.init_from:  # the same file, named relative to the working directory or not
            d["init_from"] = str(Path(self.init_from).expanduser().resolve())
        return {k: v for k, v in d.items() if k not in _RUN_CONTROL}


def saved_meaning(args: dict) -> dict:
    """:meth:`TrainConfig.meaning` of a run recorded as ``args`` (``results.json``'s ``args``, a
    checkpoint's ``args``), JSON-normalized; keys this version does not know are dropped."""
    known = {f.name for f in fields(TrainConfig)}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in args.items() if k in known}
    if "sr" not in args:  # written before the recipe options existed: the paper's recipe
        values.update(sr="eq3", projected_fraction=0.0, direct_init="default", distill=0.0)
    return json_safe(TrainConfig(**values).meaning())


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _choice(value, flag: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{flag} {value!r}: choose one of {', '.join(choices)}")


def _integer(value, flag: str, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{flag} {value!r} must be an integer >= {low}")


def _number(value, flag: str, *, low=None, high=None, strict=False, high_strict=False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if strict else value >= low
    if ok and high is not None:
        ok = value < high if high_strict else value <= high
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if strict else '>='} {low:g}")
        if high is not None:
            bounds.append(f"{'<' if high_strict else '<='} {high:g}")
        raise ValueError(f"{flag} {value!r} must be a finite number{' ' + ' and '.join(bounds) if bounds else ''}")


# ------------------------------------------------------------------------------------------
# output directory
# ------------------------------------------------------------------------------------------
def prepare_output(config: TrainConfig, *, is_main: bool = True) -> tuple[Path, dict | None]:
    """Check the output directory before any work: it must be a writable directory, and it may
    hold an earlier run only to ``resume`` it or, with ``overwrite``, to replace it.  Removes the
    temporary files an interrupted checkpoint write left.  Returns ``(directory, checkpoint to
    resume or None)``."""
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output-dir {str(out)!r} is a file, not a directory")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"--output-dir {str(out)!r}: {str(parent)!r} is a file, not a directory")
    existing = [name for name in RUN_FILES if (out / name).exists()]
    ckpt = None
    if config.resume:
        path = out / CHECKPOINT if config.resume == "auto" else Path(config.resume)
        if not path.is_file():
            raise FileNotFoundError(f"--resume: checkpoint {str(path)!r} does not exist")
        ckpt = read_checkpoint(path)
        if "optimizer" not in ckpt or "global_step" not in ckpt:
            raise ValueError(f"--resume {str(path)!r} is a final model, not a training checkpoint; resume from "
                             f"the run's {CHECKPOINT}")  # fmt: skip
        _check_resume(config, ckpt, path)
        ckpt["_path"] = str(path)
    elif existing and not config.overwrite:
        raise ValueError(f"--output-dir {str(out)!r} already holds a run ({', '.join(existing)}); continue it with "
                         "--resume, choose a new --output-dir, or pass --overwrite to replace it")  # fmt: skip
    if is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test.", suffix=".tmp"):
                pass
        except OSError as err:
            raise OSError(f"--output-dir {str(out)!r} is not writable: {err.strerror or err}") from None
        remove_stale_temp_files(out)
        if config.overwrite and not config.resume:
            for name in existing:
                (out / name).unlink()
    return out, ckpt


def _check_resume(config: TrainConfig, ckpt: dict, path: Path) -> None:
    saved = json_safe(ckpt["config"]) if "config" in ckpt else saved_meaning(ckpt.get("args") or {})
    if saved.get("init_from"):  # checkpoints before meaning() resolved it hold the path as given
        saved["init_from"] = str(Path(saved["init_from"]).expanduser().resolve())
    now = json_safe(config.meaning())
    changed = []
    for key, value in now.items():
        if key not in saved:
            continue
        old = saved[key]
        if key == "lam" and saved.get("mode") == "control":
            old = 0.0
        if old != value and not (isinstance(old, (int, float)) and isinstance(value, (int, float)) and float(old) == float(value)):
            changed.append(f"{_flag(key)} {old!r} -> {value!r}")
    if changed:
        raise ValueError(f"--resume {str(path)!r} was trained with other settings ({'; '.join(changed)}); "
                         "resume with the original ones, or start a new --output-dir")  # fmt: skip


# ------------------------------------------------------------------------------------------
# data, model, optimizer
# ------------------------------------------------------------------------------------------
def load_data(config: TrainConfig, *, download: bool = False):
    """``(train, test, DataInfo)`` (:func:`structconv.data.build_datasets`)."""
    return build_datasets(
        config.dataset, config.data_path, download=download, image_size=config.image_size, in_chans=config.in_chans,
        train_subset=config.train_subset, eval_subset=config.eval_subset, seed=config.seed,
    )  # fmt: skip


DIRECT_INITS = ("own", "default")


@torch.no_grad()
def to_direct(model: nn.Module, *, init: str = "default") -> nn.Module:
    """Replace every structured layer by a decomposed layer (Sec. 6.4), trained through the
    orthonormal parametrization (:func:`structconv.layers.orthonormalize_`).

    ``init='default'`` draws ``nn.ConvNd``'s default init and projects it.  ``init='own'`` starts
    from the model's own initialization, projected onto the structure and scaled back to its norm
    (the weights dense or SR training start from); it was meant to close the gap of direct
    training to SR, but did not in a one-seed ResNet20 A/B (RESULTS.md), so it is opt-in.
    """
    if init not in DIRECT_INITS:
        raise ValueError(f"to_direct: init={init!r} must be one of {', '.join(DIRECT_INITS)}")
    for name, m in list(model.named_modules()):
        if isinstance(m, _StructuredConvNd):
            new = _DECOMPOSED[m._nd](m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                                     m.groups, m.bias is not None, m.padding_mode, c=m.c, n=m.n)  # fmt: skip
        elif isinstance(m, StructuredLinear):
            new = DecomposedLinear(m.in_features, m.out_features, m.bias is not None, r=m.r)
        else:
            continue
        if init == "own":
            w = m.weight
            projected = m.basis.project(w)
            norm = torch.linalg.vector_norm(projected)
            if norm > 0:
                projected *= torch.linalg.vector_norm(w) / norm
            new.weight.copy_(m.basis.coefficients(projected))
            if m.bias is not None:
                new.bias.copy_(m.bias)
        _set_submodule(model, name, new.to(device=m.weight.device, dtype=m.weight.dtype))
    return orthonormalize_(model)


def _load_dense_weights(model: nn.Module, path: str) -> None:
    ckpt = read_checkpoint(path)
    if ckpt.get("layers"):
        raise ValueError(f"--init-from {path!r} holds a structured/decomposed model; fine-tuning starts from a dense one")
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"--init-from {path!r} does not match the model: {str(err).splitlines()[0]}") from None


def build_model(config: TrainConfig, info) -> nn.Module:
    """The model the mode trains: dense, structured training form, or decomposed (direct)."""
    model = create_model(config.arch, num_classes=info.num_classes, in_chans=info.in_chans,
                         pretrained=config.pretrained)  # fmt: skip
    if config.mode == "finetune":
        _load_dense_weights(model, config.init_from)
    if config.mode == "baseline":
        return model
    model = structurize_model(model, config.arch, struct=config.effective_struct, ratio=config.ratio)
    return to_direct(model, init=config.direct_init) if config.mode == "direct" else model


def build_optimizer(config: TrainConfig, model: nn.Module, total_steps: int):
    """SGD with momentum (no weight decay on biases and norms) and a per-step cosine schedule
    after an optional linear warm-up; returns ``(optimizer, scheduler)``."""
    from torch.optim import lr_scheduler

    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, momentum=config.momentum)  # fmt: skip
    main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - config.lr_warmup_steps))
    if config.lr_warmup_steps <= 0:
        return optimizer, main
    warm = lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=config.lr_warmup_steps)
    return optimizer, lr_scheduler.SequentialLR(optimizer, [warm, main], milestones=[config.lr_warmup_steps])


# ------------------------------------------------------------------------------------------
# logging
# ------------------------------------------------------------------------------------------
class RunLog:
    """Appends step/eval records to ``log.jsonl`` and evaluation rows to ``metrics.csv`` (rank 0)."""

    FIELDS = ("epoch", "step", "lr", "train_loss", "task_loss", "reg_loss", "accuracy", "accuracy_decomposed",
              "structure_error_mean", "structure_error_max", "seconds")  # fmt: skip

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled, self.out_dir, self.writer = enabled, out_dir, None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out_dir / "tb"))
            except ImportError:
                print("tensorboard is not installed; logging to CSV/JSON only", file=sys.stderr)

    def record(self, kind: str, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.out_dir / "log.jsonl", "a") as f:
            f.write(json.dumps({"kind": kind, **row}) + "\n")
        if kind == "eval":
            path = self.out_dir / "metrics.csv"
            new = not path.exists()
            with open(path, "a", newline="") as f:
                w = csv.DictWriter(f, self.FIELDS, extrasaction="ignore")
                if new:
                    w.writeheader()
                w.writerow(row)
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                    self.writer.add_scalar(f"{kind}/{key}", value, row.get("step", 0))


class _StopOnSignal:
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

    def __enter__(self) -> "_StopOnSignal":
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


# ------------------------------------------------------------------------------------------
# the loop
# ------------------------------------------------------------------------------------------
@dataclass
class _Run:
    """What the steps of one run share."""

    config: TrainConfig
    ctx: dist_utils.DistContext
    out_dir: Path
    model: nn.Module
    ddp_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    info: object
    steps_per_epoch: int
    total_steps: int
    use_reg: bool
    log: RunLog
    eval_loader: DataLoader
    state: dict
    history: list
    say: object
    teacher: nn.Module | None = None
    projected_from: int | None = None  # the step where the projected phase starts (None: never)
    projected: bool = False

    @property
    def is_main(self) -> bool:
        return self.ctx.rank == 0


def _model_args(config: TrainConfig, info) -> dict:
    return {"arch": config.arch, "num_classes": info.num_classes, "in_chans": info.in_chans,
            "input_size": list(info.input_size)}  # fmt: skip


def save_checkpoint(run: _Run) -> None:
    """Atomically write ``checkpoint.pth`` (rank 0), then synchronize ranks."""
    if run.is_main:
        save(run.model, run.out_dir / CHECKPOINT, model_args=_model_args(run.config, run.info),
             optimizer=run.optimizer.state_dict(), lr_scheduler=run.scheduler.state_dict(), rng=torch.get_rng_state(),
             args=asdict(run.config), config=run.config.meaning(), history=run.history, **run.state)  # fmt: skip
    dist_utils.barrier(run.ctx)


def evaluate_run(run: _Run) -> None:
    """Accuracy before and after decomposition, logged and appended to the history (rank 0)."""
    if run.is_main:
        metrics = evaluate_structured(run.model, run.eval_loader, run.ctx.device, channels_last=run.config.channels_last)
        errors = metrics.pop("structure_errors", None)
        s = run.state
        row = {"epoch": s["epoch"] + s["step_in_epoch"] / run.steps_per_epoch, "step": s["global_step"],
               "seconds": s["train_seconds"], **metrics}  # fmt: skip
        run.history.append(row)
        run.log.record("eval", row)
        extra = ""
        if errors:
            extra = (f", decomposed {metrics['accuracy_decomposed']:.2f}%, structure error mean "
                     f"{metrics['structure_error_mean']:.2e} max {metrics['structure_error_max']:.2e}")  # fmt: skip
        run.say(f"eval @ step {s['global_step']}: accuracy {metrics['accuracy']:.2f}%{extra}")
    dist_utils.barrier(run.ctx)


def train_one_epoch(run: _Run, train_ds, sampler, stop: _StopOnSignal, progress=None) -> str:
    """Train from the current position to the end of the epoch, the step budget, ``stop_after``
    or a stop signal; evaluates and checkpoints on the way.  Returns why it returned:
    ``"epoch"``, ``"finished"``, ``"stopped"`` (stop_after) or ``"signal"``."""
    config, state = run.config, run.state
    epoch = state["epoch"]
    train_ds.set_epoch(epoch)
    sampler.set_epoch(epoch)
    sampler.start_index = state["step_in_epoch"] * config.batch_size
    loader = DataLoader(train_ds, batch_size=config.batch_size, sampler=sampler, num_workers=config.workers,
                        drop_last=True, persistent_workers=False)  # fmt: skip
    lam = config.effective_lam
    tic = time.perf_counter()
    for images, targets in loader:
        images, targets = images.to(run.ctx.device), targets.to(run.ctx.device)
        if config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if run.projected_from is not None and not run.projected and state["global_step"] >= run.projected_from:
            project_weights_(run.model, run.optimizer)  # also on resume: idempotent on projected weights
            run.projected = True
        run.ddp_model.train()
        logits = run.ddp_model(images)
        task = F.cross_entropy(logits, targets, label_smoothing=config.label_smoothing)
        loss = task
        if run.teacher is not None:
            d = config.effective_distill
            loss = (1 - d) * task + d * _distillation(logits, images, run.teacher, config)
        eq3 = run.use_reg and config.sr == "eq3" and not run.projected
        reg = structural_regularization(run.model) if eq3 else task.new_zeros(())
        if eq3:
            loss = loss + lam * reg
        if not torch.isfinite(loss):
            raise ValueError(f"loss became {loss.item()} at step {state['global_step']}; lower --lr or --lam")
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if run.projected:
            project_gradients_(run.model)
        elif run.use_reg and config.sr == "normalized":
            ramp = min(1.0, state["global_step"] / (config.kappa_ramp * run.total_steps)) if config.kappa_ramp else 1.0
            worst = add_normalized_regularization_grad_(run.model, lam=lam, kappa=config.kappa * ramp)
            reg = task.new_tensor(worst)  # logged: the largest structure error before this step
        run.optimizer.step()
        run.scheduler.step()
        state["global_step"] += 1
        state["step_in_epoch"] += 1
        state["steps_this_run"] += 1
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{task.item():.3f}", reg=f"{reg.item():.3f}", refresh=False)
        if state["global_step"] % config.print_freq == 0:
            run.log.record("train", {"epoch": epoch, "step": state["global_step"], "lr": run.optimizer.param_groups[0]["lr"],
                                     "train_loss": loss.item(), "task_loss": task.item(), "reg_loss": reg.item()})  # fmt: skip
        epoch_done = state["step_in_epoch"] >= run.steps_per_epoch
        finished = state["global_step"] >= run.total_steps
        if state["global_step"] in config.eval_at and not (epoch_done or finished):
            state["train_seconds"] += time.perf_counter() - tic
            evaluate_run(run)
            tic = time.perf_counter()
        stop_after = bool(config.stop_after) and state["steps_this_run"] >= config.stop_after
        periodic = bool(config.ckpt_every) and state["global_step"] % config.ckpt_every == 0
        if epoch_done or finished or periodic or stop_after or stop.requested:
            if run.projected:
                project_weights_(run.model)  # float drift off the subspace, removed where the run is saved
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


def _distillation(logits, images, teacher: nn.Module, config: TrainConfig):
    """Hinton et al.'s distillation term: ``T^2 KL(softmax(teacher / T) || softmax(student / T))``."""
    with torch.no_grad():
        target = teacher(images)
    t = config.distill_temperature
    return F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(target / t, 1), log_target=True,
                    reduction="batchmean") * (t * t)  # fmt: skip


def finish(run: _Run) -> dict:
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
        save(deployed, run.out_dir / "model_decomposed.pth", model_args=model_args, metrics=last, args=args,
             structure_errors=errors)  # fmt: skip
    ops = count_ops(deployed, (1, *info.input_size))
    is_decomposed = structured or any(isinstance(m, DecomposedLayer) for m in model.modules())
    acc = last.get("accuracy")
    results = {
        "mode": config.mode, "arch": config.arch, "struct": config.effective_struct, "ratio": config.ratio,
        "lam": config.effective_lam, "dataset": info.name, "input_size": list(info.input_size),
        "steps": state["global_step"], "epochs_completed": state["global_step"] / run.steps_per_epoch,
        "accuracy_before_decomposition": acc,
        "accuracy_after_decomposition": last.get("accuracy_decomposed", acc if is_decomposed else None),
        "structure_error_mean": last.get("structure_error_mean"), "structure_error_max": last.get("structure_error_max"),
        "structure_errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])) if errors else None,
        "adds": ops.adds, "mults": ops.mults, "params": ops.params, "train_seconds": state["train_seconds"],
        "world_size": run.ctx.world_size, "history": run.history, "args": args,
    }  # fmt: skip
    atomic_write_json(results, run.out_dir / "results.json", indent=2)
    if not config.quiet:
        print()
    print(format_report(results), flush=True)
    return results


def format_report(results: dict) -> str:
    """The table ``structconv train`` prints at the end (with the worst structure errors)."""

    def pct(v):
        return "-" if v is None else f"{v:.2f}"

    what = results["arch"] + (f" Struct-{results['struct']}" if results.get("struct") else "")
    what += f" ratio {results['ratio']:g}" if results.get("ratio") else ""
    rows = [
        ("mode", results["mode"]), ("arch", what),
        ("lambda", f"{results['lam']:g}" if results["mode"] in ("sr", "control", "finetune") else "-"),
        ("steps / epochs", f"{results['steps']} / {results['epochs_completed']:.2f}"),
        ("accuracy before decomposition (%)", pct(results["accuracy_before_decomposition"])),
        ("accuracy after decomposition (%)", pct(results["accuracy_after_decomposition"])),
        ("mean structure error", "-" if results.get("structure_error_mean") is None else f"{results['structure_error_mean']:.2e}"),
        ("adds (deployed, per image)", f"{results['adds']:,}"), ("mults (deployed, per image)", f"{results['mults']:,}"),
        ("params (deployed)", f"{results['params']:,}"), ("train time (s)", f"{results['train_seconds']:.0f}"),
    ]  # fmt: skip
    if results.get("structure_errors"):
        worst = worst_errors(results["structure_errors"], 3)
        rows.append(("largest structure errors", ", ".join(f"{n} {v:.1e}" for n, v in worst)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def train(config: TrainConfig, *, model: nn.Module | None = None, teacher: nn.Module | None = None) -> dict | None:
    """Run ``config``: returns the results (rank 0; ``None`` on other ranks and when the run
    stopped early by ``stop_after``).  Raises :class:`RunInterrupted` after checkpointing when a
    SIGINT/SIGTERM arrives, ``ValueError`` / ``OSError`` for bad options and unusable paths.

    ``model`` trains a model built by the caller (a pruned or factorized one, say) instead of
    ``config.arch``; to resume it, pass a model of the same structure again.  ``teacher`` (in
    eval mode, frozen) adds ``config.distill`` times the distillation loss to the task loss.
    """
    config.validate()
    if config.mode == "control" and config.lam not in (0, 0.0, 1.0) and not config.quiet:
        print(f"note: --mode control trains with lambda = 0 (--lam {config.lam:g} is not used)", file=sys.stderr)
    ctx = dist_utils.init_distributed(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        return _train(config, ctx, model, teacher)
    finally:
        dist_utils.cleanup()


def _train(config: TrainConfig, ctx, model: nn.Module | None, teacher: nn.Module | None) -> dict | None:
    if config.threads:
        torch.set_num_threads(config.threads)
    elif ctx.world_size > 1 and ctx.device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.local_world_size))
    out_dir, ckpt = prepare_output(config, is_main=ctx.rank == 0)
    torch.manual_seed(config.seed)
    train_ds, test_ds, info = load_data(config, download=config.download and ctx.rank == 0)
    if teacher is not None and not config.effective_distill > 0:
        raise ValueError("a teacher is given but --distill is 0; set the weight of the distillation term")
    if teacher is None and config.effective_distill > 0:
        if config.mode != "finetune":
            raise ValueError("--distill needs a teacher: --mode finetune distills from its --init-from model")
        teacher = create_model(config.arch, num_classes=info.num_classes, in_chans=info.in_chans)
        _load_dense_weights(teacher, config.init_from)
    model = (build_model(config, info) if model is None else model).to(ctx.device)
    if teacher is not None:
        teacher = teacher.to(ctx.device).eval().requires_grad_(False)
        if config.channels_last:
            teacher = teacher.to(memory_format=torch.channels_last)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    structured = any(isinstance(m, StructuredLayer) for m in model.modules())
    use_reg = structured and config.mode in ("sr", "finetune") and config.effective_lam > 0
    sampler = ResumableSampler(train_ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=config.seed,
                               drop_last=True)  # fmt: skip
    steps_per_epoch = len(sampler) // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"--batch-size {config.batch_size} is larger than the {len(sampler)} training images per process")
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    optimizer, scheduler = build_optimizer(config, model, total_steps)
    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "train_seconds": 0.0}
    history: list[dict] = []
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as err:
            raise ValueError(f"--resume {ckpt['_path']!r} does not match this model: {str(err).splitlines()[0]}") from None
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["lr_scheduler"])
        torch.set_rng_state(ckpt["rng"])
        state = {k: ckpt[k] for k in state}
        history = list(ckpt.get("history", []))
    state["steps_this_run"] = 0
    projected_from = None
    fraction = config.effective_projected_fraction
    if use_reg and fraction > 0:
        projected_from = total_steps - max(1, round(fraction * total_steps))
    is_main = ctx.rank == 0
    say = (lambda *a: print(*a, flush=True)) if (is_main and not config.quiet) else (lambda *a: None)
    eval_loader = DataLoader(test_ds, batch_size=max(256, config.batch_size), shuffle=False, num_workers=config.workers)
    run = _Run(config, ctx, out_dir, model, dist_utils.wrap(model, ctx), optimizer, scheduler, info, steps_per_epoch,
               total_steps, use_reg, RunLog(out_dir, is_main, config.tensorboard), eval_loader, state, history, say,
               teacher, projected_from)  # fmt: skip
    if ckpt is None:
        lam = f", lam={config.effective_lam:g}, {config.sr} SR" if use_reg else ""
        if projected_from is not None:
            lam += f", projected from step {projected_from}"
        say(f"training {config.arch} ({config.mode}{lam}) on {info.name} {'x'.join(map(str, info.input_size))}: "
            f"{total_steps} steps of {config.batch_size}x{ctx.world_size} images")  # fmt: skip
    else:
        say(f"resumed from {ckpt['_path']} at step {state['global_step']} / {total_steps}")
    progress = None
    if is_main and not config.no_progress and not config.quiet:
        from tqdm.auto import tqdm

        progress = tqdm(total=total_steps, initial=state["global_step"], desc="train", unit="step", dynamic_ncols=True)
    if 0 in config.eval_at and state["global_step"] == 0:
        evaluate_run(run)  # where training starts from (e.g. right after projection or pruning)
    why = "epoch"
    try:
        with _StopOnSignal(ctx.world_size == 1) as stop:
            while state["global_step"] < total_steps and why == "epoch":
                why = train_one_epoch(run, train_ds, sampler, stop, progress)
    finally:
        if progress is not None:
            progress.close()
    if why == "signal":
        raise RunInterrupted(f"stopped by signal {signal.Signals(stop.requested).name} at step {state['global_step']} "
                             f"/ {total_steps}; checkpoint saved in {str(out_dir / CHECKPOINT)!r}, continue with "
                             "--resume")  # fmt: skip
    if why == "stopped":
        say(f"stopped after {state['steps_this_run']} steps (--stop-after); continue with --resume")
        return None
    results = finish(run) if is_main else None
    dist_utils.barrier(ctx)
    return results


def config_fields() -> list[str]:
    """The names of :class:`TrainConfig`'s options (what the command line sets)."""
    return [f.name for f in fields(TrainConfig)]
