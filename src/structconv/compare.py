"""Structured convolutions against what a practitioner would pick instead, at matched cost.

One study (``structconv compare``), resumable run by run:

* ``dense``: the baseline, trained once per seed; the trained model every from-trained method
  starts from (and distills from).
* ``struct_sr`` (Step 1 with Structural Regularization, from scratch), ``struct_ft`` (the same
  plan fine-tuned from the trained dense model), ``struct_direct`` (the decomposed form trained
  from scratch, Sec. 6.4) -- each at the paper's Struct-A / Struct-B plans;
* ``prune`` (channel pruning with Torch-Pruning), ``svd_weight`` / ``svd_spatial`` (low-rank
  factorization), from the trained dense model, brought to the multiplications of the
  decomposed Struct model (±3 %) and fine-tuned with the same budget and recipe as
  ``struct_ft``;
* ``narrow``: the same architecture with fewer channels at those multiplications, from scratch.

Every run is an ordinary :func:`structconv.training.train` run in its own directory
(checkpoints, ``results.json``); finished runs are kept, an interrupted one resumes.  Counts
come from :func:`structconv.count_ops` on each deployed model; latency is measured on the
seed-0 models of every method in one interleaved loop per table (:mod:`structconv._timing`).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ._io import atomic_write_json, json_safe
from ._timing import fixed_threads, interleaved_times, median_ms
from .autotune import optimize
from .complexity import count_ops
from .convert import decompose
from .data import input_size as dataset_input_size
from .deploy import fold_batchnorm
from .models import create_model
from .serialization import load
from .training import TrainConfig, saved_meaning, train

__all__ = ["METHODS", "FROM_TRAINED", "CompareConfig", "Run", "plan_runs", "run_study", "summarize", "measure_latency"]

#: every method, in the order the study runs them (dense first: the others start from it)
METHODS = ("dense", "struct_sr", "struct_ft", "struct_direct", "prune", "svd_weight", "svd_spatial", "narrow")
#: methods that start from the trained dense model and get the fine-tune budget
FROM_TRAINED = ("struct_ft", "prune", "svd_weight", "svd_spatial")
_GROUPS = {"struct": ("struct_sr", "struct_ft", "struct_direct"), "svd": ("svd_weight", "svd_spatial")}


@dataclass
class CompareConfig:
    """The study; :meth:`validate` checks it before any work."""

    arch: str = "cifar_resnet20"
    dataset: str = "fashion-mnist"
    data_path: str = "data"
    methods: tuple = ("struct", "prune", "svd", "narrow")
    targets: tuple = ("A", "B")
    seeds: int = 3
    dense_steps: int = 468  # one epoch of Fashion-MNIST at batch 128
    finetune_fraction: float = 0.25
    curve: tuple = (0.0, 0.1, 0.25, 0.5, 1.0)  # fractions of the fine-tune budget evaluated
    batch_size: int = 128
    lr: float = 0.1
    finetune_lr: float = 0.01
    distill: float = 0.9  # distillation weight of every from-trained fine-tune (teacher: the dense model; T = 4)
    train_subset: int | None = None
    eval_subset: int | None = None
    image_size: int | None = None
    in_chans: int | None = None
    latency: bool = True
    latency_batches: tuple = (1, 32)
    compile: bool = True
    threads: int | None = None
    output_dir: str = "runs/compare"
    progress: bool = True

    @property
    def finetune_steps(self) -> int:
        return max(1, round(self.dense_steps * self.finetune_fraction))

    def expanded_methods(self) -> tuple[str, ...]:
        """``methods`` with the groups ``struct`` / ``svd`` spelled out, ``dense`` first, in study order."""
        chosen = {"dense"}
        for m in self.methods:
            chosen.update(_GROUPS.get(m, (m,)))
        return tuple(m for m in METHODS if m in chosen)

    def validate(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS and m not in _GROUPS]
        if unknown or not self.methods:
            raise ValueError(f"--methods {','.join(self.methods)!r}: choose from {', '.join((*_GROUPS, *METHODS))}")
        bad = [t for t in self.targets if t not in ("A", "B")]
        if bad or not self.targets:
            raise ValueError(f"--targets {','.join(self.targets)!r}: the paper's plans are A and B")
        for flag, value in (("--seeds", self.seeds), ("--dense-steps", self.dense_steps),
                            ("--batch-size", self.batch_size)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{flag} {value!r} must be a positive integer")
        if not 0 < self.finetune_fraction <= 1:
            raise ValueError(f"--finetune-fraction {self.finetune_fraction!r} must be in (0, 1]")
        if not all(0 <= f <= 1 for f in self.curve):
            raise ValueError(f"--curve {self.curve!r}: fractions of the fine-tune budget, in [0, 1]")
        for flag, value in (("--lr", self.lr), ("--finetune-lr", self.finetune_lr)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{flag} {value!r} must be a positive number")
        if not 0 <= self.distill <= 1:
            raise ValueError(f"--distill {self.distill!r} must be in [0, 1]")
        if not self.latency_batches or any(not isinstance(b, int) or b < 1 for b in self.latency_batches):
            raise ValueError(f"--latency-batches {self.latency_batches!r} must be positive batch sizes")
        dataset_input_size(self.dataset, image_size=self.image_size, in_chans=self.in_chans)
        from .models.plans import has_plan

        missing = [t for t in self.targets if not has_plan(self.arch, t)]
        if missing:
            raise ValueError(f"--arch {self.arch!r} has no Struct-{'/'.join(missing)} plan to match (registered plans: "
                             "structconv.models.list_models(); add one with register_model(..., plans=...))")  # fmt: skip
        if "prune" in self.expanded_methods() or "narrow" in self.expanded_methods():
            try:
                import torch_pruning  # noqa: F401
            except ImportError:
                raise ValueError("--methods prune/narrow need Torch-Pruning: pip install 'structconv[compare]'") from None

    def meaning(self) -> dict:
        """What the results depend on (a study directory refuses other settings)."""
        d = asdict(self)
        for key in ("data_path", "output_dir", "progress", "threads", "latency", "compile", "latency_batches", "methods",
                    "targets", "seeds"):  # fmt: skip
            d.pop(key)
        return d


@dataclass(frozen=True)
class Run:
    """One training run of the study."""

    method: str
    target: str | None  # "A" / "B"; None for dense
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}/s{self.seed}" if self.target is None else f"{self.method}/{self.target}/s{self.seed}"


def plan_runs(config: CompareConfig) -> list[Run]:
    """Every run of the study, in the order it runs them (all of seed 0 first)."""
    runs = []
    for seed in range(config.seeds):
        for method in config.expanded_methods():
            if method == "dense":
                runs.append(Run("dense", None, seed))
            else:
                runs.extend(Run(method, t, seed) for t in config.targets)
    return runs


# ------------------------------------------------------------------------------------------
# building each method's model
# ------------------------------------------------------------------------------------------
@dataclass
class _Study:
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
            model = create_model(self.config.arch, num_classes=self.num_classes, in_chans=self.input_size[0],
                                 struct=target)  # fmt: skip
            self._targets[target] = count_ops(decompose(model, on_unstructured="ignore"), (1, *self.input_size)).mults
        return self._targets[target]

    def fresh_dense(self) -> nn.Module:
        return create_model(self.config.arch, num_classes=self.num_classes, in_chans=self.input_size[0])

    def trained_dense(self, seed: int) -> nn.Module:
        return load(self.dense_path(seed)).eval()

    def baseline_model(self, run: Run) -> nn.Module:
        """The model a ``prune`` / ``svd_*`` / ``narrow`` run trains (deterministic, so a resumed
        run rebuilds the same structure)."""
        from . import baselines

        target = self.target_mults(run.target)
        x = self.example()
        if run.method == "narrow":
            torch.manual_seed(run.seed)
            return baselines.narrow_to_mults(self.fresh_dense, x, target)
        dense = self.trained_dense(run.seed)
        if run.method == "prune":
            return baselines.prune_to_mults(dense, x, target)
        factor = baselines.weight_svd if run.method == "svd_weight" else baselines.spatial_svd
        return factor(dense, x, target)


def _train_config(study: _Study, run: Run) -> TrainConfig:
    c = study.config
    common = dict(arch=c.arch, dataset=c.dataset, data_path=c.data_path, batch_size=c.batch_size, seed=run.seed,
                  train_subset=c.train_subset, eval_subset=c.eval_subset, image_size=c.image_size,
                  in_chans=c.in_chans, output_dir=str(study.run_dir(run)), threads=c.threads,
                  no_progress=not c.progress, quiet=not c.progress)  # fmt: skip
    scratch = dict(max_steps=c.dense_steps, lr=c.lr)
    steps = c.finetune_steps
    curve = tuple(sorted({round(f * steps) for f in c.curve if round(f * steps) < steps}))
    finetune = dict(max_steps=steps, lr=c.finetune_lr, distill=c.distill, eval_at=curve)
    if run.method == "dense":
        return TrainConfig(mode="baseline", **common, **scratch)
    if run.method == "struct_sr":
        return TrainConfig(mode="sr", struct=run.target, **common, **scratch)
    if run.method == "struct_direct":
        return TrainConfig(mode="direct", struct=run.target, **common, **scratch)
    if run.method == "struct_ft":
        return TrainConfig(mode="finetune", struct=run.target, init_from=str(study.dense_path(run.seed)), **common,
                           **finetune)  # fmt: skip
    if run.method == "narrow":
        return TrainConfig(mode="baseline", **common, **scratch)
    return TrainConfig(mode="baseline", **common, **{k: v for k, v in finetune.items()})


def _run_one(study: _Study, run: Run) -> dict:
    """Train ``run`` (or keep its finished results, or resume it); returns its results."""
    out = study.run_dir(run)
    done = out / "results.json"
    config = _train_config(study, run)
    if done.exists():
        results = json.loads(done.read_text())
        wanted, had = json_safe(config.meaning()), saved_meaning(results.get("args", {}))
        changed = sorted(k for k, v in wanted.items() if k in had and had[k] != v)
        if changed:
            raise ValueError(f"{str(done)!r} was trained with other settings ({', '.join(changed)}); move it away or "
                             "use another --output-dir")  # fmt: skip
        return results
    if (out / "checkpoint.pth").exists():
        config.resume = "auto"
    elif out.exists():
        config.overwrite = True  # only an empty or half-created run directory: nothing trained is lost
    model = teacher = None
    if run.method in ("prune", "svd_weight", "svd_spatial", "narrow"):
        model = study.baseline_model(run)
    if run.method in ("prune", "svd_weight", "svd_spatial") and config.effective_distill > 0:
        teacher = study.trained_dense(run.seed)
    if run.method == "prune" and config.resume is None:
        from .baselines import save_pruned

        out.mkdir(parents=True, exist_ok=True)
        save_pruned(model, out / "pruned_init.pth")  # Torch-Pruning's format: the structure, for load_pruned
    with contextlib.redirect_stdout(io.StringIO()):  # the study prints one line per run instead of each report
        results = train(config, model=model, teacher=teacher)
    if results is None:  # pragma: no cover - only with stop_after, which the study does not set
        raise RuntimeError(f"run {run.name} stopped early")
    return results


# ------------------------------------------------------------------------------------------
# the study
# ------------------------------------------------------------------------------------------
def _record(run: Run, results: dict, study: _Study) -> dict:
    accuracy = results["accuracy_after_decomposition"] if results.get("accuracy_after_decomposition") is not None \
        else results["accuracy_before_decomposition"]  # fmt: skip
    target = study.target_mults(run.target) if run.target else None
    curve = []
    if run.method in FROM_TRAINED:
        for row in results["history"]:
            acc = row.get("accuracy_decomposed", row["accuracy"])
            curve.append({"step": row["step"], "accuracy": acc})
    return {
        "method": run.method, "target": run.target, "seed": run.seed, "run": run.name, "accuracy": accuracy,
        "accuracy_before_decomposition": results["accuracy_before_decomposition"], "params": results["params"],
        "mults": results["mults"], "adds": results["adds"], "target_mults": target,
        "mults_vs_target": results["mults"] / target - 1 if target else None, "steps": results["steps"],
        "train_seconds": results["train_seconds"], "seconds_per_step": results["train_seconds"] / max(1, results["steps"]),
        "structure_error_max": results.get("structure_error_max"), "curve": curve,
    }  # fmt: skip


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(records: list[dict]) -> list[dict]:
    """Mean ± std over seeds of every (method, target)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], r["target"]), []).append(r)
    rows = []
    for (method, target), rs in groups.items():
        acc, acc_sd = _mean_std([r["accuracy"] for r in rs])
        row = {"method": method, "target": target, "seeds": len(rs), "accuracy_mean": acc, "accuracy_std": acc_sd}
        for key in ("params", "mults", "adds", "seconds_per_step"):
            row[key], _ = _mean_std([r[key] for r in rs])
        if target is not None:
            row["mults_vs_target"] = max((r["mults_vs_target"] for r in rs), key=abs)
        steps = sorted({p["step"] for r in rs for p in r["curve"]})
        row["curve"] = [{"step": s, **dict(zip(("accuracy_mean", "accuracy_std"),
                                               _mean_std([p["accuracy"] for r in rs for p in r["curve"] if p["step"] == s])))}
                        for s in steps]  # fmt: skip
        rows.append(row)
    return rows


def run_study(config: CompareConfig, *, say: Callable = print) -> dict:
    """Run (or resume) the study in ``config.output_dir``; writes ``compare.json`` and
    ``compare.csv`` there (and ``latency.json`` when ``config.latency``); returns the summary."""
    config.validate()
    root = Path(config.output_dir)
    if root.exists() and not root.is_dir():
        raise ValueError(f"--output-dir {str(root)!r} is a file, not a directory")
    manifest = root / "study.json"
    if manifest.exists():
        saved = json.loads(manifest.read_text())
        if saved != json_safe(config.meaning()):
            changed = sorted(k for k in saved if saved.get(k) != json_safe(config.meaning()).get(k))
            raise ValueError(f"--output-dir {str(root)!r} holds a study with other settings ({', '.join(changed)}); "
                             "use the same settings to continue it, or a new --output-dir")  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(config.meaning(), manifest, indent=1)
    size = dataset_input_size(config.dataset, image_size=config.image_size, in_chans=config.in_chans)
    study = _Study(config, root, size, say=say)
    runs = plan_runs(config)
    records = []
    for i, run in enumerate(runs, 1):
        fresh = not (study.run_dir(run) / "results.json").exists()
        say(f"[{i}/{len(runs)}] {run.name}" + ("" if fresh else " (finished earlier, kept)"))
        record = _record(run, _run_one(study, run), study)
        records.append(record)
        say(f"    accuracy {record['accuracy']:.2f} %, {record['mults']:,} mults, {record['params']:,} params, "
            f"{record['steps']} steps")  # fmt: skip
    summary = {"config": asdict(config), "input_size": list(size), "target_mults": {t: study.target_mults(t)
               for t in config.targets}, "finetune_steps": config.finetune_steps, "runs": records,
               "summary": summarize(records)}  # fmt: skip
    if config.latency:
        summary["latency"] = measure_latency(study, say=say)
        atomic_write_json(summary["latency"], root / "latency.json", indent=1)
    atomic_write_json(summary, root / "compare.json", indent=1)
    _write_csv(records, root / "compare.csv")
    return summary


def _write_csv(records: list[dict], path: Path) -> None:
    from ._io import atomic_write

    keys = [k for k in records[0] if k != "curve"]

    def write(f):
        w = csv.DictWriter(f, keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(records)

    atomic_write(path, write, "w")


# ------------------------------------------------------------------------------------------
# latency
# ------------------------------------------------------------------------------------------
def _deployed(study: _Study, run: Run) -> nn.Module:
    """The seed's deployed model of ``run``: decomposed (Struct), pruned, factorized or narrow,
    with BatchNorm folded, in eval mode."""
    out = study.run_dir(run)
    if run.method.startswith("struct") or run.method == "dense":
        # direct training saves its decomposed model as model.pth
        model = load(out / "model_decomposed.pth" if (out / "model_decomposed.pth").exists() else out / "model.pth")
    else:
        model = study.baseline_model(run)
        state = torch.load(out / "model.pth", map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict(state)
    return fold_batchnorm(model.eval())


def measure_latency(study: _Study, *, say: Callable = print, warmup: int = 3, repeats: int = 15,
                    min_time: float = 2.0) -> dict:  # fmt: skip
    """Median CPU latency of every method's seed-0 deployed model, at each batch size, eager and
    (optionally) compiled: one interleaved loop per table, channels_last, threads fixed.
    The three Struct methods share one deployed architecture per target, so it is timed once:
    in eager mode as :func:`structconv.autotune.optimize` deploys it (each layer decomposed or
    recomposed dense, whichever measured faster; the untuned model is timed beside it as
    ``"struct-A untuned"``), compiled as decomposed."""
    config = study.config
    models: dict[str, nn.Module] = {}
    for method in config.expanded_methods():
        for target in ((None,) if method == "dense" else config.targets):
            label = "dense" if method == "dense" else f"{'struct' if method.startswith('struct') else method}-{target}"
            if label not in models:
                models[label] = _deployed(study, Run(method, target, 0))
    threads = config.threads or torch.get_num_threads()
    result = {"threads": threads, "torch": torch.__version__, "models": list(models), "tables": []}
    modes = ("eager", "compiled") if config.compile else ("eager",)
    with fixed_threads(threads), torch.inference_mode():
        for mode in modes:
            if mode == "compiled":
                torch._dynamo.reset()
            for batch in config.latency_batches:
                x = torch.randn(batch, *study.input_size).contiguous(memory_format=torch.channels_last)
                fns = {}
                for label, model in models.items():
                    m = copy.deepcopy(model).to(memory_format=torch.channels_last)
                    if mode == "compiled":
                        m = torch.compile(m, options={"freezing": True})
                    elif label.startswith("struct-"):
                        # eager deployment is autotune's choice per layer (as in `structconv bench`);
                        # the untuned decomposed model is timed beside it
                        fns[f"{label} untuned"] = lambda m=m: m(x)
                        m, _ = optimize(m, x, threads=threads, cache=False)
                    m(x)
                    fns[label] = lambda m=m: m(x)
                times = interleaved_times(fns, warmup=warmup, repeats=repeats, min_time_s=min_time)
                table = {"mode": mode, "batch": batch, "rounds": len(next(iter(times.values()))),
                         "median_ms": {k: median_ms(v) for k, v in times.items()}}  # fmt: skip
                result["tables"].append(table)
                say(f"latency ({mode}, batch {batch}, {threads} threads): "
                    + ", ".join(f"{k} {v:.2f} ms" for k, v in table["median_ms"].items()))  # fmt: skip
    return result
