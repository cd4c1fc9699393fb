"""The package's shape, checked: library apart from commands, no import cycles, and the two
extension points (a sum-pool backend, a model family) each one registration away."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

import structconv as sc
from structconv import pooling
from structconv.autotune import _pool_variants
from structconv.models import create_model, default_input_size, list_models, register_model, unregister_model
from structconv.models.plans import has_plan

from .conftest import float64_reference, rel_err

SRC = Path(sc.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SRC.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every structconv module ``name`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "structconv")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").split(".")[0] == "structconv":
                target = node.module
            else:
                continue
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            found.update(subs or [target])
    return {m for m in found if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_commands_are_thin_and_apart():
    graph = _graph()
    commands = {m for m in graph if m.startswith("structconv.cli.") and not m.split(".")[-1].startswith("_")}
    assert {"structconv.cli.train", "structconv.cli.bench", "structconv.cli.export"} <= commands
    for name, deps in graph.items():
        if not name.startswith("structconv.cli"):
            assert not {d for d in deps if d.startswith("structconv.cli")}, f"library module {name} imports the CLI"
        elif name in commands:
            assert not deps & (commands - {name}), f"command {name} imports another command: {deps & commands}"


def test_only_the_cli_reads_sys_argv():
    for name, path in _modules().items():
        if not name.startswith("structconv.cli"):
            assert "sys.argv" not in path.read_text(), f"{name} reads sys.argv"


# ---- a sum-pool backend is one registration -----------------------------------------------
def _toy_channel_sum(x, spec, constants, stride=()):
    """The channel pool as a grouped 1-D convolution with ones: a different kernel, same sums."""
    b, ch = x.shape[:2]
    per, w = ch // spec.groups, spec.channel_window
    flat = x.movedim(1, -1).reshape(-1, spec.groups, per)
    out = flat.unfold(-1, w, 1).sum(-1)
    return out.reshape(b, *x.shape[2:], -1).movedim(-1, 1)


@pytest.fixture
def toy_backend():
    backend = pooling.register_backend(pooling.SumPoolBackend(
        "toy", "channel", "unfold + sum (a test backend)", frozenset({torch.float32, torch.float64}),
        applies=lambda spec, x: True, prefer=lambda spec, x: False, run=_toy_channel_sum,
    ), before="sum")  # fmt: skip
    yield backend
    del pooling.BACKENDS["channel"]["toy"]


@pytest.mark.parametrize("groups", [1, 2])
def test_a_registered_backend_runs_everywhere(toy_backend, groups):
    torch.manual_seed(0)
    layer = sc.StructuredConv2d(8, 6, 3, padding=1, groups=groups, c=2, n=2).project_()
    dec = layer.decompose()
    x = torch.randn(2, 8, 7, 7)
    assert "toy" in pooling.backend_names("channel")
    # the module and the functional API run it, and autotune measures it
    dec.pool.channel_method = "toy"
    assert dec.pool.backends(x)[0] is toy_backend
    assert rel_err(dec(x), float64_reference(layer, x)) < 1e-5
    direct = sc.sum_pool(x, dec.pool.channel_window, dec.pool.window, groups=groups, pad=dec.pool.pad,
                         channel_method="toy")  # fmt: skip
    assert rel_err(direct, sc.sum_pool(x, dec.pool.channel_window, dec.pool.window, groups=groups, pad=dec.pool.pad)) < 1e-6
    assert any(v.startswith("toy") for v in _pool_variants(dec, x))
    # 'auto' still prefers the built-in backends: the toy one never says it is preferred
    dec.pool.channel_method = "auto"
    assert dec.pool.backends(x)[0].name != "toy"


def test_backend_names_are_checked():
    with pytest.raises(ValueError, match="taken"):
        pooling.register_backend(pooling.BACKENDS["channel"]["sum"])
    with pytest.raises(ValueError, match="channel_method='nope'"):
        sc.SumPool(3, (1, 1)).channel_method = "nope"


# ---- a model family is one registration ---------------------------------------------------
class _ToyNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_chans, width, 3, padding=1)
        self.body = nn.Conv2d(width, width, 3, padding=1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        x = torch.relu(self.body(torch.relu(self.stem(x))))
        return self.head(x.mean((2, 3)))


@pytest.fixture
def toy_family():
    def rule(name, layer):  # Struct-A: only the body, channels halved
        return sc.StructureSpec(layer.in_channels // 2, 3) if name == "body" else None

    register_model("toy_net", lambda num_classes=None, in_chans=None, pretrained=False:
                   _ToyNet(num_classes or 10, in_chans or 3), input_size=(3, 12, 12), plans={"A": rule})  # fmt: skip
    yield "toy_net"
    unregister_model("toy_net")


def test_a_registered_family_works_everywhere(toy_family, tmp_path):
    assert toy_family in list_models() and default_input_size(toy_family) == (3, 12, 12)
    assert has_plan(toy_family, "A") and not has_plan(toy_family, "B")
    model = create_model(toy_family, num_classes=4, struct="A")
    assert isinstance(model.body, sc.StructuredConv2d) and model.body.c == 8
    assert type(model.stem) is nn.Conv2d and type(model.head) is nn.Linear
    from structconv.profiling import profile

    counts = profile(toy_family, struct="A", num_classes=4)
    assert counts["input_size"] == [3, 12, 12] and counts["mults"] < profile(toy_family, num_classes=4)["mults"]
    # a checkpoint names the family, and loading rebuilds it from the registry
    sc.save(sc.decompose(model, on_unstructured="ignore"), tmp_path / "toy.pth",
            model_args={"arch": toy_family, "num_classes": 4})  # fmt: skip
    loaded = sc.load(tmp_path / "toy.pth")
    assert isinstance(loaded.body, sc.DecomposedConv2d)
    with pytest.raises(ValueError, match="already registered"):
        register_model(toy_family, lambda **kw: _ToyNet())
