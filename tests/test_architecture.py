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
from structconv.autotune import pool_variants
from structconv.models import create_model, default_input_size, list_models, register_model, unregister_model
from structconv.models.presets import has_preset

from .conftest import float64_reference, rel_err

SRC = Path(sc.__file__).resolve().parent
ROOT = SRC.parents[1]
#: the places outside the package that hold Python code
SCRIPTS = ("benchmarks", "tests", "examples")


def _module_name(path: Path) -> str:
    base = SRC.parent if path.is_relative_to(SRC) else ROOT
    parts = path.relative_to(base).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    """The package's modules."""
    return {_module_name(p): p for p in SRC.rglob("*.py")}


def _repository() -> dict[str, Path]:
    """Every Python file of the repository: the package, and the scripts and tests beside it."""
    found = dict(_modules())
    for top in SCRIPTS:
        for p in (ROOT / top).rglob("*.py"):
            found[_module_name(p)] = p
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node, except those under ``if TYPE_CHECKING:`` (imports for annotations only, which
    never run; import-linter's ``exclude_type_checking_imports`` reads them the same way)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module of ``known`` that ``name`` imports, at module level or inside functions.
    A script's sibling imports (``from common import x`` beside ``common.py``) resolve to the sibling."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()

    def add(target: str, names=()):
        if not path.is_relative_to(SRC) and target not in known and target.split(".")[0] != "structconv":
            sibling = f"{package}.{target}" if package else target
            target = sibling if sibling in known else target
        subs = [f"{target}.{a}" for a in names if f"{target}.{a}" in known]
        found.update(subs or [target])

    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                add(".".join(base + ([node.module] if node.module else [])), [a.name for a in node.names])
            elif node.module:
                add(node.module, [a.name for a in node.names])
    return {m for m in found if m in known and m != name}


def _graph(modules: dict[str, Path] | None = None) -> dict[str, set[str]]:
    mods = _modules() if modules is None else modules
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycles_anywhere_in_the_repository():
    graph = _graph(_repository())
    assert any(n.startswith("benchmarks.") for n in graph) and any(n.startswith("tests.") for n in graph)
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


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


def _sys_path_edits(path: Path) -> list[int]:
    """Lines of ``path`` that change ``sys.path`` (assignment, insert/append/extend, site.addsitedir)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        target = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value if node.func.attr in ("insert", "append", "extend", "remove") else None
            if node.func.attr == "addsitedir":
                lines.append(node.lineno)
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            target = next((t for t in targets if ast.unparse(t).startswith("sys.path")), None)
        if target is not None and ast.unparse(target) == "sys.path":
            lines.append(node.lineno)
    return sorted(lines)


def test_no_sys_path_edits_in_benchmarks_or_tests():
    offenders = {
        str(p.relative_to(ROOT)): lines
        for top in ("benchmarks", "tests")
        for p in (ROOT / top).rglob("*.py")
        if (lines := _sys_path_edits(p))
    }
    assert not offenders, f"sys.path edited in {offenders}; install the package or move the helper"


def test_the_sys_path_check_sees_an_edit(tmp_path):
    sample = tmp_path / "s.py"
    sample.write_text("import sys\nsys.path.insert(0, 'x')\nsys.path += ['y']\nother.insert(0, 1)\n")
    assert _sys_path_edits(sample) == [2, 3]


def _private_imports(modules: dict[str, Path]) -> list[str]:
    """``module: name`` for every underscore name one structconv module imports from another
    (dunders and private *modules* such as ``_io`` are fine: their public names are the API)."""
    found = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")
                source = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "structconv" or source == name:
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__") and f"{source}.{alias.name}" not in modules:
                    found.append(f"{name}: {alias.name} from {source}")
    return found


def test_no_private_name_is_imported_across_modules():
    scripts = {n: p for n, p in _repository().items() if n.startswith("benchmarks.") or n.startswith("examples.")}
    offenders = _private_imports({**_modules(), **scripts})
    assert not offenders, offenders


def test_the_private_import_check_sees_one(tmp_path):
    sample, private = tmp_path / "x.py", tmp_path / "_io.py"
    sample.write_text("from structconv.convert import _worst, decompose\nfrom structconv import _io\n")
    private.write_text("")
    assert _private_imports({"structconv.x": sample, "structconv._io": private}) == [
        "structconv.x: _worst from structconv.convert"
    ]


# ---- mode and method names are read by their registries only -----------------------------
#: the modules that own a registry of names (and may spell those names)
REGISTRIES = {"structconv.training.recipes", "structconv.compare.methods"}


def _mentions_selector(node: ast.AST) -> bool:
    """Does an expression read a mode or a method (``config.mode``, ``run.method``, ``r["method"]``)?"""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and ("mode" in sub.id or "method" in sub.id):
            return True
        if isinstance(sub, ast.Attribute) and ("mode" in sub.attr or "method" in sub.attr):
            return True
        if isinstance(sub, ast.Constant) and sub.value in ("mode", "method"):
            return True
    return False


def _string_tests(path: Path, names: set[str]) -> list[str]:
    """Where ``path`` compares a mode/method with a registered name, or keys a dict by them."""
    found = []

    def constants(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        return set()

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            named = set().union(*(constants(s) for s in sides)) & names
            if named and any(_mentions_selector(s) for s in sides if not constants(s)):
                found.append(f"{path.name}:{node.lineno} {ast.unparse(node)[:80]}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
            "startswith",
            "endswith",
        ):
            if any(constants(a) for a in node.args) and _mentions_selector(node.func.value):
                prefixes = set().union(*(constants(a) for a in node.args))
                if any(n.startswith(p) or n.endswith(p) for n in names for p in prefixes):
                    found.append(f"{path.name}:{node.lineno} {ast.unparse(node)[:80]}")
        elif isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
            if len(keys & names) >= 2:
                found.append(f"{path.name}:{node.lineno} a dict keyed by {sorted(keys & names)}")
    return found


def _registered_names() -> set[str]:
    from structconv.compare import method_names, selectable_names
    from structconv.training import recipe_names

    return set(recipe_names()) | set(method_names()) | set(selectable_names())


def test_no_module_tests_a_mode_or_method_name_outside_its_registry():
    names = _registered_names()
    offenders = [hit for name, path in _modules().items() if name not in REGISTRIES for hit in _string_tests(path, names)]
    assert not offenders, offenders


def test_the_name_check_sees_each_kind_of_test(tmp_path):
    sample = tmp_path / "x.py"
    sample.write_text(
        "if config.mode == 'finetune': pass\n"
        "if r['method'] in ('prune', 'svd_weight'): pass\n"
        "ok = run.method.startswith('struct')\n"
        "style = {'dense': 1, 'prune': 2}\n"
        "if choice == 'dense': pass\n"  # not a mode or a method: allowed
    )
    hits = _string_tests(sample, _registered_names())
    assert [h.split()[0] for h in hits] == ["x.py:1", "x.py:2", "x.py:3", "x.py:4"]


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
    assert any(v.startswith("toy") for v in pool_variants(dec, x))
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
                   _ToyNet(num_classes or 10, in_chans or 3), input_size=(3, 12, 12), presets={"A": rule})  # fmt: skip
    yield "toy_net"
    unregister_model("toy_net")


def test_a_registered_family_works_everywhere(toy_family, tmp_path):
    assert toy_family in list_models() and default_input_size(toy_family) == (3, 12, 12)
    assert has_preset(toy_family, "A") and not has_preset(toy_family, "B")
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
