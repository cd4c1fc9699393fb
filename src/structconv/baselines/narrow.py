"""A narrower network (uniform width multiplier) at a target multiplication count, from scratch.

The simplest alternative to any compression: the same architecture with fewer channels in
every layer, trained from scratch.  It is built generally, for any model Torch-Pruning can
trace: a freshly built dense model is pruned to the chosen widths with Torch-Pruning's
dependency graph (which channels go does not matter), then every module's
``reset_parameters()`` re-initializes it.  The result is the architecture a width multiplier
``alpha`` would give -- every coupled channel group (a residual stream counts as one) keeps
``round(alpha * width)`` channels -- at PyTorch's default layer initialization.  A CIFAR
ResNet's option-A shortcuts are rebuilt as plain ``PadShortcut``\\ s of the new widths.

Matching: ``alpha`` is found by bisection on the mults (:func:`structconv.count_ops`), and
where several groups of the same width would round down together the groups are narrowed
one at a time (:func:`~structconv.baselines._matching.rounding_order`), so every group stays
within one channel of ``round(alpha * width)`` and the total lands within ±3 % of the target.
The bisection's trial models are pruned copies of one dense build.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from ..models.cifar_resnet import PadShortcut
from ._matching import TOLERANCE, check_target, closest_step, input_size, miss, mults_of, rounding_order, sizes_after
from .pruning import (
    ChannelMapShortcut,
    customized_pruners,
    import_torch_pruning,
    module_names,
    resolve_layers,
    unpad_shortcuts,
)

__all__ = ["narrow_to_mults"]


def _build(build_dense: Callable[[], nn.Module]) -> nn.Module:
    model = build_dense()
    if not isinstance(model, nn.Module):
        raise ValueError(f"narrow_to_mults: build_dense() returned {type(model).__name__}, not an nn.Module")
    return model.eval()


def _groups(model: nn.Module, example_input: torch.Tensor, ignored: list[nn.Module]) -> list[tuple[str, int]]:
    """``(root layer name, channels)`` of every prunable channel group (coupled layers pruned together)."""
    tp = import_torch_pruning()
    graph = tp.DependencyGraph().build_dependency(model, example_input, customized_pruners=customized_pruners())
    names = {id(m): n for n, m in model.named_modules()}
    ignored_all = [m for layer in ignored for m in layer.modules()]
    groups = []
    roots = [nn.modules.conv._ConvNd, nn.Linear]
    for group in graph.get_all_groups(ignored_layers=ignored_all, root_module_types=roots):
        root = group[0].dep.target.module
        groups.append((names[id(root)], graph.get_out_channels(root)))
    return groups


def _narrowed(model: nn.Module, example_input: torch.Tensor, groups, widths: list[int], ignored) -> nn.Module:
    """Prune ``model`` (unpadded, modified) so group ``i`` keeps ``widths[i]`` channels."""
    tp = import_torch_pruning()
    named = dict(model.named_modules())
    # BasePruner keeps int(C * (1 - ratio)) channels; the half channel guards against rounding
    ratios = {named[name]: 1 - (width + 0.5) / full for (name, full), width in zip(groups, widths) if width < full}
    pruner = tp.pruner.BasePruner(
        model,
        example_input,
        importance=tp.importance.RandomImportance(),  # all weights are re-initialized afterwards
        pruning_ratio=0.0,
        pruning_ratio_dict=ratios,
        ignored_layers=ignored,
        customized_pruners=customized_pruners(),
    )
    pruner.step()
    return model


def _repad_shortcuts(model: nn.Module) -> nn.Module:
    """Option-A shortcuts again: which channels the pruned map kept is an accident of pruning; a
    width-multiplied CIFAR ResNet passes all its input channels and zero-pads the rest evenly."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ChannelMapShortcut) and child.out_channels >= child.in_channels:
                setattr(parent, name, PadShortcut(child.in_channels, child.out_channels, child.stride))
    return model


def narrow_to_mults(
    build_dense: Callable[[], nn.Module],
    example_input: torch.Tensor,
    target_mults: float,
    *,
    ignored_layers=None,
    tolerance: float = TOLERANCE,
    init_fn: Callable[[nn.Module], None] | None = None,
) -> nn.Module:
    """A uniformly narrower, freshly initialized version of ``build_dense()`` costing ``target_mults`` mults.

    Args:
        build_dense: builds the dense model (called once; its weights are discarded).
        example_input: a batch like the model's input; its shape is used for counting.
        target_mults: the multiplication count (:func:`structconv.count_ops`) to reach.
        ignored_layers: qualified names or module classes whose channels are kept; the last
            ``nn.Linear`` (the classifier) is always kept, so the output size is unchanged.
        tolerance: the allowed relative distance to ``target_mults`` (±3 %).
        init_fn: called on the narrow model after ``reset_parameters()`` -- e.g. the
            architecture's own init scheme (CIFAR ResNets and torchvision models use
            Kaiming-normal fan-out convs, which ``reset_parameters()`` does not restore).

    Returns the narrow model (train mode, on ``build_dense``'s device), made of the model's
    own layer types with fewer channels.  Raises ``ValueError`` naming the target and the
    count reached when no width assignment lands within the tolerance.
    """
    who = "narrow_to_mults"
    size = input_size(example_input)
    if not callable(build_dense):
        raise ValueError(f"{who}: build_dense={build_dense!r} must be a callable returning a fresh dense model")
    if ignored_layers is not None and any(isinstance(e, nn.Module) for e in ignored_layers):
        raise ValueError(f"{who}: name ignored_layers by qualified name or class; build_dense() makes new modules")

    template = unpad_shortcuts(_build(build_dense), example_input)
    dense = mults_of(template, size)
    target = check_target(target_mults, dense, tolerance, who)
    ignored_names = module_names(template, resolve_layers(template, ignored_layers, who=who))
    groups = _groups(template, example_input, [template.get_submodule(n) for n in ignored_names])
    if not groups:
        raise miss(who, target, dense, tolerance, "the model has no prunable channel group")
    full = [channels for _, channels in groups]
    order = rounding_order(full)

    def build_narrow(step: int) -> nn.Module:
        model = copy.deepcopy(template)
        named = dict(model.named_modules())
        widths = sizes_after(full, order, step)
        return _narrowed(model, example_input, groups, widths, [named[n] for n in ignored_names])

    # each trial is a pruned copy: stop the search within a quarter of the tolerance
    step, predicted = closest_step(
        lambda s: mults_of(build_narrow(s), size), len(order), target, close_enough=tolerance / 4
    )
    if abs(predicted - target) > tolerance * target:
        why = "one channel in every group costs more" if predicted > target else "width steps too coarse"
        raise miss(who, target, predicted, tolerance, why)

    model = _repad_shortcuts(build_narrow(step))
    with torch.no_grad():
        for module in model.modules():
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
    if init_fn is not None:
        init_fn(model)
    reached = mults_of(model, size)
    if reached != predicted:
        raise RuntimeError(f"{who}: the trial model counted {predicted:,} mults but the built one {reached:,}")
    return model.train()
