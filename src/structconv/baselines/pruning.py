"""Channel pruning with Torch-Pruning (DepGraph) to a target multiplication count.

The practitioner's recipe from Torch-Pruning's README and its ``reproduce/main.py``: a
``tp.pruner.BasePruner`` with ``tp.importance.GroupMagnitudeImportance(p=2)`` (the group L2
norm of every coupled weight), the classifier in ``ignored_layers``, and progressive pruning
-- many small steps, importance re-estimated after each -- until the model is as cheap as
wanted.  Torch-Pruning physically removes channels, so the result is a model of ordinary,
smaller ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.Linear`` layers that runs anywhere.

The CIFAR ResNets' option-A shortcut (:class:`~structconv.models.cifar_resnet.PadShortcut`:
subsample and zero-pad the channels) is opaque to Torch-Pruning's tracer: ``F.pad`` on the
channel dimension is taken for an element-wise op, so the stage before and the stage after a
padded shortcut become one coupled group of different widths and pruning breaks the residual
add (``mat1 and mat2 shapes cannot be multiplied``).  Before building the dependency graph
every ``PadShortcut`` is swapped for the equivalent :class:`ChannelMapShortcut` (same output,
bit for bit), which Torch-Pruning prunes through a registered customized pruner
(``customized_pruners=``, Torch-Pruning's API for layers it does not know): pruning its input
channels drops them from the map, pruning its output channels drops those positions, and the
two sides are not coupled -- just as for a 1x1 convolution, of which the shortcut is a fixed
0/1 special case.  So each stage keeps its own width, as with any parameterized shortcut.

Save and load the way Torch-Pruning documents (``tp.state_dict`` / ``tp.load_state_dict``):
:func:`save_pruned` and :func:`load_pruned`.
"""

from __future__ import annotations

import bisect
import copy
import functools
import os

import torch
from torch import nn

from ..models.cifar_resnet import PadShortcut
from ..serialization import atomic_save
from ._matching import TOLERANCE, check_target, eval_forward, input_size, miss, mults_of, within

__all__ = ["ChannelMapShortcut", "prune_to_mults", "save_pruned", "load_pruned"]


def import_torch_pruning():
    try:
        import torch_pruning
    except ImportError as err:  # optional dependency
        raise ImportError(
            "structconv.baselines needs Torch-Pruning >= 1.5.2 for channel pruning: pip install 'structconv[compare]'"
        ) from err
    return torch_pruning


class ChannelMapShortcut(nn.Module):
    """Parameter-free shortcut: subsample by ``stride``, place input channel ``src[i]`` at output ``dst[i]``.

    Other output channels are zero.  With ``src = range(C_in)`` and ``dst = src + extra // 2``
    it computes exactly :class:`~structconv.models.cifar_resnet.PadShortcut`; unlike it, any
    subset of channels can be removed on either side, which pruning needs.  The map is
    architecture, like a layer's channel counts, so it is kept as plain lists.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, offset: int = 0) -> None:
        super().__init__()
        if not 0 <= offset <= out_channels - in_channels:
            raise ValueError(
                f"ChannelMapShortcut: offset={offset} must place {in_channels} channels inside {out_channels}"
            )
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.src = list(range(in_channels))
        self.dst = [c + offset for c in self.src]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        out = x.new_zeros(x.shape[0], self.out_channels, *x.shape[2:])
        src = torch.tensor(self.src, dtype=torch.long, device=x.device)
        dst = torch.tensor(self.dst, dtype=torch.long, device=x.device)
        return out.index_copy(1, dst, x.index_select(1, src))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}, mapped={len(self.src)}"


def _drop(positions: list[int], idxs) -> tuple[list[bool], list[int]]:
    """Which entries of ``positions`` are not in ``idxs``, and those renumbered as if ``idxs`` were removed."""
    gone = sorted(set(int(i) for i in idxs))
    keep = [p not in gone for p in positions]
    renumbered = [p - bisect.bisect_left(gone, p) for p, k in zip(positions, keep) if k]
    return keep, renumbered


@functools.cache
def _channel_map_pruner():
    """A Torch-Pruning ``BasePruningFunc`` for :class:`ChannelMapShortcut` (built on first use: tp is optional)."""
    tp = import_torch_pruning()

    class ChannelMapPruner(tp.pruner.BasePruningFunc):
        TARGET_MODULES = ChannelMapShortcut

        # prune_out_channels != prune_in_channels: no intra-layer coupling, so the stages on
        # either side of the shortcut are pruned independently.
        def prune_out_channels(self, layer: ChannelMapShortcut, idxs) -> nn.Module:
            keep, layer.dst = _drop(layer.dst, idxs)
            layer.src = [c for c, k in zip(layer.src, keep) if k]  # inputs whose output is gone are not passed
            layer.out_channels -= len(idxs)
            return layer

        def prune_in_channels(self, layer: ChannelMapShortcut, idxs) -> nn.Module:
            keep, layer.src = _drop(layer.src, idxs)
            layer.dst = [c for c, k in zip(layer.dst, keep) if k]
            layer.in_channels -= len(idxs)
            return layer

        def get_out_channels(self, layer: ChannelMapShortcut) -> int:
            return layer.out_channels

        def get_in_channels(self, layer: ChannelMapShortcut) -> int:
            return layer.in_channels

    return ChannelMapPruner()


def unpad_shortcuts(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """Replace every ``PadShortcut`` of ``model`` (in place) by the equivalent :class:`ChannelMapShortcut`.

    ``PadShortcut`` stores only how many channels it adds, so one forward pass on
    ``example_input`` records its input width.  Returns ``model``.
    """
    widths: dict[int, int] = {}
    pads = [m for m in model.modules() if isinstance(m, PadShortcut)]
    if not pads:
        return model

    def record(module, args, out):
        widths[id(module)] = args[0].shape[1]

    eval_forward(model, example_input, [(m, record) for m in pads])
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, PadShortcut):
                c_in = widths[id(child)]
                new = ChannelMapShortcut(c_in, c_in + child.extra, child.stride, offset=child.extra // 2)
                setattr(parent, name, new)
    return model


def customized_pruners() -> dict:
    """``customized_pruners=`` for Torch-Pruning: how to prune :class:`ChannelMapShortcut`."""
    return {ChannelMapShortcut: _channel_map_pruner()}


def resolve_layers(model: nn.Module, layers, *, who: str) -> list[nn.Module]:
    """Modules of ``model`` named by ``layers``: module objects, qualified names, or module classes.

    The last ``nn.Linear`` (the classifier) is always included, so pruning keeps the output size.
    """
    named = dict(model.named_modules())
    found: list[nn.Module] = []
    for entry in layers or ():
        if isinstance(entry, str):
            if entry not in named:
                raise ValueError(f"{who}: ignored layer {entry!r} is not a module of the model")
            found.append(named[entry])
        elif isinstance(entry, type) and issubclass(entry, nn.Module):
            found.extend(m for m in model.modules() if isinstance(m, entry))
        elif isinstance(entry, nn.Module):
            if not any(entry is m for m in named.values()):
                raise ValueError(f"{who}: ignored layer {type(entry).__name__} is not a module of the model")
            found.append(entry)
        else:
            raise ValueError(f"{who}: ignored layer {entry!r} must be a module, its name, or a module class")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears and not any(linears[-1] is m for m in found):
        found.append(linears[-1])
    return found


def module_names(model: nn.Module, modules: list[nn.Module]) -> list[str]:
    names = {id(m): n for n, m in model.named_modules()}
    return [names[id(m)] for m in modules]


def _output_shape(model: nn.Module, example_input: torch.Tensor) -> torch.Size:
    return eval_forward(model, example_input).shape


def _geometric_schedule(target_fraction: float, steps: int):
    """A ``iterative_pruning_ratio_scheduler`` whose step ``k`` prunes the channel ratio at which a
    uniformly thinned model keeps ``target_fraction ** (k / steps)`` of its mults ((1 - ratio)^2):
    equal relative steps in mults, so no step jumps over the ±3 % window."""

    def schedule(pruning_ratio: float, iterative_steps: int) -> list[float]:
        return [pruning_ratio * (1 - target_fraction ** (k / (2 * steps))) for k in range(iterative_steps + 1)]

    return schedule


def _progressive(
    model, example_input, size, target, *, ignored, round_to, steps, global_pruning, max_pruning_ratio, dense
):
    """One progressive run on ``model`` (modified) until its mults fall to ``target`` or below.

    Returns ``[(mults, history), ...]`` after each step, ``history`` being Torch-Pruning's
    pruning history up to that step (replayable with ``DependencyGraph.load_pruning_history``).
    """
    tp = import_torch_pruning()
    # run up to 3x the planned steps: mults fall slower than (1 - ratio)^2 where a layer's
    # input is fixed (the stem) or a layer is ignored (the classifier)
    pruner = tp.pruner.BasePruner(
        model,
        example_input,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        global_pruning=global_pruning,
        pruning_ratio=1.0,
        max_pruning_ratio=max_pruning_ratio,
        iterative_steps=3 * steps,
        iterative_pruning_ratio_scheduler=_geometric_schedule(target / dense, steps),
        ignored_layers=ignored,
        round_to=round_to,
        customized_pruners=customized_pruners(),
    )
    trace = []
    for _ in range(3 * steps):
        pruner.step()
        trace.append((mults_of(model, size), list(pruner.pruning_history())))
        if trace[-1][0] <= target:
            break
    return trace


def _replay(model: nn.Module, example_input: torch.Tensor, history) -> nn.Module:
    """Apply a Torch-Pruning pruning history to ``model`` (its shortcuts unpadded first)."""
    tp = import_torch_pruning()
    unpad_shortcuts(model, example_input)
    graph = tp.DependencyGraph().build_dependency(model, example_input, customized_pruners=customized_pruners())
    graph.load_pruning_history(history)
    return model


def prune_to_mults(
    model: nn.Module,
    example_input: torch.Tensor,
    target_mults: float,
    *,
    ignored_layers=None,
    round_to: int | None = None,
    steps: int = 32,
    global_pruning: bool = True,
    max_pruning_ratio: float = 0.9,
    tolerance: float = TOLERANCE,
    inplace: bool = False,
) -> nn.Module:
    """Prune channels of a (trained) model with Torch-Pruning until it costs ``target_mults`` mults.

    Progressive group-L2-magnitude pruning (``tp.pruner.BasePruner`` with
    ``tp.importance.GroupMagnitudeImportance(p=2)``): each step removes the least important
    channel groups and re-estimates importance, and the run stops at the first step whose
    multiplication count (:func:`structconv.count_ops`, the paper's accounting, on
    ``example_input``'s shape) falls to the target; of that step and the one before, the one
    closer to the target is returned, and it must be within ``tolerance`` (±3 %).  The step sizes
    follow a geometric schedule: step ``k`` prunes the channel ratio at which a uniformly
    thinned model would keep ``(target / dense) ** (k / steps)`` of its mults, so each step
    removes about the same fraction of the remaining mults (4 % at 4x with the default 32
    steps) and lands inside the ±3 % window; if a step still jumps over it, the run is redone
    from the dense model with twice the steps (up to 8x) before giving up.

    Args:
        model: the dense model (trained: magnitude importance ranks its weights).  Not
            modified unless ``inplace``.
        example_input: a batch like the model's input, e.g. ``torch.zeros(1, 3, 32, 32)``;
            traced by Torch-Pruning and its shape used for counting.
        target_mults: the multiplication count to reach.
        ignored_layers: modules (of ``model``), qualified names, or module classes never
            pruned; the last ``nn.Linear`` (the classifier) is always added, so the output
            size is kept.
        round_to: keep channel counts multiples of this (Torch-Pruning's ``round_to``).
            Default ``None`` (any count): with ``round_to=8`` a 16-channel CIFAR-ResNet stage
            can only keep 8 or 16 channels, one step then changes the mults by 10-20 % and
            the ±3 % window is missed; pass 8 or 16 for wide models (ResNet18's 64-512
            channels) where GPU-friendly widths matter more than the exact match.
        steps: pruning steps the schedule plans to reach the target.
        global_pruning: rank channels across all layers (Torch-Pruning's global pruning: the
            network chooses where to thin, layer widths become non-uniform) rather than the
            same ratio in every layer.  With ``False`` every layer crosses its rounding
            threshold at the same ratio and the count moves in jumps that can skip ±3 %.
        max_pruning_ratio: a layer that has lost this fraction of its channels is pruned no
            further (global magnitude ranking otherwise can thin a layer to one channel);
            Torch-Pruning checks before each step, so the last step can go a little past it.
        tolerance: the allowed relative distance to ``target_mults``.
        inplace: prune ``model`` itself (Torch-Pruning's usual mode) instead of a copy.

    Returns the pruned model (ordinary, smaller ``nn.Conv2d`` / ``nn.BatchNorm2d`` /
    ``nn.Linear`` layers; a CIFAR ResNet's ``PadShortcut`` becomes a
    :class:`ChannelMapShortcut`).  Raises ``ValueError`` naming the target and the count
    reached when no run lands within the tolerance.
    """
    who = "prune_to_mults"
    size = input_size(example_input)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{who}: steps={steps!r} must be a positive integer")
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"{who}: round_to={round_to!r} must be a positive integer or None")
    if not 0 < max_pruning_ratio <= 1:
        raise ValueError(f"{who}: max_pruning_ratio={max_pruning_ratio!r} must be in (0, 1]")
    dense = mults_of(model, size)
    target = check_target(target_mults, dense, tolerance, who)
    shape = _output_shape(model, example_input)
    ignored_names = module_names(model, resolve_layers(model, ignored_layers, who=who))
    if within(dense, target, tolerance):
        return model if inplace else copy.deepcopy(model)

    # Every run prunes a copy until it passes below the target; the step closest to the target
    # is kept (replayed from Torch-Pruning's pruning history when it is not the last one, and
    # on ``model`` itself when in place), so an overshooting run never touches ``model``.
    for attempt in range(4):
        work = unpad_shortcuts(copy.deepcopy(model), example_input)
        named = dict(work.named_modules())
        trace = _progressive(
            work,
            example_input,
            size,
            target,
            ignored=[named[n] for n in ignored_names],
            round_to=round_to,
            steps=steps * 2**attempt,
            global_pruning=global_pruning,
            max_pruning_ratio=max_pruning_ratio,
            dense=dense,
        )
        best = min(range(len(trace)), key=lambda k: abs(trace[k][0] - target))
        if within(trace[best][0], target, tolerance):
            break
        if trace[-1][0] > target:  # ran out of prunable channels: more steps won't help
            why = f"pruning stopped there (max_pruning_ratio={max_pruning_ratio})"
            raise miss(who, target, trace[-1][0], tolerance, why)
    else:
        why = f"a step jumped over the window even with {steps * 8} steps; try round_to=None or more steps"
        raise miss(who, target, trace[best][0], tolerance, why)

    if inplace:
        work = _replay(model, example_input, trace[best][1])
    elif best != len(trace) - 1:
        work = _replay(unpad_shortcuts(copy.deepcopy(model), example_input), example_input, trace[best][1])
    if _output_shape(work, example_input) != shape:
        why = "add the output layer to ignored_layers"
        raise ValueError(f"{who}: pruning changed the output shape {tuple(shape)}; {why}")
    return work.train(model.training)  # Torch-Pruning's tracing leaves models in eval mode


def save_pruned(model: nn.Module, path: str | os.PathLike) -> None:
    """Atomically save a pruned model the way Torch-Pruning documents: ``torch.save(tp.state_dict(model))``.

    ``tp.state_dict`` keeps every module's attributes (the new channel counts) with its
    tensors; the file is written beside ``path`` and moved over it, so a crash never leaves a
    half-written checkpoint.
    """
    atomic_save(import_torch_pruning().state_dict(model), path)


def load_pruned(path: str | os.PathLike, dense_model: nn.Module, *, map_location="cpu") -> nn.Module:
    """Load a :func:`save_pruned` file into ``dense_model`` (a freshly built dense model, modified and returned).

    ``tp.load_state_dict(dense_model, state_dict=...)`` restores the pruned shapes.  The file is
    a pickle of module attributes (``weights_only=False``, as in Torch-Pruning's own tests):
    load only files you trust.
    """
    state = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(state, dict) or "full_state_dict" not in state:
        raise ValueError(f"load_pruned: {os.fspath(path)!r} is not a tp.state_dict checkpoint (see save_pruned)")
    return import_torch_pruning().load_state_dict(dense_model, state_dict=state)
