"""Running the study: every run an ordinary :func:`structconv.training.train` run in its own
directory (checkpoints, ``results.json``); finished runs are kept, an interrupted one resumes.
Counts come from :func:`structconv.count_ops` on each deployed model; latency is measured on
the seed-0 models of every method (:func:`structconv.benchmark.time_models`)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .. import validation as v
from .._io import atomic_write, atomic_write_json
from ..complexity import count_ops
from ..convert import decompose
from ..data import input_size as dataset_input_size
from ..deploy import fold_batchnorm
from ..models import create_model
from ..serialization import load
from ..training import TrainConfig, format_diff, saved_meaning, settings_diff, train
from .config import CompareConfig, Run, plan_runs
from .methods import get_method

__all__ = ["Study", "run_study", "summarize", "measure_latency"]


@dataclass
class Study:
    """One study's directory and what its methods share: the trained dense models, the target
    cost, the training options every run has in common."""

    config: CompareConfig
    root: Path
    input_size: tuple[int, int, int]
    num_classes: int = 10
    say: Callable = print
    _targets: dict = field(default_factory=dict)

    def run_dir(self, run: Run) -> Path:
        return self.root / "runs" / run.name

    def dense_path(self, seed: int) -> Path:
        return self.run_dir(Run("dense", None, seed)) / "model.pth"

    def example(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, *self.input_size)

    def target_mults(self, target: str) -> int:
        """Multiplications of the deployed (decomposed) Struct-``target`` model."""
        if target not in self._targets:
            model = create_model(
                self.config.arch, num_classes=self.num_classes, in_chans=self.input_size[0], struct=target
            )
            self._targets[target] = count_ops(decompose(model, on_unstructured="ignore"), (1, *self.input_size)).mults
        return self._targets[target]

    def fresh_dense(self) -> nn.Module:
        return create_model(self.config.arch, num_classes=self.num_classes, in_chans=self.input_size[0])

    def trained_dense(self, seed: int) -> nn.Module:
        return load(self.dense_path(seed)).eval()

    def train_config(self, run: Run, **options) -> TrainConfig:
        """A :class:`TrainConfig` with the study's common options and ``options``."""
        c = self.config
        common = dict(
            arch=c.arch,
            dataset=c.dataset,
            data_path=c.data_path,
            batch_size=c.batch_size,
            seed=run.seed,
            train_subset=c.train_subset,
            eval_subset=c.eval_subset,
            image_size=c.image_size,
            in_chans=c.in_chans,
            output_dir=str(self.run_dir(run)),
            threads=c.threads,
            no_progress=not c.progress,
            quiet=not c.progress,
        )
        return TrainConfig(**{**common, **options})

    def finetune_options(self) -> dict:
        """The budget and recipe of every from-trained fine-tune, with the curve's evaluation steps."""
        c = self.config
        steps = c.finetune_steps
        curve = tuple(sorted({round(f * steps) for f in c.curve if round(f * steps) < steps}))
        return dict(max_steps=steps, lr=c.finetune_lr, distill=c.distill, eval_at=curve)


def _run_one(study: Study, run: Run) -> dict:
    """Train ``run`` (or keep its finished results, or resume it); returns its results."""
    method = get_method(run.method)
    out = study.run_dir(run)
    done = out / "results.json"
    config = method.train_config(study, run)
    if done.exists():
        results = json.loads(done.read_text())
        changed = settings_diff(saved_meaning(results.get("args", {})), config.meaning())
        if changed:
            what, literals = format_diff(changed, values=False)
            raise v.ArgumentError(
                "{path} was trained with other settings (" + what + "); move it away or use another {output_dir}",
                path=repr(str(done)),
                **literals,
            )
        return results
    if (out / "checkpoint.pth").exists():
        config.resume = "auto"
    elif out.exists():
        config.overwrite = True  # only an empty or half-created run directory: nothing trained is lost
    model = method.build_model(study, run)
    teacher = method.teacher(study, run, config) if model is not None else None
    if config.resume is None:
        method.before_training(study, run, model)
    with contextlib.redirect_stdout(io.StringIO()):  # the study prints one line per run instead of each report
        results = train(config, model=model, teacher=teacher)
    if results is None:  # pragma: no cover - only with stop_after, which the study does not set
        raise RuntimeError(f"run {run.name} stopped early")
    return results


def _record(run: Run, results: dict, study: Study) -> dict:
    accuracy = results["accuracy_after_decomposition"]
    if accuracy is None:
        accuracy = results["accuracy_before_decomposition"]
    method = get_method(run.method)
    target = study.target_mults(run.target) if run.target else None
    curve = []
    if method.from_trained:
        for row in results["history"]:
            curve.append({"step": row["step"], "accuracy": row.get("accuracy_decomposed", row["accuracy"])})
    return {
        "method": run.method,
        "target": run.target,
        "seed": run.seed,
        "run": run.name,
        "accuracy": accuracy,
        "accuracy_before_decomposition": results["accuracy_before_decomposition"],
        "params": results["params"],
        "mults": results["mults"],
        "adds": results["adds"],
        "target_mults": target,
        "mults_vs_target": results["mults"] / target - 1 if target else None,
        "steps": results["steps"],
        "train_seconds": results["train_seconds"],
        "seconds_per_step": results["train_seconds"] / max(1, results["steps"]),
        "structure_error_max": results.get("structure_error_max"),
        "curve": curve,
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [x for x in values if x is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(records: list[dict]) -> list[dict]:
    """Mean ± std over seeds of every (method, target), with how reports show the method."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], r["target"]), []).append(r)
    rows = []
    for (name, target), rs in groups.items():
        method = get_method(name)
        acc, acc_sd = _mean_std([r["accuracy"] for r in rs])
        row = {
            "method": name,
            "target": target,
            "seeds": len(rs),
            "accuracy_mean": acc,
            "accuracy_std": acc_sd,
            "label": method.label,
            "marker": method.marker,
            "color": method.color,
            "from_trained": method.from_trained,
            "latency_key": method.latency_key(target),
        }
        for key in ("params", "mults", "adds", "seconds_per_step"):
            row[key], _ = _mean_std([r[key] for r in rs])
        if target is not None:
            row["mults_vs_target"] = max((r["mults_vs_target"] for r in rs), key=abs)
        steps = sorted({p["step"] for r in rs for p in r["curve"]})
        row["curve"] = []
        for s in steps:
            mean, std = _mean_std([p["accuracy"] for r in rs for p in r["curve"] if p["step"] == s])
            row["curve"].append({"step": s, "accuracy_mean": mean, "accuracy_std": std})
        rows.append(row)
    return rows


def _check_directory(config: CompareConfig, root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise v.ArgumentError("{output_dir}={path} is a file, not a directory", path=repr(str(root)))
    manifest = root / "study.json"
    if manifest.exists():
        changed = settings_diff(json.loads(manifest.read_text()), config.meaning())
        if changed:
            what, literals = format_diff(changed, values=False)
            raise v.ArgumentError(
                "{output_dir}={path} holds a study with other settings (" + what + "); use the same settings to "
                "continue it, or a new {output_dir}",
                path=repr(str(root)),
                **literals,
            )


def run_study(config: CompareConfig, *, say: Callable = print) -> dict:
    """Run (or resume) the study in ``config.output_dir``; writes ``compare.json`` and
    ``compare.csv`` there (and ``latency.json`` when ``config.latency``); returns the summary."""
    config.validate()
    root = v.path(config.output_dir, "output_dir")
    _check_directory(config, root)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(config.meaning(), root / "study.json", indent=1)
    size = dataset_input_size(config.dataset, image_size=config.image_size, in_chans=config.in_chans)
    study = Study(config, root, size, say=say)
    runs = plan_runs(config)
    records = []
    for i, run in enumerate(runs, 1):
        fresh = not (study.run_dir(run) / "results.json").exists()
        say(f"[{i}/{len(runs)}] {run.name}" + ("" if fresh else " (finished earlier, kept)"))
        record = _record(run, _run_one(study, run), study)
        records.append(record)
        say(
            f"    accuracy {record['accuracy']:.2f} %, {record['mults']:,} mults, {record['params']:,} params, "
            f"{record['steps']} steps"
        )
    summary = {
        "config": asdict(config),
        "input_size": list(size),
        "target_mults": {t: study.target_mults(t) for t in config.targets},
        "finetune_steps": config.finetune_steps,
        "runs": records,
        "summary": summarize(records),
    }
    if config.latency:
        summary["latency"] = measure_latency(study, say=say)
        atomic_write_json(summary["latency"], root / "latency.json", indent=1)
    atomic_write_json(summary, root / "compare.json", indent=1)
    _write_csv(records, root / "compare.csv")
    return summary


def _write_csv(records: list[dict], path: Path) -> None:
    keys = [k for k in records[0] if k != "curve"]

    def write(f):
        w = csv.DictWriter(f, keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(records)

    atomic_write(path, write, "w")


def measure_latency(study: Study, *, say: Callable = print) -> dict:
    """Median CPU latency of every method's seed-0 deployed model (BatchNorm folded), each
    latency column once (the Struct methods share one deployed architecture per target), at
    each batch size, eager and (optionally) compiled (:func:`structconv.benchmark.time_models`)."""
    from ..benchmark import time_models

    config = study.config
    models: dict[str, nn.Module] = {}
    for name in config.expanded_methods():
        method = get_method(name)
        for target in config.targets if method.per_target else (None,):
            key = method.latency_key(target)
            if key not in models:
                models[key] = fold_batchnorm(method.deployed(study, Run(name, target, 0)).eval())
    return time_models(
        models,
        study.input_size,
        batches=config.latency_batches,
        threads=config.threads,
        compile=config.compile,
        say=say,
    )
