"""``structconv train``: the paper's training recipe (Sec. 5.1, 6.4), torchvision-references style.

Modes (``--mode``):

* ``baseline``  -- the dense model, plain cross-entropy.
* ``sr``        -- Step 1: the structured training form with ``CE + lam * structural_regularization``
  (Eq. 3); Step 2 at the end: ``structconv.decompose`` into sum-pool + small convs.
* ``control``   -- the same as ``sr`` with ``lam = 0``, decomposed at the end (the control).
* ``direct``    -- the decomposed form trained from scratch (Sec. 6.4), no regularizer.
* ``finetune``  -- load a dense checkpoint (``--init-from``), structurize it and train as ``sr``.

Every evaluation reports the accuracy of the model as trained and, for structured models, the
accuracy of its decomposed form and the mean structure error.  One process is one rank when
launched with ``torchrun`` (DDP; gloo on CPU, NCCL on GPU).  Checkpoints are atomic; ``--resume``
continues bit-exactly where a killed run stopped (augmentation is seeded per sample and epoch,
the sampler skips what was already trained on, RNG/optimizer/scheduler states are restored).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed as dist_utils

__all__ = ["MODES", "get_args_parser", "main", "build_model", "to_direct", "evaluate", "evaluate_structured"]

MODES = ("baseline", "sr", "control", "direct", "finetune")
CHECKPOINT = "checkpoint.pth"


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train baseline / structured models (Sec. 5.1)", add_help=add_help)
    p.add_argument("--arch", default="cifar_resnet20", help="model name (structconv, torchvision or timm)")
    p.add_argument("--mode", default="sr", choices=MODES, help="training mode (see `structconv train --help`)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--struct", choices=["A", "B"], help="the paper's Struct-A/B plan (default A unless --ratio)")
    g.add_argument("--ratio", type=float, help="uniform compression ratio instead of a Struct plan")
    p.add_argument("--lam", type=float, default=1.0, help="lambda of the Structural Regularization loss (Eq. 3)")
    p.add_argument("--init-from", help="dense checkpoint to fine-tune (mode finetune)")
    p.add_argument("--pretrained", action="store_true", help="start from torchvision/timm weights (needs network)")
    # data
    p.add_argument("--dataset", default="fashion-mnist", help="cifar10, cifar100, fashion-mnist, imagenet, folder")
    p.add_argument("--data-path", default="data", help="dataset root in torchvision's on-disk format")
    p.add_argument("--download", action="store_true", help="let torchvision download the dataset if missing")
    p.add_argument("--image-size", type=int, help="resize images (default: the dataset's own size)")
    p.add_argument("--in-chans", type=int, help="convert images to this many channels (default: the dataset's)")
    p.add_argument("--train-subset", type=int, help="train on the first N training images only")
    p.add_argument("--eval-subset", type=int, help="evaluate on the first N test images only")
    p.add_argument("-j", "--workers", type=int, default=0, help="data loading workers per process")
    # optimisation
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps in total (budget)")
    p.add_argument("-b", "--batch-size", type=int, default=128, help="images per process per step")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=1e-4)
    p.add_argument("--lr-warmup-steps", type=int, default=0)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    # run control
    p.add_argument("--output-dir", default="runs/train", help="checkpoints, logs and results.json go here")
    p.add_argument("--resume", nargs="?", const="auto", help="resume from a checkpoint (default: OUTPUT_DIR/checkpoint.pth)")
    p.add_argument("--ckpt-every", type=int, default=0, help="also checkpoint every N steps (0: at epoch ends only)")
    p.add_argument("--stop-after", type=int, help="checkpoint and exit after N steps of this run (simulates a kill)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads per process")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels_last memory format (much faster convolutions on CPU)")  # fmt: skip
    p.add_argument("--print-freq", type=int, default=50, help="log training loss every N steps")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard (if installed)")
    p.add_argument("--quiet", action="store_true", help="print only the final report")
    return p


# ------------------------------------------------------------------------------------------
# model
# ------------------------------------------------------------------------------------------
def to_direct(model: nn.Module) -> nn.Module:
    """Replace every structured layer by a freshly initialised decomposed layer (Sec. 6.4),
    trained through the orthonormal parametrization (:func:`structconv.layers.orthonormalize_`)."""
    from .convert import _set_submodule
    from .layers import (DecomposedConv1d, DecomposedConv2d, DecomposedConv3d, DecomposedLinear, StructuredConv1d,
                         StructuredConv2d, StructuredConv3d, StructuredLinear)  # fmt: skip

    convs = {StructuredConv1d: DecomposedConv1d, StructuredConv2d: DecomposedConv2d, StructuredConv3d: DecomposedConv3d}
    for name, m in list(model.named_modules()):
        if type(m) in convs:
            new = convs[type(m)](m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                                 m.groups, m.bias is not None, m.padding_mode, c=m.c, n=m.n)  # fmt: skip
        elif type(m) is StructuredLinear:
            new = DecomposedLinear(m.in_features, m.out_features, m.bias is not None, r=m.r)
        else:
            continue
        _set_submodule(model, name, new)
    from .layers import orthonormalize_

    return orthonormalize_(model)


def _load_dense_weights(model: nn.Module, path: str) -> None:
    from .serialization import read_checkpoint

    ckpt = read_checkpoint(path)
    if ckpt.get("layers"):
        raise ValueError(f"--init-from {path!r} holds a structured/decomposed model; fine-tuning starts from a dense one")
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"--init-from {path!r} does not match the model: {str(err).splitlines()[0]}") from None


def build_model(args, info) -> nn.Module:
    """The model the mode trains: dense, structured training form, or decomposed (direct)."""
    from .models import create_model, structurize_model

    model = create_model(args.arch, num_classes=info.num_classes, in_chans=info.in_chans, pretrained=args.pretrained)
    if args.mode == "finetune":
        if not args.init_from:
            raise ValueError("--mode finetune needs --init-from DENSE_CHECKPOINT (e.g. a baseline run's model.pth)")
        _load_dense_weights(model, args.init_from)
    if args.mode == "baseline":
        return model
    struct = args.struct or (None if args.ratio else "A")
    model = structurize_model(model, args.arch, struct=struct, ratio=args.ratio)
    return to_direct(model) if args.mode == "direct" else model


def _model_args(args, info) -> dict:
    return {"arch": args.arch, "num_classes": info.num_classes, "in_chans": info.in_chans}


# ------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: nn.Module, loader, device, *, channels_last: bool = False) -> tuple[float, float]:
    """Top-1 accuracy (%) and mean cross-entropy of ``model`` on ``loader``."""
    model.eval()
    correct = total = 0
    loss = 0.0
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        if channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        out = model(images)
        loss += F.cross_entropy(out, targets, reduction="sum").item()
        correct += (out.argmax(1) == targets).sum().item()
        total += targets.numel()
    return 100.0 * correct / max(total, 1), loss / max(total, 1)


def evaluate_structured(model: nn.Module, loader, device, *, channels_last: bool = False) -> dict:
    """Accuracy as trained; for structured models also of ``decompose(model)`` and the structure error."""
    from .convert import decompose
    from .layers import StructuredLayer
    from .regularizer import structure_errors

    with torch.random.fork_rng(devices=[]):  # building decomposed layers draws init values
        acc, loss = evaluate(model, loader, device, channels_last=channels_last)
        out = {"accuracy": acc, "loss": loss}
        if any(isinstance(m, StructuredLayer) for m in model.modules()):
            errors = structure_errors(model)
            deployed = decompose(model)
            if channels_last:
                deployed = deployed.to(memory_format=torch.channels_last)
            out["accuracy_decomposed"], out["loss_decomposed"] = evaluate(deployed, loader, device, channels_last=channels_last)
            out["structure_error_mean"] = sum(errors.values()) / len(errors)
            out["structure_error_max"] = max(errors.values())
    return out


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


# ------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------
def _json_safe(args) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}


def _check_args(args) -> None:
    if args.mode == "baseline" and (args.struct or args.ratio):
        raise ValueError("--mode baseline trains the dense model; drop --struct/--ratio or pick --mode sr")
    if args.mode == "control":
        args.lam = 0.0
    if args.mode in ("sr", "finetune") and args.lam < 0:
        raise ValueError(f"--lam {args.lam} must be >= 0")
    if args.init_from and args.mode != "finetune":
        raise ValueError("--init-from is only used by --mode finetune")
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(args, name)} must be >= 1")


def _make_scheduler(optimizer, args, total_steps: int):
    from torch.optim import lr_scheduler

    main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - args.lr_warmup_steps))
    if args.lr_warmup_steps <= 0:
        return main
    warm = lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=args.lr_warmup_steps)
    return lr_scheduler.SequentialLR(optimizer, [warm, main], milestones=[args.lr_warmup_steps])


def _save_state(path: Path, model, optimizer, scheduler, state: dict, args, info, history) -> None:
    from .serialization import save

    save(model, path, model_args=_model_args(args, info), optimizer=optimizer.state_dict(),
         lr_scheduler=scheduler.state_dict(), rng=torch.get_rng_state(), args=_json_safe(args),
         history=history, **state)  # fmt: skip


def _resume_path(args, out_dir: Path) -> Path | None:
    if not args.resume:
        return None
    path = out_dir / CHECKPOINT if args.resume == "auto" else Path(args.resume)
    if not path.is_file():
        raise FileNotFoundError(f"--resume: checkpoint {str(path)!r} does not exist")
    return path


def _format_report(results: dict) -> str:
    def pct(v):
        return "-" if v is None else f"{v:.2f}"

    rows = [
        ("mode", results["mode"]), ("arch", results["arch"] + (f" Struct-{results['struct']}" if results.get("struct") else "")
                                    + (f" ratio {results['ratio']:g}" if results.get("ratio") else "")),
        ("lambda", f"{results['lam']:g}" if results["mode"] in ("sr", "control", "finetune") else "-"),
        ("steps / epochs", f"{results['steps']} / {results['epochs_completed']:.2f}"),
        ("accuracy before decomposition (%)", pct(results["accuracy_before_decomposition"])),
        ("accuracy after decomposition (%)", pct(results["accuracy_after_decomposition"])),
        ("mean structure error", "-" if results.get("structure_error_mean") is None else f"{results['structure_error_mean']:.2e}"),
        ("adds (deployed, per image)", f"{results['adds']:,}"), ("mults (deployed, per image)", f"{results['mults']:,}"),
        ("params (deployed)", f"{results['params']:,}"), ("train time (s)", f"{results['train_seconds']:.0f}"),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(args: argparse.Namespace) -> int:
    from .complexity import count_ops
    from .convert import decompose
    from .data import ResumableSampler, build_datasets
    from .layers import DecomposedLayer, StructuredLayer
    from .regularizer import structural_regularization

    _check_args(args)
    ctx = dist_utils.init_distributed(args.device)
    try:
        return _train(args, ctx, build_datasets, ResumableSampler, count_ops, decompose, structural_regularization,
                      StructuredLayer, DecomposedLayer)  # fmt: skip
    finally:
        dist_utils.cleanup()


def _train(args, ctx, build_datasets, ResumableSampler, count_ops, decompose, structural_regularization,
           StructuredLayer, DecomposedLayer) -> int:  # fmt: skip
    from torch.utils.data import DataLoader

    if args.threads:
        torch.set_num_threads(args.threads)
    elif ctx.world_size > 1 and ctx.device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.local_world_size))
    out_dir = Path(args.output_dir)
    is_main = ctx.rank == 0
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    resume = _resume_path(args, out_dir)
    ckpt = None
    if resume is not None:
        from .serialization import read_checkpoint

        ckpt = read_checkpoint(resume)
        saved = ckpt.get("args", {})
        for key in ("arch", "mode", "struct", "ratio", "dataset", "batch_size", "seed"):
            if key in saved and saved[key] != getattr(args, key):
                raise ValueError(f"--resume {str(resume)!r}: it was trained with --{key.replace('_', '-')} "
                                 f"{saved[key]!r}, not {getattr(args, key)!r}")  # fmt: skip
    torch.manual_seed(args.seed)
    train_ds, test_ds, info = build_datasets(
        args.dataset, args.data_path, download=args.download and is_main, image_size=args.image_size,
        in_chans=args.in_chans, train_subset=args.train_subset, eval_subset=args.eval_subset, seed=args.seed,
    )  # fmt: skip
    model = build_model(args, info).to(ctx.device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    structured = any(isinstance(m, StructuredLayer) for m in model.modules())
    use_reg = structured and args.mode in ("sr", "finetune") and args.lam > 0

    sampler = ResumableSampler(train_ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=args.seed,
                               drop_last=True)  # fmt: skip
    steps_per_epoch = len(sampler) // args.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"--batch-size {args.batch_size} is larger than the {len(sampler)} training images per process")
    total_steps = steps_per_epoch * args.epochs
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": args.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, momentum=args.momentum)  # fmt: skip
    scheduler = _make_scheduler(optimizer, args, total_steps)
    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "train_seconds": 0.0}
    history: list[dict] = []
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as err:
            raise ValueError(f"--resume {str(resume)!r} does not match this model: {str(err).splitlines()[0]}") from None
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["lr_scheduler"])
        torch.set_rng_state(ckpt["rng"])
        state = {k: ckpt[k] for k in state}
        history = list(ckpt.get("history", []))
    ddp_model = dist_utils.wrap(model, ctx)
    log = RunLog(out_dir, is_main, args.tensorboard)
    eval_loader = DataLoader(test_ds, batch_size=max(256, args.batch_size), shuffle=False, num_workers=args.workers)
    say = (lambda *a: print(*a, flush=True)) if (is_main and not args.quiet) else (lambda *a: None)
    if ckpt is None:
        say(f"training {args.arch} ({args.mode}{', lam=%g' % args.lam if use_reg else ''}) on {info.name} "
            f"{'x'.join(map(str, info.input_size))}: {total_steps} steps of {args.batch_size}x{ctx.world_size} images")  # fmt: skip
    else:
        say(f"resumed from {resume} at step {state['global_step']} / {total_steps}")

    def save_checkpoint():
        if is_main:
            _save_state(out_dir / CHECKPOINT, model, optimizer, scheduler, state, args, info, history)
        dist_utils.barrier(ctx)

    def run_eval():
        if is_main:
            metrics = evaluate_structured(model, eval_loader, ctx.device, channels_last=args.channels_last)
            row = {"epoch": state["epoch"] + state["step_in_epoch"] / steps_per_epoch, "step": state["global_step"],
                   "seconds": state["train_seconds"], **metrics}  # fmt: skip
            history.append(row)
            log.record("eval", row)
            extra = ""
            if "accuracy_decomposed" in metrics:
                extra = f", decomposed {metrics['accuracy_decomposed']:.2f}%, structure error {metrics['structure_error_mean']:.2e}"
            say(f"eval @ step {state['global_step']}: accuracy {metrics['accuracy']:.2f}%{extra}")
        dist_utils.barrier(ctx)

    progress = None
    if is_main and not args.no_progress and not args.quiet:
        from tqdm.auto import tqdm

        progress = tqdm(total=total_steps, initial=state["global_step"], desc="train", unit="step", dynamic_ncols=True)
    steps_this_run = 0
    stopped = False
    ddp_model.train()
    while state["global_step"] < total_steps and not stopped:
        epoch = state["epoch"]
        train_ds.set_epoch(epoch)
        sampler.set_epoch(epoch)
        sampler.start_index = state["step_in_epoch"] * args.batch_size
        loader = DataLoader(train_ds, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                            drop_last=True, persistent_workers=False)  # fmt: skip
        tic = time.perf_counter()
        for images, targets in loader:
            images, targets = images.to(ctx.device), targets.to(ctx.device)
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            ddp_model.train()
            task = F.cross_entropy(ddp_model(images), targets, label_smoothing=args.label_smoothing)
            reg = structural_regularization(model) if use_reg else task.new_zeros(())
            loss = task + args.lam * reg if use_reg else task
            if not torch.isfinite(loss):
                raise ValueError(f"loss became {loss.item()} at step {state['global_step']}; lower --lr or --lam")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            state["global_step"] += 1
            state["step_in_epoch"] += 1
            steps_this_run += 1
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{task.item():.3f}", reg=f"{reg.item():.3f}", refresh=False)
            if state["global_step"] % args.print_freq == 0:
                log.record("train", {"epoch": epoch, "step": state["global_step"], "lr": optimizer.param_groups[0]["lr"],
                                     "train_loss": loss.item(), "task_loss": task.item(), "reg_loss": reg.item()})  # fmt: skip
            epoch_done = state["step_in_epoch"] >= steps_per_epoch
            finished = state["global_step"] >= total_steps
            if epoch_done or finished or (args.ckpt_every and state["global_step"] % args.ckpt_every == 0) or (
                args.stop_after and steps_this_run >= args.stop_after
            ):
                state["train_seconds"] += time.perf_counter() - tic
                if epoch_done:
                    state["epoch"] += 1
                    state["step_in_epoch"] = 0
                if epoch_done or finished:
                    run_eval()
                save_checkpoint()
                tic = time.perf_counter()
                if args.stop_after and steps_this_run >= args.stop_after and not finished:
                    stopped = True
                    break
            if finished or epoch_done:
                break
    if progress is not None:
        progress.close()
    if stopped:
        say(f"stopped after {steps_this_run} steps (--stop-after); continue with --resume")
        return 0
    if is_main:
        _finish(args, model, info, state, history, out_dir, decompose, count_ops, StructuredLayer, DecomposedLayer,
                steps_per_epoch, ctx.world_size)
    dist_utils.barrier(ctx)
    return 0


def _finish(args, model, info, state, history, out_dir, decompose, count_ops, StructuredLayer, DecomposedLayer,
            steps_per_epoch: int, world_size: int = 1) -> None:
    """Step 2 (decompose), final checkpoints, ``results.json`` and the report table."""
    from .layers import deorthonormalize_
    from .serialization import atomic_write_json, save

    # deployment stores plain alpha (direct training trained it through a parametrization)
    model = deorthonormalize_(copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format).eval())
    last = history[-1] if history else {}
    structured = any(isinstance(m, StructuredLayer) for m in model.modules())
    deployed = decompose(model) if structured else model
    model_args = _model_args(args, info)
    save(model, out_dir / "model.pth", model_args=model_args, metrics=last, args=_json_safe(args))
    if structured:
        save(deployed, out_dir / "model_decomposed.pth", model_args=model_args, metrics=last, args=_json_safe(args))
    ops = count_ops(deployed, (1, *info.input_size))
    is_decomposed = structured or any(isinstance(m, DecomposedLayer) for m in model.modules())
    acc = last.get("accuracy")
    results = {
        "mode": args.mode, "arch": args.arch, "struct": (args.struct or (None if args.ratio else "A")) if args.mode != "baseline" else None,
        "ratio": args.ratio, "lam": args.lam, "dataset": info.name, "input_size": list(info.input_size),
        "steps": state["global_step"], "epochs_completed": state["global_step"] / steps_per_epoch,
        "accuracy_before_decomposition": acc,
        "accuracy_after_decomposition": last.get("accuracy_decomposed", acc if is_decomposed else None),
        "structure_error_mean": last.get("structure_error_mean"), "structure_error_max": last.get("structure_error_max"),
        "adds": ops.adds, "mults": ops.mults, "params": ops.params, "train_seconds": state["train_seconds"],
        "world_size": world_size, "history": history, "args": _json_safe(args),
    }  # fmt: skip
    atomic_write_json(results, out_dir / "results.json", indent=2)
    if not args.quiet:
        print()
    print(_format_report(results), flush=True)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(get_args_parser().parse_args()))
