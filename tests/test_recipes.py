"""A recipe registered from outside the package trains, resumes and reports through
``structconv.training.train`` with no other file changed (the extension point of issue 18)."""

import json

import pytest
import torch

from structconv.serialization import read_checkpoint
from structconv.training import (
    Recipe,
    TrainConfig,
    format_report,
    recipe_names,
    register_recipe,
    train,
    unregister_recipe,
)

from ._synthetic import make_fashion_mnist


class WeightPenalty(Recipe):
    """Toy recipe: cross-entropy plus an L1 penalty on every weight, logged as the regularizer,
    and a count of the optimizer steps it saw (state a recipe may keep, rebuilt on resume)."""

    name = "toy_l1"
    summary = "dense model, cross-entropy + 1e-3 * L1 of the weights"

    def prepare(self, run):
        self.steps_seen = 0

    def loss(self, run, logits, images, targets):
        loss, task, _ = super().loss(run, logits, images, targets)
        l1 = sum(p.abs().sum() for n, p in run.model.named_parameters() if n.endswith("weight"))
        return loss + 1e-3 * l1, task, l1.detach()

    def after_backward(self, run, reg):
        self.steps_seen += 1
        return reg


@pytest.fixture
def toy_recipe():
    register_recipe(WeightPenalty)
    yield WeightPenalty
    unregister_recipe(WeightPenalty.name)


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    return make_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=96, n_test=32)


def config(out, data, **extra):
    return TrainConfig(
        mode="toy_l1", epochs=2, batch_size=32, eval_subset=32, threads=1, print_freq=1,
        data_path=str(data), output_dir=str(out), no_progress=True, quiet=True, **extra,
    )  # fmt: skip


def test_a_registered_recipe_trains_resumes_and_reports(tmp_path, fmnist, toy_recipe):
    assert "toy_l1" in recipe_names()
    train(config(tmp_path / "full", fmnist))
    log = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    logged = [row["reg_loss"] for row in log if "reg_loss" in row]
    assert logged and all(r > 0 for r in logged)  # the recipe's loss term was the one used

    train(config(tmp_path / "cut", fmnist, stop_after=2))
    assert not (tmp_path / "cut" / "results.json").exists()
    train(config(tmp_path / "cut", fmnist, resume="auto"))
    a = read_checkpoint(tmp_path / "full" / "model.pth")["state_dict"]
    b = read_checkpoint(tmp_path / "cut" / "model.pth")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    results = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert results["mode"] == "toy_l1" and results["steps"] == 6
    assert "toy_l1" in format_report(results)


def test_an_unregistered_mode_is_refused_by_name(tmp_path, fmnist):
    with pytest.raises(ValueError, match="mode='toy_l1' must be one of"):
        config(tmp_path, fmnist).validate()
