"""Integration test on the real Fashion-MNIST files (Debian's dataset-fashion-mnist).

Step 1 with Structural Regularization for a few hundred steps, then Step 2: the decomposed
model must be as accurate as the structured one (within 0.5 points) and far above chance.
"""

import json
import os

import pytest

from structconv.cli import main as cli
from structconv.data import DEBIAN_FASHION_MNIST

HAVE_DATA = (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_DATA and os.environ.get("CI") != "true",
                    reason=f"needs Debian's dataset-fashion-mnist in {DEBIAN_FASHION_MNIST} (apt-get install dataset-fashion-mnist)")  # fmt: skip
def test_struct_a_resnet20_decomposes_without_losing_accuracy(tmp_path):
    argv = ["train", "--arch", "cifar_resnet20", "--mode", "sr", "--struct", "A", "--lam", "2",
            "--dataset", "fashion-mnist", "--data-path", str(tmp_path / "data"), "--max-steps", "250",
            "--batch-size", "64", "--lr", "0.1", "--eval-subset", "2000", "--threads", "1",
            "--output-dir", str(tmp_path / "run"), "--no-progress", "--quiet"]  # fmt: skip
    assert cli(argv) == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    before, after = res["accuracy_before_decomposition"], res["accuracy_after_decomposition"]
    assert res["steps"] == 250
    assert before > 70.0 and after > 70.0  # chance is 10 %
    assert abs(after - before) <= 0.5, (before, after, res["structure_error_mean"])
    assert res["structure_error_mean"] < 0.05
    assert res["params"] < 0.6 * 269_722  # the deployed model is the ~2x smaller Struct-A ResNet20
