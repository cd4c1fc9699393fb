"""``SumPool``: the parameter-free first half of a decomposed layer, a thin module over
:mod:`structconv.pooling` (same code path as the functional :func:`~structconv.pooling.sum_pool`)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .. import pooling as _sp

__all__ = ["SumPool", "set_sum_pool_backends"]


class SumPool(nn.Module):
    """Pad, then sum-pool over channels (within groups) and spatial axes. No parameters.

    See :func:`structconv.pooling.sum_pool`; ``pad`` / ``padding_mode`` follow ``F.pad`` and
    ``nn.ConvNd`` conventions.  ``channel_method`` / ``spatial_method`` pick a backend from
    :data:`structconv.pooling.BACKENDS` (``'auto'`` by default); :func:`structconv.autotune.optimize`
    measures them.  ``in_channels`` (optional) is checked on every new input shape, so a wrong
    input names the channels the layer expects.
    """

    def __init__(
        self,
        channel_window: int,
        window: Sequence[int],
        *,
        groups: int = 1,
        dilation: Sequence[int] = (),
        stride: Sequence[int] = (),
        pad: Sequence[int] = (),
        padding_mode: str = "zeros",
        in_channels: int | None = None,
        owner: str = "SumPool",
    ) -> None:
        super().__init__()
        self.spec = _sp.PoolSpec(
            int(channel_window), tuple(window), int(groups), tuple(dilation), tuple(stride), tuple(pad), padding_mode
        )
        self.in_channels = in_channels
        self.owner = owner  # the layer named in error messages
        self._channel_method = "auto"
        self._spatial_method = "auto"
        # Derived data, neither parameters nor buffers (not saved): constant tensors, and the
        # backends chosen per (channels, ndim, dtype, compiling) so forward does not re-decide.
        self._constants = _sp.PoolConstants()
        self._chosen: dict[tuple, tuple[str, str]] = {}

    # the spec's fields, read by op counting, autotune and exporters
    channel_window = property(lambda self: self.spec.channel_window)
    window = property(lambda self: self.spec.window)
    groups = property(lambda self: self.spec.groups)
    dilation = property(lambda self: self.spec.dilation)
    stride = property(lambda self: self.spec.stride)
    pad = property(lambda self: self.spec.pad)
    padding_mode = property(lambda self: self.spec.padding_mode)

    @property
    def kernel_padding(self) -> tuple[int, ...] | None:
        """Per-axis zero padding when the spatial pool can run as one pooling kernel, else ``None``."""
        return self.spec.kernel_padding

    def _method(self, axis: str, value: str) -> str:
        if value != "auto" and value not in _sp.BACKENDS[axis]:
            names = ", ".join(repr(n) for n in ("auto", *_sp.BACKENDS[axis]))
            raise ValueError(f"SumPool: {axis}_method={value!r} must be one of {names}")
        self._chosen = {}
        return value

    @property
    def channel_method(self) -> str:
        """The channel-pool backend: ``'auto'`` or a name in ``BACKENDS['channel']``."""
        return self._channel_method

    @channel_method.setter
    def channel_method(self, value: str) -> None:
        self._channel_method = self._method("channel", value)

    @property
    def spatial_method(self) -> str:
        """The spatial-pool backend: ``'auto'`` or a name in ``BACKENDS['spatial']`` (a backend
        that does not apply to an input falls back to ``'auto'`` for it)."""
        return self._spatial_method

    @spatial_method.setter
    def spatial_method(self, value: str) -> None:
        self._spatial_method = self._method("spatial", value)

    def prepare(self, channels: int, *, device=None, dtype=None) -> "SumPool":
        """Build the constants for ``channels`` input channels now (they are otherwise built on
        the first forward), so ``forward`` does no set-up work; returns ``self``."""
        probe = torch.empty((1, channels) + (1,) * len(self.window), dtype=dtype, device="meta")
        if self.channel_window > 1 and _sp.select_backend("channel", self.spec, probe, self._channel_method).name in (
            "matmul",
            "conv",
        ):
            self._constants.prepare(channels, self.spec, dtype=dtype, device=device)
        return self

    def backends(self, x: Tensor) -> tuple[_sp.SumPoolBackend, _sp.SumPoolBackend]:
        """The (channel, spatial) backends that run ``x``."""
        key = (x.shape[1], x.dim(), x.dtype, torch.compiler.is_compiling())
        names = self._chosen.get(key)
        if names is None:
            owner = self.owner
            if self.in_channels is not None and x.shape[1] != self.in_channels and x.dim() >= 2:
                raise ValueError(
                    f"{owner}: expected {self.in_channels} input channels, got {x.shape[1]} "
                    f"(input shape {tuple(x.shape)})"
                )
            self.spec.check_input(x, owner)
            names = (
                _sp.select_backend("channel", self.spec, x, self._channel_method).name,
                _sp.select_backend("spatial", self.spec, x, self._spatial_method).name,
            )
            self._chosen[key] = names
        return _sp.BACKENDS["channel"][names[0]], _sp.BACKENDS["spatial"][names[1]]

    def forward(self, x: Tensor) -> Tensor:
        channel, spatial = self.backends(x)
        return _sp.apply(x, self.spec, channel=channel, spatial=spatial, constants=self._constants)

    def extra_repr(self) -> str:
        parts = [f"channel_window={self.channel_window}", f"window={self.window}"]
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        if any(d != 1 for d in self.dilation):
            parts.append(f"dilation={self.dilation}")
        if any(s != 1 for s in self.stride):
            parts.append(f"stride={self.stride}")
        if self.pad:
            parts.append(f"pad={self.pad}, padding_mode={self.padding_mode!r}")
        return ", ".join(parts)


def set_sum_pool_backends(model: nn.Module, *, channel: str | None = None, spatial: str | None = None) -> int:
    """Set every :class:`SumPool` of ``model`` to the named backends (``None`` keeps the current
    choice); returns how many pools were set.  How a runtime target pins the lowering it
    exports, e.g. ``channel="conv"`` for OpenVINO (BENCHMARKS.md, "OpenVINO")."""
    pools = [m for m in model.modules() if isinstance(m, SumPool)]
    for pool in pools:
        if channel is not None:
            pool.channel_method = channel
        if spatial is not None:
            pool.spatial_method = spatial
    return len(pools)
