"""``finetune_from_dense``: the documented fine-tune recipe on a user's own ``nn.Module`` and
``DataLoader`` -- structured throughout, decomposes exactly, clear errors for bad data."""

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

import structconv as sc

from ._synthetic import make_fashion_mnist


class SmallCNN(nn.Module):  # a model structconv has no name for
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
        )  # fmt: skip
        self.head = nn.Linear(32 * 16, 10)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


@pytest.fixture(scope="module")
def loader(tmp_path_factory):
    root = make_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=256, n_test=32)
    data = datasets.FashionMNIST(root, train=True, transform=transforms.ToTensor())
    return DataLoader(data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def trained(loader):
    torch.manual_seed(0)
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(2):
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


def test_the_recipe_ends_structured_decomposes_exactly_and_leaves_dense_alone(trained, loader):
    before = copy.deepcopy(trained.state_dict())
    model, report = sc.finetune_from_dense(trained, loader, ratio=2.0, steps=6, calibration_batches=4, progress=False)
    assert all(torch.equal(before[k], trained.state_dict()[k]) for k in before)
    assert report is not None and len(report.layers) == len(sc.structure_errors(model)) >= 2
    assert max(sc.structure_errors(model).values()) < 1e-5
    deployed = sc.decompose(model)
    x = next(iter(loader))[0]
    with torch.no_grad():
        assert (deployed(x) - model(x)).abs().max().item() <= 1e-4 * model(x).abs().max().item()
    dense_mults = sc.count_ops(trained, (1, 1, 28, 28)).mults
    assert sc.count_ops(deployed, (1, 1, 28, 28)).mults <= 0.55 * dense_mults
    accuracy = sum((model(x).argmax(1) == y).sum().item() for x, y in loader) / len(loader.dataset)
    assert accuracy > 0.5  # the learnable synthetic classes survive compression (chance: 0.1)


def test_without_calibration_it_projects(trained, loader):
    model, report = sc.finetune_from_dense(trained, loader, steps=2, calibration_batches=0, progress=False)
    assert report is None and max(sc.structure_errors(model).values()) < 1e-5


@pytest.mark.parametrize(
    ("data", "culprit"),
    [
        ([], "data is empty"),
        ([(torch.randn(4, 3, 28, 28), torch.zeros(4, dtype=torch.long))], "batch of shape (4, 3, 28, 28) does not fit"),
        ([(torch.full((4, 1, 28, 28), float("inf")), torch.zeros(4, dtype=torch.long))], "not finite"),
        ([(torch.randn(4, 1, 28, 28), torch.zeros(3, dtype=torch.long))], "targets of shape (3,)"),
        ([torch.randn(4, 1, 28, 28)], "(inputs, targets) pairs"),
    ],
)
def test_bad_data_is_one_line_naming_it(trained, data, culprit):
    with pytest.raises(ValueError, match="finetune_from_dense: data") as err:
        sc.finetune_from_dense(trained, data, steps=1, progress=False)
    assert culprit in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("kwargs", "culprit"), [({"steps": 0}, "steps=0"), ({"steps": 1, "lr": -1}, "lr=-1"),
                                                 ({"steps": 1, "calibration_batches": 1}, "calibration_batches=1")])  # fmt: skip
def test_bad_arguments_name_the_argument(trained, loader, kwargs, culprit):
    with pytest.raises(ValueError, match=culprit):
        sc.finetune_from_dense(trained, loader, progress=False, **kwargs)
