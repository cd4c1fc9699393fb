"""``structconv compare``: a thin wrapper over :func:`structconv.compare.run_study`."""

from __future__ import annotations

import argparse
import json

from ._args import finite_float, float_list, int_list, name_list, path_arg, positive_int

__all__ = ["get_args_parser", "main"]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="structured convolutions vs pruning, low-rank and narrow networks", add_help=add_help
    )
    p.add_argument("--arch", default="cifar_resnet20", help="a registered architecture with Struct-A/B presets")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-path", type=path_arg, default="data")
    p.add_argument(
        "--methods",
        type=name_list,
        default=("struct", "prune", "svd", "narrow"),
        help="comma-separated: struct (= struct_sr,struct_ft,struct_direct), prune, svd (= svd_weight,"
        "svd_spatial), narrow, or single methods; the dense baseline always runs",
    )
    p.add_argument(
        "--targets", type=name_list, default=("A", "B"), help="Struct presets whose cost every method matches"
    )
    p.add_argument("--seeds", type=positive_int, default=3)
    p.add_argument(
        "--dense-steps",
        type=positive_int,
        default=468,
        help="training steps from scratch (dense, struct_sr, struct_direct, narrow)",
    )
    p.add_argument(
        "--finetune-fraction",
        type=finite_float,
        default=0.25,
        help="fine-tune budget of the from-trained methods, as a fraction of --dense-steps",
    )
    p.add_argument(
        "--curve",
        type=float_list,
        default=(0.0, 0.1, 0.25, 0.5, 1.0),
        help="fractions of the fine-tune budget at which to evaluate (the curve)",
    )
    p.add_argument("-b", "--batch-size", type=positive_int, default=128)
    p.add_argument("--lr", type=finite_float, default=0.1, help="learning rate from scratch")
    p.add_argument("--finetune-lr", type=finite_float, default=0.01, help="learning rate of the fine-tunes")
    p.add_argument(
        "--distill",
        type=finite_float,
        default=0.9,
        help="distillation weight of every fine-tune (teacher: the trained dense model)",
    )
    p.add_argument("--train-subset", type=positive_int)
    p.add_argument("--eval-subset", type=positive_int)
    p.add_argument("--image-size", type=positive_int)
    p.add_argument("--in-chans", type=positive_int)
    p.add_argument("--no-latency", dest="latency", action="store_false", help="skip the latency tables")
    p.add_argument("--latency-batches", type=int_list, default=(1, 32))
    p.add_argument("--no-compile", dest="compile", action="store_false", help="latency in eager mode only")
    p.add_argument("--threads", type=positive_int)
    p.add_argument(
        "--output-dir", type=path_arg, default="runs/compare", help="runs, compare.json/.csv, latency.json, figures/"
    )
    p.add_argument("--no-plots", dest="plots", action="store_false")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .._io import json_safe
    from ..compare import CompareConfig, run_study
    from ..reporting import format_table

    config = CompareConfig(
        arch=args.arch,
        dataset=args.dataset,
        data_path=args.data_path,
        methods=args.methods,
        targets=args.targets,
        seeds=args.seeds,
        dense_steps=args.dense_steps,
        finetune_fraction=args.finetune_fraction,
        curve=args.curve,
        batch_size=args.batch_size,
        lr=args.lr,
        finetune_lr=args.finetune_lr,
        distill=args.distill,
        train_subset=args.train_subset,
        eval_subset=args.eval_subset,
        image_size=args.image_size,
        in_chans=args.in_chans,
        latency=args.latency,
        latency_batches=args.latency_batches,
        compile=args.compile,
        threads=args.threads,
        output_dir=args.output_dir,
        progress=not (args.no_progress or args.json),
    )
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    summary = run_study(config, say=say)
    if args.plots:
        from ..plots import plot_study

        summary["figures"] = [str(p) for p in plot_study(summary, Path(args.output_dir) / "figures")]
    if args.json:
        print(json.dumps(json_safe(summary), indent=1))
        return 0
    rows = [("method", "target", "seeds", "accuracy (%)", "params", "mults", "vs target")]
    for r in summary["summary"]:
        vs = "-" if r.get("mults_vs_target") is None else f"{r['mults_vs_target']:+.1%}"
        rows.append(
            (
                r["method"],
                r["target"] or "-",
                r["seeds"],
                f"{r['accuracy_mean']:.2f} ± {r['accuracy_std']:.2f}",
                f"{r['params']:,.0f}",
                f"{r['mults']:,.0f}",
                vs,
            )
        )
    print()
    print(format_table(rows, align="llrrrrr"))
    print(
        f"\nwrote {Path(args.output_dir) / 'compare.json'} and compare.csv"
        + (f"; figures in {Path(args.output_dir) / 'figures'}" if args.plots else "")
    )
    return 0
