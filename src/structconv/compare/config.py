"""The study's options (:class:`CompareConfig`) and its runs (:class:`Run`, :func:`plan_runs`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .. import validation as v
from ..data import DATASETS
from ..data import input_size as dataset_input_size
from .methods import expand_methods, selectable_names

__all__ = ["CompareConfig", "Run", "plan_runs"]

_NOT_MEANING = (
    "data_path",
    "output_dir",
    "progress",
    "threads",
    "latency",
    "compile",
    "latency_batches",
    "methods",
    "targets",
    "seeds",
)


@dataclass
class CompareConfig:
    """The study; :meth:`validate` checks it before any work."""

    arch: str = v.option("cifar_resnet20", v.Text())
    dataset: str = v.option("fashion-mnist", v.Choice(DATASETS))
    data_path: str = v.option("data", v.PathArg())
    methods: tuple = v.option(("struct", "prune", "svd", "narrow"), v.Items(v.Choice(selectable_names)))
    targets: tuple = v.option(("A", "B"), v.Items(v.Choice(("A", "B"))))
    seeds: int = v.option(3, v.Integer(low=1))
    dense_steps: int = v.option(468, v.Integer(low=1))  # one epoch of Fashion-MNIST at batch 128
    finetune_fraction: float = v.option(0.25, v.Number(low=0.0, high=1.0, low_open=True))
    curve: tuple = v.option((0.0, 0.1, 0.25, 0.5, 1.0), v.Items(v.Number(low=0.0, high=1.0)))  # fine-tune fractions
    batch_size: int = v.option(128, v.Integer(low=1))
    lr: float = v.option(0.1, v.Number(low=0.0, low_open=True))
    finetune_lr: float = v.option(0.01, v.Number(low=0.0, low_open=True))
    distill: float = v.option(0.9, v.Number(low=0.0, high=1.0))  # every from-trained fine-tune's (teacher: dense; T=4)
    train_subset: int | None = v.option(None, v.Integer(low=1, optional=True))
    eval_subset: int | None = v.option(None, v.Integer(low=1, optional=True))
    image_size: int | None = v.option(None, v.Integer(low=1, optional=True))
    in_chans: int | None = v.option(None, v.Choice((1, 3), optional=True))
    latency: bool = True
    latency_batches: tuple = v.option((1, 32), v.Items(v.Integer(low=1)))
    compile: bool = True
    threads: int | None = v.option(None, v.Integer(low=1, optional=True))
    output_dir: str = v.option("runs/compare", v.PathArg())
    progress: bool = True

    @property
    def finetune_steps(self) -> int:
        return max(1, round(self.dense_steps * self.finetune_fraction))

    def expanded_methods(self) -> tuple[str, ...]:
        """``methods`` with the groups (``struct``, ``svd``) spelled out, ``dense`` first, in study order."""
        return expand_methods(self.methods)

    def validate(self) -> None:
        v.check_fields(self)
        dataset_input_size(self.dataset, image_size=self.image_size, in_chans=self.in_chans)
        from ..models.presets import has_preset

        missing = [t for t in self.targets if not has_preset(self.arch, t)]
        if missing:
            raise v.ArgumentError(
                "{arch}={value} has no Struct-{missing} preset to match (registered presets: "
                "structconv.models.list_models(); add one with register_model(..., presets=...))",
                value=repr(self.arch),
                missing="/".join(missing),
            )
        from .methods import get_method

        for name in self.expanded_methods():
            get_method(name).check_available()

    def meaning(self) -> dict:
        """What the results depend on (a study directory refuses other settings)."""
        d = asdict(self)
        for key in _NOT_MEANING:
            d.pop(key)
        return d


@dataclass(frozen=True)
class Run:
    """One training run of the study."""

    method: str
    target: str | None  # "A" / "B"; None for the dense baseline
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}/s{self.seed}" if self.target is None else f"{self.method}/{self.target}/s{self.seed}"


def plan_runs(config: CompareConfig) -> list[Run]:
    """Every run of the study, in the order it runs them (all of seed 0 first)."""
    from .methods import get_method

    runs = []
    for seed in range(config.seeds):
        for name in config.expanded_methods():
            if get_method(name).per_target:
                runs.extend(Run(name, t, seed) for t in config.targets)
            else:
                runs.append(Run(name, None, seed))
    return runs
