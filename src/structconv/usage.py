"""Which Conv/Linear layers are safe to replace: find parameters used outside their own forward.

:func:`structconv.decompose` swaps a structured layer for a sum-pool + small layer whose
``.weight`` is the small ``alpha``.  That is exact only if every use of the layer's parameters
goes through the layer's own ``forward``.  Some models read a child's weight themselves:
torchvision's Swin calls ``F.linear(x, self.qkv.weight, ...)`` in the attention block, and
``nn.MultiheadAttention`` does the same with ``out_proj``.  Swapping such a child gives a
shape error at best and a silently different function at worst.

:func:`find_unsafe_layers` runs one forward and watches every tensor argument of every torch
function and Tensor method (a :class:`torch.overrides.TorchFunctionMode`) together with a stack
of the modules currently running: a layer's parameter used while that layer is not running is
used outside its forward.  :func:`find_unsafe_layers_static` gives the same answer from a
``torch.fx`` trace, without an input, where the model can be traced.

Both return ``{qualified_name: reason}``; pass ``{name: None for name in unsafe}`` as
``overrides`` to :func:`structconv.plan` / :func:`structconv.structurize` to keep them dense.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

__all__ = ["candidate_layers", "find_unsafe_layers", "find_unsafe_layers_static", "structural_reasons"]


def _metadata_functions() -> frozenset:
    """Tensor attribute reads and methods that look only at metadata (shape, dtype, device...).

    They reach ``__torch_function__`` like any other call (``p.shape`` is
    ``Tensor.shape.__get__``), but the value they read is the same for a dense weight and for
    its structured replacement's, except the shape, which a parent only reads to size things
    (and the dense-equivalent shape is kept on the decomposed layer as ``kernel_size`` etc.).
    """
    names_get = (
        "shape",
        "dtype",
        "device",
        "ndim",
        "layout",
        "requires_grad",
        "is_cuda",
        "is_sparse",
        "is_quantized",
        "is_meta",
        "is_mkldnn",
        "is_nested",
        "names",
        "is_leaf",
        "grad_fn",
        "itemsize",
        "nbytes",
        "is_xpu",
        "is_mps",
        "is_cpu",
    )
    methods = (
        "size",
        "dim",
        "numel",
        "nelement",
        "element_size",
        "is_floating_point",
        "is_complex",
        "is_contiguous",
        "stride",
        "storage_offset",
        "data_ptr",
        "get_device",
        "__len__",
        "ndimension",
        "is_signed",
        "_is_view",
    )
    found = set()
    for name in names_get:
        attr = getattr(Tensor, name, None)
        if attr is not None and hasattr(attr, "__get__"):
            found.add(attr.__get__)
    for name in methods:
        attr = getattr(Tensor, name, None)
        if attr is not None:
            found.add(attr)
    return frozenset(found)


_METADATA = _metadata_functions()


def candidate_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every ``nn.Conv1d/2d/3d`` (any ``_ConvNd``, transposed too) and ``nn.Linear``, subclasses included."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))}


def _resolve_candidates(model: nn.Module, candidates) -> dict[str, nn.Module]:
    if candidates is None:
        return candidate_layers(model)
    if isinstance(candidates, Mapping):
        return dict(candidates)
    return {name: model.get_submodule(name) for name in candidates}


def _owner_of(name: str, candidates: Mapping[str, nn.Module]) -> str | None:
    """The innermost candidate whose subtree holds the parameter/module ``name`` (dotted path)."""
    parts = name.split(".")
    for i in range(len(parts), -1, -1):
        prefix = ".".join(parts[:i])
        if prefix in candidates:
            return prefix
    return None


def _add(result: dict[str, str], name: str, reason: str) -> None:
    if name in result:
        if reason not in result[name].split("; "):
            result[name] += "; " + reason
    else:
        result[name] = reason


def structural_reasons(model: nn.Module, candidates: Mapping[str, nn.Module] | None = None) -> dict[str, str]:
    """Reasons visible without running the model: tied parameters, a module registered under
    several names, and a ``weight`` that is not a Parameter (derived by a hook, e.g. the old
    ``torch.nn.utils.weight_norm``)."""
    cands = candidate_layers(model) if candidates is None else dict(candidates)
    result: dict[str, str] = {}
    names_of: dict[int, list[str]] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(p), []).append(pname)
    for names in names_of.values():
        owners = {}
        for pname in names:
            owners.setdefault(_owner_of(pname, cands), pname)
        if len(owners) < 2:
            # several names under one owner: the module itself is registered twice (below)
            continue
        for owner, pname in owners.items():
            if owner is None:
                continue
            others = [q for o, q in owners.items() if o != owner]
            _add(result, owner, f"shares its parameter {pname.rpartition('.')[2]} with {', '.join(others)}")
    module_names: dict[int, list[str]] = {}
    for mname, m in model.named_modules(remove_duplicate=False):
        module_names.setdefault(id(m), []).append(mname)
    for name, m in cands.items():
        names = module_names.get(id(m), [name])
        if len(names) > 1:
            _add(result, name, f"the same module is registered under several names ({', '.join(names)})")
        weight = getattr(m, "weight", None)
        if isinstance(weight, Tensor) and not isinstance(weight, nn.Parameter) and not _is_parametrized(m):
            _add(result, name, "its weight is not a Parameter (a hook derives it, e.g. weight_norm)")
    return result


def _is_parametrized(m: nn.Module) -> bool:
    return bool(getattr(m, "parametrizations", None))


class _UsageMode(TorchFunctionMode):
    """Records, for each watched parameter, the modules that use it while its owner is not running."""

    def __init__(self, owners: dict[int, str], running: dict[str, int], stack: list[str]) -> None:
        super().__init__()
        self.owners = owners  # id(parameter) -> owning candidate
        self.running = running  # candidate -> depth of its forward calls in progress
        self.stack = stack  # names of the modules whose forward is in progress, innermost last
        self.outside: dict[str, list[str]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _METADATA:
            for leaf in pytree.tree_leaves((args, kwargs)):
                if isinstance(leaf, Tensor):
                    owner = self.owners.get(id(leaf))
                    if owner is not None and not self.running.get(owner):
                        by = self.stack[-1] if self.stack else None
                        users = self.outside.setdefault(owner, [])
                        if by not in users:
                            users.append(by)
        return func(*args, **kwargs)


def _call(model: nn.Module, example_inputs):
    if isinstance(example_inputs, Mapping):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def _who(name: str | None) -> str:
    if name is None:
        return "code outside any module"
    return "the model's own forward" if name == "" else name


def find_unsafe_layers(
    model: nn.Module,
    example_inputs: Any,
    *,
    candidates: Iterable[str] | Mapping[str, nn.Module] | None = None,
) -> dict[str, str]:
    """Layers of ``model`` that cannot be swapped for their decomposed form, with the reason.

    Runs ``model(example_inputs)`` once (a tensor, a tuple of positional arguments, or a dict of
    keyword arguments) in eval mode without gradients, and restores every module's training
    flag afterwards.  ``candidates`` are qualified names (default: every Conv and Linear layer,
    subclasses included).  A candidate is unsafe when

    * one of its parameters is used (by a torch function or a Tensor method other than
      metadata reads such as ``.shape``/``.dtype``/``.device``) while its forward is not
      running -- e.g. a parent calling ``F.linear(x, self.qkv.weight)``;
    * its forward never ran on the example input (nothing shows how it is used);
    * it shares a parameter with another module, is registered under several names, or its
      ``weight`` is not a Parameter (see :func:`structural_reasons`).

    Uses inside a candidate's own forward are fine however deep (``F.conv2d(x, self.weight)``,
    a parametrization computing ``weight``, a forward pre-hook of the layer), and so are
    repeated calls.  A forward called as ``layer.forward(x)`` instead of ``layer(x)`` counts as
    running too.  Returns ``{qualified_name: reason}``; ``{}`` when every candidate is safe.
    """
    cands = _resolve_candidates(model, candidates)
    result = structural_reasons(model, cands)
    owners: dict[int, str] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        owner = _owner_of(pname, cands)
        if owner is not None:
            owners.setdefault(id(p), owner)
    running: dict[str, int] = {name: 0 for name in cands}
    ran: set[str] = set()
    stack: list[str] = []
    handles = []
    wrapped: list[nn.Module] = []
    training = {m: m.training for m in model.modules()}

    def push(name):
        def hook(module, args, kwargs=None):
            stack.append(name)

        return hook

    def pop(name):
        def hook(module, args, output, kwargs=None):
            if stack and stack[-1] == name:
                stack.pop()
            elif name in stack:  # an exception unwound inner modules
                del stack[len(stack) - 1 - stack[::-1].index(name) :]

        return hook

    def wrap(name, module):
        forward = module.forward  # bound method, or an instance attribute set by someone else
        if "forward" in module.__dict__:
            patched[module] = module.__dict__["forward"]

        def running_forward(*args, **kwargs):
            running[name] += 1
            ran.add(name)
            try:
                return forward(*args, **kwargs)
            finally:
                running[name] -= 1

        module.__dict__["forward"] = running_forward
        wrapped.append(module)

    patched: dict[nn.Module, Any] = {}

    def enter(name):
        def hook(module, args):
            running[name] += 1  # pre-hooks of the layer (weight_norm) run inside its call

        return hook

    def leave(name):
        def hook(module, args, output):
            running[name] -= 1

        return hook

    mode = _UsageMode(owners, running, stack)
    try:
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(push(name), prepend=True))
            handles.append(module.register_forward_hook(pop(name), always_call=True))
        for name, module in cands.items():
            handles.append(module.register_forward_pre_hook(enter(name), prepend=True))
            handles.append(module.register_forward_hook(leave(name), always_call=True))
            wrap(name, module)
        model.eval()
        with torch.no_grad(), mode:
            _call(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
        for module in wrapped:
            del module.__dict__["forward"]
            if module in patched:
                module.__dict__["forward"] = patched[module]
        for m, flag in training.items():
            m.training = flag

    for name, users in mode.outside.items():
        _add(result, name, f"its parameters are used outside its own forward (by {', '.join(map(_who, users))})")
    for name in cands:
        if name not in ran:
            _add(result, name, "its forward never ran on the example input")
    return {name: result[name] for name in cands if name in result}


def find_unsafe_layers_static(
    model: nn.Module, *, candidates: Iterable[str] | Mapping[str, nn.Module] | None = None
) -> dict[str, str] | None:
    """:func:`find_unsafe_layers` without an input, from a ``torch.fx.symbolic_trace`` of the
    model in eval mode with the candidates as leaves; ``None`` when the model cannot be traced.

    A ``get_attr`` node reading a candidate's parameter (other than for ``.shape``/``.dtype``/
    ``.device``/``.size()``) is a use outside its forward; a candidate never called as a
    ``call_module`` node never runs.  Control flow on the input is frozen by the trace, so the
    answer can differ from the dynamic one where the model branches.
    """
    import torch.fx as fx

    cands = _resolve_candidates(model, candidates)
    leaves = {id(m) for m in cands.values()}

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return id(m) in leaves or super().is_leaf_module(m, qualname)

    training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        graph = _Tracer().trace(model)
    except Exception:  # noqa: BLE001 - any failure to trace means "no static answer"
        return None
    finally:
        for m, flag in training.items():
            m.training = flag
    result = structural_reasons(model, cands)
    called: set[str] = set()
    outside: dict[str, list[str]] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            owner = _owner_of(str(node.target), cands)
            if owner is not None:
                called.add(owner)
        elif node.op == "get_attr":
            owner = _owner_of(str(node.target), cands)
            if owner is None or str(node.target) == owner:
                continue
            if node.users and all(_metadata_use(user, node) for user in node.users):
                continue
            users = outside.setdefault(owner, [])
            where = _fx_module_of(node)
            if where not in users:
                users.append(where)
    for name, users in outside.items():
        _add(result, name, f"its parameters are used outside its own forward (by {', '.join(map(_who, users))})")
    for name in cands:
        if name not in called:
            _add(result, name, "its forward never runs in the traced graph")
    return {name: result[name] for name in cands if name in result}


_METADATA_ATTRS = {"shape", "dtype", "device", "ndim", "requires_grad", "layout", "is_cuda"}
_METADATA_METHODS = {"size", "dim", "numel", "is_floating_point", "is_contiguous", "stride"}


def _metadata_use(user, node) -> bool:
    """Whether the fx node ``user`` only reads metadata of ``node`` (``w.shape``, ``w.size()``)."""
    if user.op == "call_function" and user.target is getattr and user.args[0] is node:
        return len(user.args) > 1 and user.args[1] in _METADATA_ATTRS
    if user.op == "call_method" and user.args and user.args[0] is node:
        return user.target in _METADATA_METHODS
    return False


def _fx_module_of(node) -> str | None:
    """The module whose forward a traced node came from (fx records the module stack)."""
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1]
        return path[0] if isinstance(path, tuple) else str(path)
    return None
