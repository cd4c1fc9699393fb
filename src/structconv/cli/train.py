"""``structconv train``: a thin wrapper over :func:`structconv.training.train`."""

from __future__ import annotations

import argparse

from ._args import finite_float, nonnegative_int, path_arg, positive_int, step_list

__all__ = ["get_args_parser", "main"]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    from ..training import get_recipe, recipe_names

    modes = "; ".join(f"{name}: {get_recipe(name).summary}" for name in recipe_names()).replace("%", "%%")
    p = argparse.ArgumentParser(description="Train baseline / structured models (Sec. 5.1)", add_help=add_help)
    p.add_argument("--arch", default="cifar_resnet20", help="model name (structconv, torchvision or timm)")
    p.add_argument("--mode", default="sr", choices=recipe_names(), help=f"training recipe ({modes})")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--struct", choices=["A", "B"], help="the paper's Struct-A/B plan (default A unless --ratio)")
    g.add_argument("--ratio", type=finite_float, help="uniform compression ratio instead of a Struct plan")
    p.add_argument("--lam", type=finite_float, default=1.0, help="lambda of the Structural Regularization loss (Eq. 3)")
    p.add_argument(
        "--sr",
        choices=("normalized", "eq3"),
        default="normalized",
        help="Step 1 recipe: 'normalized' weights each layer's Eq. 3 term to beat the task off the "
        "structured subspace (every layer converges, whatever its width); 'eq3' is the paper's "
        "loss + lam * Eq. 3 (with --projected-fraction 0: the paper's recipe exactly)",
    )
    p.add_argument(
        "--kappa",
        type=finite_float,
        default=2.0,
        help="normalized SR: each layer's push toward the structure is at least kappa times the task's",
    )
    p.add_argument("--kappa-ramp", type=finite_float, default=0.5, help="kappa ramps up over this fraction of steps")
    p.add_argument(
        "--projected-fraction",
        type=finite_float,
        default=None,
        help="train the last fraction of the steps projected (structure error 0 at the end; 0: off; "
        "default 0.05 for sr, 1.0 for finetune: project at once, then projected SGD)",
    )
    p.add_argument("--init-from", type=path_arg, help="dense checkpoint to fine-tune (mode finetune)")
    p.add_argument(
        "--calibration-batches",
        type=nonnegative_int,
        default=None,
        help="mode finetune: training batches for the data-aware projection (structconv.calibrate_, default 8; "
        "0: the weight-space projection A A^+ W)",
    )
    p.add_argument(
        "--calibration-structure",
        choices=("given", "search"),
        default=None,
        help="mode finetune: 'search' also chooses each layer's (c, n) from the calibration data, at the same "
        "multiplications (within 3%%) as the preset's; 'given' keeps the preset's (default: search)",
    )
    p.add_argument(
        "--reconstruction-steps",
        type=nonnegative_int,
        default=None,
        help="mode finetune: Adam steps per residual block of block-wise output reconstruction after "
        "calibration (structconv.reconstruction.reconstruct_blocks_, default 200; 0: none)",
    )
    p.add_argument(
        "--direct-init",
        choices=("own", "default"),
        default="default",
        help="mode direct: start from the projected nn.Conv default init (default), or from the "
        "model's own init projected and rescaled to its norm (own)",
    )
    p.add_argument("--pretrained", action="store_true", help="start from torchvision/timm weights (needs network)")
    # data
    p.add_argument("--dataset", default="fashion-mnist", help="cifar10, cifar100, fashion-mnist, imagenet, folder")
    p.add_argument("--data-path", type=path_arg, default="data", help="dataset root in torchvision's on-disk format")
    p.add_argument("--download", action="store_true", help="let torchvision download the dataset if missing")
    p.add_argument("--image-size", type=positive_int, help="resize images (default: the dataset's own size)")
    p.add_argument(
        "--in-chans", type=positive_int, help="convert images to this many channels (default: the dataset's)"
    )
    p.add_argument("--train-subset", type=positive_int, help="train on the first N training images only")
    p.add_argument("--eval-subset", type=positive_int, help="evaluate on the first N test images only")
    p.add_argument("-j", "--workers", type=nonnegative_int, default=0, help="data loading workers per process")
    # optimisation
    p.add_argument("--epochs", type=positive_int, default=1)
    p.add_argument("--max-steps", type=positive_int, help="stop after this many optimizer steps in total (budget)")
    p.add_argument("-b", "--batch-size", type=positive_int, default=128, help="images per process per step")
    p.add_argument("--lr", type=finite_float, default=0.1)
    p.add_argument("--momentum", type=finite_float, default=0.9)
    p.add_argument("--wd", "--weight-decay", dest="weight_decay", type=finite_float, default=1e-4)
    p.add_argument("--lr-warmup-steps", type=nonnegative_int, default=0)
    p.add_argument("--label-smoothing", type=finite_float, default=0.0, help="in [0, 1)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument(
        "--distill",
        type=finite_float,
        default=None,
        help="weight in [0, 1] of distillation from the --init-from model (mode finetune; default 0.9)",
    )
    p.add_argument("--distill-temperature", type=finite_float, default=4.0)
    p.add_argument(
        "--eval-at",
        type=step_list,
        default=(),
        help="also evaluate after these steps (0: before the first), e.g. 0,50,100",
    )
    # run control
    p.add_argument(
        "--output-dir", type=path_arg, default="runs/train", help="checkpoints, logs and results.json go here"
    )
    p.add_argument(
        "--resume",
        type=path_arg,
        nargs="?",
        const="auto",
        help="resume from a checkpoint (default: OUTPUT_DIR/checkpoint.pth)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run in --output-dir (without it, training there is refused)",
    )
    p.add_argument(
        "--ckpt-every", type=nonnegative_int, default=0, help="also checkpoint every N steps (0: at epoch ends only)"
    )
    p.add_argument(
        "--stop-after", type=positive_int, help="checkpoint and exit after N steps of this run (simulates a kill)"
    )
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads per process")
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="channels_last memory format (much faster convolutions on CPU)",
    )
    p.add_argument("--print-freq", type=positive_int, default=50, help="log training loss every N steps")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard (if installed)")
    p.add_argument("--quiet", action="store_true", help="print only the final report")
    return p


def config_from_args(args: argparse.Namespace):
    """The :class:`~structconv.training.TrainConfig` of parsed ``args``."""
    import torch

    from ..training import TrainConfig, config_fields

    values = {name: getattr(args, name) for name in config_fields() if hasattr(args, name)}
    if values.get("device") is None:
        values["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return TrainConfig(**values)


def main(args: argparse.Namespace) -> int:
    from ..training import train

    train(config_from_args(args))
    return 0
