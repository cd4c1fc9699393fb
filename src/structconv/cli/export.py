"""``structconv export``: a thin wrapper over :func:`structconv.export.export_model`."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from ..data import DATASETS
from ..runtimes import PRECISIONS, RUNTIMES
from ._args import CommandError, finite_float, name_list, path_arg, positive_int

__all__ = ["get_args_parser", "main", "ARGUMENT_FLAGS"]

#: library arguments named differently from the options that set them
ARGUMENT_FLAGS = {"formats": "--format", "output_dir": "--output", "input_size": "--image-size"}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="export a decomposed model to TorchScript, ONNX and OpenVINO IR", add_help=add_help
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--checkpoint", type=path_arg, help="a structconv checkpoint (structured or decomposed; see structconv.save)"
    )
    src.add_argument("--arch", help="build this architecture with random weights (for trying the pipeline)")
    p.add_argument("--struct", choices=("A", "B"), help="with --arch: the paper's Struct-A/B plan")
    p.add_argument("--ratio", type=finite_float, help="with --arch: uniform ratio instead of --struct")
    p.add_argument("--num-classes", type=positive_int, default=None)
    p.add_argument(
        "--image-size",
        type=positive_int,
        default=None,
        help="input height=width (default: what the checkpoint was trained on, or the model's)",
    )
    p.add_argument(
        "--batch", type=positive_int, default=1, help="batch size of the example input (the exported batch is dynamic)"
    )
    p.add_argument("--output", "-o", type=path_arg, default="exported", help="output directory (default ./exported)")
    p.add_argument(
        "--name", type=path_arg, default=None, help="file stem (default: the architecture or checkpoint name)"
    )
    p.add_argument(
        "--format",
        type=name_list,
        default=("onnx", "torchscript"),
        help="comma-separated: onnx, torchscript, openvino (IR with 1x1-conv channel pools)",
    )
    p.add_argument(
        "--runtime",
        choices=tuple(RUNTIMES),
        default=None,
        help="write the deployment artifact for this runtime instead of --format: each layer's form "
        "(decomposed in a sum-pool lowering, or recomposed dense) measured there, never slower than dense",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="with --runtime (default: the runtime's own on this CPU: bf16 for openvino on AMX CPUs, "
        "as a plain compile_model runs it; fp32 otherwise)",
    )
    p.add_argument(
        "--calibration-dataset",
        choices=DATASETS,
        default=None,
        help="with --precision int8: the dataset whose training images calibrate the quantization; "
        "with --max-accuracy-drop: other training images of it validate",
    )
    p.add_argument("--data-path", type=path_arg, default="data", help="with --calibration-dataset (default ./data)")
    p.add_argument("--calibration-images", type=positive_int, default=512, help="int8 calibration images (default 512)")
    p.add_argument(
        "--max-accuracy-drop",
        type=finite_float,
        default=None,
        metavar="POINTS",
        help="with --runtime and --calibration-dataset: recompose the decomposed layers that cost most until the "
        "artifact's top-1 is within POINTS of PyTorch float32 on --validation-images training images (disjoint "
        "from the calibration ones); for int8, whose pooled sums are requantized",
    )
    p.add_argument(
        "--validation-images", type=positive_int, default=2000, help="with --max-accuracy-drop (default 2000)"
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    p.add_argument("--dynamo", action="store_true", help="use the torch.export-based ONNX exporter first")
    p.add_argument(
        "--fold-bn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fold BatchNorm into the preceding convs before exporting (default on)",
    )
    p.add_argument(
        "--autotune",
        action="store_true",
        help="run layers measured slower decomposed as recomposed dense kernels (exact either way)",
    )
    p.add_argument("--threads", type=positive_int, default=None, help="threads for --autotune measurements")
    p.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="check ONNX Runtime and TorchScript against PyTorch (default on)",
    )
    p.add_argument("--rtol", type=finite_float, default=1e-4, help="relative error allowed by --verify")
    p.add_argument("--overwrite", action="store_true", help="replace files that already exist in --output")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    return p


def _source(args):
    """``(model, file stem, (C, H, W))`` from ``--checkpoint`` or ``--arch``."""
    from ..benchmark import build_models, input_size_for

    if args.checkpoint:
        from ..evaluation import load_model
        from ..export import checkpoint_input_size

        if args.struct or args.ratio:
            raise CommandError("--struct/--ratio apply to --arch; a checkpoint records its own structure")
        model, ckpt = load_model(args.checkpoint)
        arch = (ckpt.get("model") or {}).get("arch")
        chans, h, w = checkpoint_input_size(ckpt, input_size_for(arch, None))
        if args.image_size is not None:
            h = w = args.image_size
        return model, args.name or Path(args.checkpoint).stem, (chans, h, w)
    if args.struct is None and args.ratio is None:
        raise CommandError("with --arch, give --struct A|B or --ratio R")
    _, structured = build_models(args.arch, struct=args.struct, ratio=args.ratio, num_classes=args.num_classes)
    stem = args.name or (f"{args.arch}_struct{args.struct}" if args.struct else f"{args.arch}_r{args.ratio:g}")
    return structured, stem, input_size_for(args.arch, args.image_size)


def _check_calibration_flags(args) -> None:
    if args.max_accuracy_drop is not None:
        if args.max_accuracy_drop < 0:
            raise CommandError(f"--max-accuracy-drop={args.max_accuracy_drop:g} must be >= 0 (top-1 points)")
        if not args.calibration_dataset:
            raise CommandError("--max-accuracy-drop needs --calibration-dataset (its training images validate)")
    elif args.precision != "int8" and args.calibration_dataset:
        raise CommandError("--calibration-dataset applies to --precision int8 or --max-accuracy-drop")
    if args.precision == "int8" and not args.calibration_dataset:
        raise CommandError("--precision int8 needs --calibration-dataset (the images that set the int8 ranges)")


def _calibration(args, size) -> tuple[list | None, list | None]:
    """int8 calibration batches and ``--max-accuracy-drop``'s labelled validation batches, from
    disjoint images of ``--calibration-dataset``'s training split."""
    _check_calibration_flags(args)
    if not args.calibration_dataset:
        return None, None
    import torch
    from torch.utils.data import DataLoader, Subset

    from ..data import build_datasets

    train_ds, test_ds, _ = build_datasets(
        args.calibration_dataset, args.data_path, image_size=size[1], in_chans=size[0]
    )
    # training images through the test transforms: no random crops or flips in statistics or accuracy
    train_ds = copy.copy(train_ds)
    train_ds.transform = test_ds.transform
    order = torch.randperm(len(train_ds), generator=torch.Generator().manual_seed(0)).tolist()
    n = min(args.calibration_images, len(train_ds))
    batch = max(args.batch, 32)
    calibration = None
    if args.precision == "int8":
        calibration = [x for x, _ in DataLoader(Subset(train_ds, order[:n]), batch_size=batch)]
    validation = None
    if args.max_accuracy_drop is not None:
        held_out = order[n : n + args.validation_images]
        if not held_out:
            raise CommandError(f"--calibration-dataset {args.calibration_dataset}: no images left for validation")
        validation = list(DataLoader(Subset(train_ds, held_out), batch_size=batch))
    return calibration, validation


def _deploy(args, model, stem, size) -> int:
    import torch

    from ..deployment import deploy
    from ..runtimes import check_target, default_precision

    if tuple(args.format) != ("onnx", "torchscript"):
        raise CommandError("--format and --runtime are exclusive: --runtime writes that runtime's artifact")
    if args.precision is None:
        args.precision = default_precision(args.runtime)
    rt = check_target(args.runtime, args.precision)  # one line before any work: missing package or ISA flag
    _check_calibration_flags(args)
    out = Path(args.output)
    planned = (out / f"{stem}{rt.suffix}", out / f"{stem}.dense{rt.suffix}", out / f"{stem}.decisions.json")
    taken = [str(p) for p in planned if p.exists()]
    if taken and not args.overwrite:  # before the search, which takes minutes
        raise CommandError(f"{', '.join(taken)} already exist(s); pass --overwrite to replace them")
    calibration, validation = _calibration(args, size)
    example = torch.randn(args.batch, *size)
    deployment = deploy(
        model,
        example,
        runtime=args.runtime,
        precision=args.precision,
        threads=args.threads,
        calibration=calibration,
        validation=validation,
        max_accuracy_drop=args.max_accuracy_drop,
    )
    files = deployment.save(out, stem, overwrite=args.overwrite)
    if args.json:
        print(json.dumps(dict(deployment.to_dict(), files=files), indent=1))
    else:
        print(deployment)
        print(f"{args.runtime} artifact: {', '.join(files['artifact'])}")
        print(f"dense reference (the same model recomposed, to time against): {', '.join(files['dense'])}")
        print(f"decisions: {files['decisions']}; report: {files['report']}")
    return 0


def main(args: argparse.Namespace) -> int:
    from ..export import export_model

    if not args.runtime and (
        args.precision is not None or args.calibration_dataset or args.max_accuracy_drop is not None
    ):
        raise CommandError("--precision, --calibration-dataset and --max-accuracy-drop apply to --runtime")
    model, stem, size = _source(args)
    if args.runtime:
        return _deploy(args, model, stem, size)
    summary = export_model(
        model,
        size,
        args.output,
        name=stem,
        formats=args.format,
        batch=args.batch,
        opset=args.opset,
        dynamo=args.dynamo,
        fold_bn=args.fold_bn,
        autotune=args.autotune,
        threads=args.threads,
        verify=args.verify,
        rtol=args.rtol,
        overwrite=args.overwrite,
    )
    report = summary.pop("_report", None)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        if report is not None:
            print(report)
        for fmt, entry in summary["files"].items():
            extra = f", opset {entry['opset']} ({entry['exporter']} exporter)" if fmt == "onnx" else ""
            check = f", verified: rel. error {entry['rel_err']:.1e}" if "rel_err" in entry else ""
            print(f"{fmt}: {entry['path']}{extra}{check}")
    return 0
