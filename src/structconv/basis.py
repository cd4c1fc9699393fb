"""Composite and structured bases (paper Sec. 3-5) -- pure tensor math, no ``nn``.

A *structured* kernel of shape ``C x k1 x ... x kd`` with parameters ``c`` and
``n = (n1, ..., nd)`` is ``W = 1_{(C-c+1) x (k1-n1+1) x ...} (*) alpha`` (a "full"
convolution of the ``c x n1 x ... x nd`` coefficient tensor ``alpha`` with a box of ones,
Sec. 5).  Along every axis this is multiplication by a 1-D band matrix ``T`` of shape
``size x m`` with ``T[i, j] = 1`` iff ``0 <= i - j <= size - m``; the basis matrix of the
whole kernel is the Kronecker product ``A = T_C (x) T_k1 (x) ... (x) T_kd``.

Everything here uses that separability: the projection ``A A^+`` and the coefficients
``A^+ W`` are applied one axis at a time (the pseudo-inverse of a Kronecker product is
the Kronecker product of the pseudo-inverses), so the ``(C*prod(k))^2`` matrix is never built:
a short axis by one GEMM with a small cached matrix, a wide one (the channels of a wide layer)
by closed forms whose cost is linear in its size (see ``_period_offsets``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

__all__ = [
    "band_matrix",
    "band_pinv",
    "band_projector",
    "StructuredBasis",
    "CompositeBasis",
]


def _check_band(size: int, m: int) -> None:
    if not (isinstance(size, int) and isinstance(m, int)):
        raise TypeError(f"band sizes must be ints, got size={size!r}, m={m!r}")
    if size < 1 or not 1 <= m <= size:
        raise ValueError(f"a band matrix needs 1 <= m <= size, got size={size}, m={m}")


def band_matrix(size: int, m: int, *, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """The ``size x m`` binary band matrix ``T`` with ``T[i, j] = 1`` iff ``0 <= i - j <= size - m``.

    Column ``j`` is a run of ``size - m + 1`` ones starting at row ``j``: the 1-D basis
    element ``beta_j`` of Def. 3.  ``T @ alpha`` is the full convolution of ``alpha`` with a
    box of length ``size - m + 1``.
    """
    _check_band(size, m)
    i = torch.arange(size, device=device).unsqueeze(1)
    j = torch.arange(m, device=device).unsqueeze(0)
    return ((i >= j) & (i - j <= size - m)).to(dtype)


# ---- closed forms along one axis, linear in its size ----------------------------------------
# With ``L = size - m + 1``, ``null(T^T)`` holds the sequences whose every length-``L`` window
# sums to 0: those that repeat with period ``L`` and sum to 0 over one period.  The residual
# ``(I - T T^+) x`` is the orthogonal projection of ``x`` onto them: with ``s_k`` the sum of the
# ``n_k`` entries at positions ``i = k (mod L)``, it repeats ``v_k = (s_k - c) / n_k``, where
# ``c = sum_k (s_k / n_k) / sum_k (1 / n_k)`` makes one period sum to 0.  ``T^+ x = T^+ P x``
# then follows from ``(Px)_i - (Px)_{i-1} = alpha_i - alpha_{i-L}``: a running sum with stride
# ``L`` of the first differences of ``Px``, and ``T alpha`` is the running sum of
# ``alpha_i - alpha_{i-L}``.  Every function below works on dim 1 of a ``(before, size, after)``
# tensor, in one pass or a few.


def _period_offsets(x: Tensor, m: int) -> Tensor:
    """``v`` (shape ``(before, L, after)``): ``(I - T T^+) x`` repeats ``v`` along dim 1."""
    b, size, a = x.shape
    period = size - m + 1
    q, rem = divmod(size, period)  # n_k = q + 1 for k < rem, q otherwise
    s = x[:, : q * period].reshape(b, q, period, a).sum(1)
    if rem:
        s[:, :rem] += x[:, q * period :]
    c = s[:, :rem].sum(1, keepdim=True) / (q + 1) + s[:, rem:].sum(1, keepdim=True) / q
    c /= rem / (q + 1) + (period - rem) / q
    s -= c
    s[:, :rem] /= q + 1
    s[:, rem:] /= q
    return s


def _add_periodic_(t: Tensor, v: Tensor, alpha: float) -> None:
    """``t[:, i] += alpha * v[:, i mod L]`` in place (``t``: ``(before, n, after)``, ``v``: ``(before, L, after)``)."""
    b, n, a = t.shape
    period = v.shape[1]
    q, rem = divmod(n, period)
    t[:, : q * period].view(b, q, period, a).add_(v.unsqueeze(1), alpha=alpha)
    t[:, q * period :].add_(v[:, :rem], alpha=alpha)


class _PeriodicProjection(torch.autograd.Function):
    """The first ``length`` entries along dim 1 of ``(I - T T^+) x`` (``mode="residual"``),
    ``p = T T^+ x`` (``"project"``) or its first differences ``p_i - p_{i-1}`` (``"diff"``, with
    ``p_{-1} = 0``).

    A Function rather than plain tensor ops so the forward writes one new tensor besides the
    class sums (on a wide layer each new tensor costs page faults as well as a pass).  The
    projections are symmetric, so the backward is the projection of the zero-extended gradient
    (after the transposed difference for ``"diff"``), itself differentiable.
    """

    @staticmethod
    def forward(ctx, x: Tensor, m: int, mode: str, length: int) -> Tensor:
        ctx.m, ctx.mode, ctx.size = m, mode, x.shape[1]
        b, size, a = x.shape
        period = size - m + 1
        v = _period_offsets(x, m)
        q, rem = divmod(length, period)
        out = x.new_empty(b, length, a)
        if mode == "residual":
            out[:, : q * period].view(b, q, period, a).copy_(v.unsqueeze(1))
            out[:, q * period :].copy_(v[:, :rem])
        elif mode == "project":  # one pass: x - v, broadcast over the periods
            main = out[:, : q * period].view(b, q, period, a)
            torch.sub(x[:, : q * period].view(b, q, period, a), v.unsqueeze(1), out=main)
            torch.sub(x[:, q * period : length], v[:, :rem], out=out[:, q * period :])
        else:  # d_i = (x_i - x_{i-1}) - (v_{i mod L} - v_{(i-1) mod L})
            out[:, :1].copy_(x[:, :1])
            torch.sub(x[:, 1:length], x[:, : length - 1], out=out[:, 1:])
            _add_periodic_(out, v, -1.0)
            _add_periodic_(out[:, 1:], v, 1.0)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        mode = ctx.mode
        if mode == "diff":  # transpose of the first difference: g_i - g_{i+1}
            grad, g = grad.clone(), grad
            grad[:, :-1] -= g[:, 1:]
            mode = "project"
        if grad.shape[1] < ctx.size:
            grad = torch.nn.functional.pad(grad, (0, 0, 0, ctx.size - grad.shape[1]))
        return _PeriodicProjection.apply(grad.contiguous(), ctx.m, mode, ctx.size), None, None, None


def _residual_3d(x: Tensor, m: int) -> Tensor:
    """``(I - T T^+) x`` along dim 1 (``T`` is ``x.shape[1] x m``)."""
    return _PeriodicProjection.apply(x.contiguous(), m, "residual", x.shape[1])


def _project_3d(x: Tensor, m: int) -> Tensor:
    """``T T^+ x`` along dim 1."""
    return _PeriodicProjection.apply(x.contiguous(), m, "project", x.shape[1])


def _pinv_3d(x: Tensor, m: int) -> Tensor:
    """``T^+ x`` along dim 1 (shape ``(before, m, after)``)."""
    b, size, a = x.shape
    period = size - m + 1
    d = _PeriodicProjection.apply(x.contiguous(), m, "diff", m)  # alpha_i - alpha_{i-L}, rows < m only
    full, rem = divmod(m, period)
    if full == 0 or (full == 1 and rem == 0):  # m <= L (compression ratio >= ~2): alpha = d
        return d
    main = d[:, : full * period].reshape(b, full, period, a).cumsum(1).reshape(b, full * period, a)
    if rem == 0:
        return main
    return torch.cat([main, d[:, full * period :] + main[:, (full - 1) * period : (full - 1) * period + rem]], 1)


def _compose_3d(alpha: Tensor, size: int) -> Tensor:
    """``T alpha`` along dim 1 (``T`` is ``size x alpha.shape[1]``): a running sum of
    ``alpha_i - alpha_{i-L}``, whose partial sums are the outputs themselves (no cancellation)."""
    m = alpha.shape[1]
    period = size - m + 1
    e = torch.nn.functional.pad(alpha, (0, 0, 0, size - m))
    e[:, period:] -= alpha[:, : m - 1]
    return e.cumsum_(1)


_HALF_TYPES = (torch.float16, torch.bfloat16)


def _on_axis(fn, t: Tensor, axis: int, *args) -> Tensor:
    """Apply a ``_*_3d`` closed form along ``axis`` of ``t`` (half types computed in float32)."""
    shape = t.shape
    before, after = math.prod(shape[:axis]), math.prod(shape[axis + 1 :])
    x = t.reshape(before, shape[axis], after)
    if x.dtype in _HALF_TYPES:
        y = fn(x.float(), *args).to(x.dtype)
    else:
        y = fn(x, *args)
    return y.reshape(*shape[:axis], y.shape[1], *shape[axis + 1 :])


def _axis_op(fn, arg: int):
    """``fn`` (a ``_*_3d`` closed form with its size argument) as an entry of :func:`_apply_per_axis`."""
    return lambda t, axis: _on_axis(fn, t, axis, arg)


# Axes at least this long use the closed forms above, shorter ones one GEMM with a cached matrix:
# the smallest width at which the closed form was faster in every measured layer shape.
_CLOSED_FORM_MIN_SIZE = 256


def _dense(size: int) -> bool:
    return size < _CLOSED_FORM_MIN_SIZE


# Cached operators are built outside inference mode: a cache first filled under
# torch.inference_mode() (benchmarks, count_ops) would otherwise hand inference tensors to a
# later training step, which autograd rejects.  Only axes shorter than _CLOSED_FORM_MIN_SIZE
# reach these caches from StructuredBasis, so each entry is small and the count is bounded.
@torch.inference_mode(False)
def _band_ops_exact(size: int, m: int) -> tuple[Tensor, Tensor]:
    """``(T^+, T T^+)`` in float64 on the CPU, from the closed forms applied to the identity
    (exact to ~1e-15; ``O(size^2)`` time and memory, no factorization)."""
    eye = torch.eye(size, dtype=torch.float64).unsqueeze(0)
    return _pinv_3d(eye, m)[0], _project_3d(eye, m)[0]


_band_ops_cpu64 = functools.lru_cache(maxsize=128)(_band_ops_exact)


@functools.lru_cache(maxsize=256)
@torch.inference_mode(False)
def _band_ops(size: int, m: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(T^+, T T^+)`` on ``device`` in ``dtype``."""
    return tuple(op.to(device=device, dtype=dtype) for op in _band_ops_cpu64(size, m))


# The square roots of the Gram matrix are needed only by the orthonormal parametrization of
# direct training (OrthonormalCoefficients), for every axis width: an eigh of the m x m Gram
# matrix, O(m^3), so they are built on first use and kept in small caches.
@functools.lru_cache(maxsize=16)
@torch.inference_mode(False)
def _gram_roots_cpu64(size: int, m: int) -> tuple[Tensor, Tensor]:
    """``(T^T T)^{-1/2}`` and ``(T^T T)^{1/2}`` (symmetric roots, via eigh in float64)."""
    t = band_matrix(size, m)
    eigvals, eigvecs = torch.linalg.eigh(t.T @ t)
    return (eigvecs * eigvals.rsqrt()) @ eigvecs.T, (eigvecs * eigvals.sqrt()) @ eigvecs.T


@functools.lru_cache(maxsize=32)
@torch.inference_mode(False)
def _gram_roots(size: int, m: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    return tuple(op.to(device=device, dtype=dtype) for op in _gram_roots_cpu64(size, m))


def band_pinv(size: int, m: int, *, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """Moore-Penrose inverse ``T^+`` (shape ``m x size``) of :func:`band_matrix`.

    Cached below ``_CLOSED_FORM_MIN_SIZE``; a wider one is built afresh on every call, as a dense
    ``m x size`` matrix (``O(size^2)`` memory) -- :class:`StructuredBasis` never builds it.
    """
    _check_band(size, m)
    device = torch.device(device or "cpu")
    if _dense(size):
        return _band_ops(size, m, device, dtype)[0]
    return _pinv_3d(torch.eye(size, dtype=torch.float64).unsqueeze(0), m)[0].to(device=device, dtype=dtype)


def band_projector(size: int, m: int, *, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """Orthogonal projector ``T T^+`` (shape ``size x size``) onto the span of the band.

    Cached below ``_CLOSED_FORM_MIN_SIZE``; a wider one is built afresh on every call, as a dense
    ``size x size`` matrix (``O(size^2)`` memory) -- :class:`StructuredBasis` never builds it.
    """
    _check_band(size, m)
    device = torch.device(device or "cpu")
    if _dense(size):
        return _band_ops(size, m, device, dtype)[1]
    return _project_3d(torch.eye(size, dtype=torch.float64).unsqueeze(0), m)[0].to(device=device, dtype=dtype)


def _apply_per_axis(t: Tensor, mats: Sequence) -> Tensor:
    """Contract the last ``len(mats)`` axes of ``t`` with ``mats``, one axis at a time.

    Each entry is ``None`` for an identity axis (nothing to do), a callable ``op(t, axis)`` (a
    closed form, for wide axes), or an ``out x in`` matrix.  Each matrix contraction is ONE GEMM: the
    ``(before, axis, after)`` view is copied to ``(axis, before*after)`` and multiplied by ``mat``:
    a batched matmul over ``before`` (no copy) was much slower on some CPUs' BLAS, and the single
    GEMM has no bad case (``structural_regularization``'s cost rests on it; BENCHMARKS.md).
    """
    first = t.dim() - len(mats)
    for axis, mat in enumerate(mats, start=first):
        if mat is None:
            continue
        if callable(mat):  # a closed form (a Tensor is not callable)
            t = mat(t, axis)
            continue
        shape = t.shape
        if axis == t.dim() - 1:
            t = t @ mat.T
        else:
            before, size, after = math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1 :])
            flat = t.reshape(before, size, after).transpose(0, 1).reshape(size, before * after)
            t = (mat @ flat).reshape(mat.shape[0], before, after).transpose(0, 1)
            t = t.reshape(*shape[:axis], mat.shape[0], *shape[axis + 1 :])
    return t


class _Projection:
    """What every basis derives from its ``project``: the residual of Eq. (3) and its size."""

    def project(self, weight: Tensor) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def residual(self, weight: Tensor) -> Tensor:
        """``(I - A A^+) W``, the part of ``W`` that is not structured (Eq. 3)."""
        return weight - self.project(weight)

    def error(self, weight: Tensor) -> float:
        """Relative structure error ``||(I - A A^+) W||_F / ||W||_F`` (0 for a zero weight)."""
        with torch.no_grad():
            if weight.dtype in _HALF_TYPES:  # tiny norms underflow or lose precision in 16 bits
                weight = weight.float()
            norm = torch.linalg.vector_norm(weight)
            if norm == 0:
                return 0.0
            return float(torch.linalg.vector_norm(self.residual(weight)) / norm)


@dataclass(frozen=True)
class StructuredBasis(_Projection):
    """The basis of Def. 3 for kernels of shape ``(channels, *kernel_size)``.

    ``channels`` is the number of input channels *per group* (``C``), ``c`` the channels of
    the small kernel and ``n`` its spatial size.  A Linear layer's rows are the case
    ``kernel_size == ()`` (Sec. 4.3, ``c`` is then the paper's ``R``).

    All methods act on the trailing ``1 + len(kernel_size)`` axes and broadcast over leading
    ones, so a whole conv weight ``(C_out, C, *k)`` is handled in one call.
    """

    channels: int
    kernel_size: tuple[int, ...]
    c: int
    n: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel_size", tuple(int(k) for k in self.kernel_size))
        object.__setattr__(self, "n", tuple(int(v) for v in self.n))
        if len(self.n) != len(self.kernel_size):
            raise ValueError(f"n={self.n} must have one entry per kernel axis (kernel_size={self.kernel_size})")
        if not 1 <= self.c <= self.channels:
            raise ValueError(f"c={self.c} must satisfy 1 <= c <= C, the input channels per group (C={self.channels})")
        for axis, (k, m) in enumerate(zip(self.kernel_size, self.n)):
            if not 1 <= m <= k:
                raise ValueError(
                    f"n={self.n} must satisfy 1 <= n <= kernel size on every axis; "
                    f"axis {axis} has n={m} but kernel size {k}"
                )

    # ---- shapes -----------------------------------------------------------------------
    @property
    def full_shape(self) -> tuple[int, ...]:
        """Shape of one kernel, ``(C, k1, ..., kd)``."""
        return (self.channels, *self.kernel_size)

    @property
    def reduced_shape(self) -> tuple[int, ...]:
        """Shape of one coefficient tensor alpha, ``(c, n1, ..., nd)``."""
        return (self.c, *self.n)

    @property
    def pool_window(self) -> tuple[int, ...]:
        """Sum-pooling window ``(C-c+1, k1-n1+1, ...)``: the extent of each basis cuboid."""
        return tuple(f - r + 1 for f, r in zip(self.full_shape, self.reduced_shape))

    @property
    def num_elements(self) -> int:
        """``M = c * prod(n)``: the degrees of freedom of one kernel."""
        return math.prod(self.reduced_shape)

    @property
    def ratio(self) -> float:
        """Compression ratio ``C prod(k) / (c prod(n))`` (Sec. 4.2)."""
        return math.prod(self.full_shape) / self.num_elements

    # ---- operators --------------------------------------------------------------------
    def _ops(self, like: Tensor, which: int) -> list:
        """Per-axis ``T^+`` (0), ``T T^+`` (1), ``(T^T T)^{-1/2}`` (2) or ``(T^T T)^{1/2}`` (3) for
        :func:`_apply_per_axis`: a cached matrix, or for ``T^+`` / ``T T^+`` on an axis of at least
        ``_CLOSED_FORM_MIN_SIZE`` a closed form; ``None`` where the band is the identity
        (``n == k``), and so are all four."""
        dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
        ops: list = []
        for f, r in zip(self.full_shape, self.reduced_shape):
            if f == r:
                ops.append(None)
            elif which >= 2:
                ops.append(_gram_roots(f, r, like.device, dtype)[which - 2])
            elif _dense(f):
                ops.append(_band_ops(f, r, like.device, dtype)[which])
            else:
                fn = _pinv_3d if which == 0 else _project_3d
                ops.append(_axis_op(fn, r))
        return ops

    def _check_trailing(self, t: Tensor, shape: tuple[int, ...], what: str) -> None:
        if tuple(t.shape[t.dim() - len(shape) :]) != shape:
            raise ValueError(f"{what} must end with shape {shape}, got {tuple(t.shape)}")

    def project(self, weight: Tensor) -> Tensor:
        """``A A^+ W``: the closest structured kernel in Frobenius norm."""
        self._check_trailing(weight, self.full_shape, "weight")
        return _apply_per_axis(weight, self._ops(weight, 1))

    def residual(self, weight: Tensor) -> Tensor:
        """``(I - A A^+) W``, the part of ``W`` that is not structured (Eq. 3)."""
        self._check_trailing(weight, self.full_shape, "weight")
        axes = [(i, f, r) for i, (f, r) in enumerate(zip(self.full_shape, self.reduced_shape)) if f != r]
        if len(axes) == 1 and not _dense(axes[0][1]):
            # one wide band: its residual directly, in one pass (and without W - PW's cancellation)
            i, _, r = axes[0]
            return _on_axis(_residual_3d, weight, weight.dim() - len(self.full_shape) + i, r)
        return weight - self.project(weight)

    def orthonormal_to_coefficients(self, beta: Tensor) -> Tensor:
        """``alpha = (A^T A)^{-1/2} beta``: coefficients whose kernel ``A alpha = Q beta`` has
        orthonormal ``Q = A (A^T A)^{-1/2}``, so ``||A alpha||_F = ||beta||_F`` and a gradient
        step on ``beta`` is a gradient step on ``W`` projected onto the structured subspace.

        Built on first use per axis by an eigh of the ``n x n`` Gram matrix (``O(n^3)``), kept
        in a small cache: only direct training with :class:`OrthonormalCoefficients` needs it."""
        self._check_trailing(beta, self.reduced_shape, "beta")
        return _apply_per_axis(beta, self._ops(beta, 2))

    def coefficients_to_orthonormal(self, alpha: Tensor) -> Tensor:
        """Inverse of :meth:`orthonormal_to_coefficients`: ``beta = (A^T A)^{1/2} alpha``."""
        self._check_trailing(alpha, self.reduced_shape, "alpha")
        return _apply_per_axis(alpha, self._ops(alpha, 3))

    def coefficients(self, weight: Tensor) -> Tensor:
        """``alpha = A^+ W`` with shape ``(..., c, n1, ..., nd)`` (Step 2 of Sec. 5.1)."""
        self._check_trailing(weight, self.full_shape, "weight")
        return _apply_per_axis(weight, self._ops(weight, 0))

    def compose(self, alpha: Tensor) -> Tensor:
        """``W = A alpha``: the dense structured kernel built from coefficients."""
        self._check_trailing(alpha, self.reduced_shape, "alpha")
        ops: list = []
        for f, r in zip(self.full_shape, self.reduced_shape):
            if f == r:
                ops.append(None)
            elif _dense(f):
                ops.append(band_matrix(f, r, dtype=alpha.dtype, device=alpha.device))
            else:
                ops.append(_axis_op(_compose_3d, f))
        return _apply_per_axis(alpha, ops)

    # ---- explicit forms (small sizes; tests and interop) ------------------------------
    def masks(self, *, dtype: torch.dtype = torch.float64) -> Tensor:
        """The ``M`` binary basis elements, shape ``(M, C, k1, ..., kd)`` (Def. 3)."""
        eye = torch.eye(self.num_elements, dtype=dtype).reshape(self.num_elements, *self.reduced_shape)
        return self.compose(eye)

    def matrix(self, *, dtype: torch.dtype = torch.float64) -> Tensor:
        """The explicit basis matrix ``A`` (``C prod(k) x M``). Only for small kernels."""
        return self.masks(dtype=dtype).reshape(self.num_elements, -1).T

    def to_composite(self) -> "CompositeBasis":
        """The same basis as a general :class:`CompositeBasis`."""
        return CompositeBasis(self.masks())


class CompositeBasis(_Projection):
    """A general composite basis (Def. 1): ``M`` linearly independent binary masks.

    ``masks`` has shape ``(M, C, k1, ..., kd)``.  Unlike :class:`StructuredBasis` it is not
    separable, so the ``C prod(k) x M`` matrix ``A`` and its pseudo-inverse are built
    explicitly (once, in float64).
    """

    def __init__(self, masks: Tensor) -> None:
        masks = torch.as_tensor(masks)
        if masks.dim() < 2:
            raise ValueError(f"masks must have shape (M, C, *kernel_size), got {tuple(masks.shape)}")
        values = torch.unique(masks.to(torch.float64))
        if not bool(((values == 0) | (values == 1)).all()):
            bad = [float(v) for v in values if v not in (0.0, 1.0)][:5]
            raise ValueError(f"composite basis masks must be binary (0/1); found values {bad}")
        m = masks.shape[0]
        a = masks.to(torch.float64).reshape(m, -1).T
        if m > a.shape[0]:
            raise ValueError(f"{m} masks of {a.shape[0]} elements each cannot be linearly independent")
        rank = int(torch.linalg.matrix_rank(a))
        if rank < m:
            raise ValueError(f"composite basis masks must be linearly independent: {m} masks span only rank {rank}")
        if bool((a.sum(0) == 0).any()):
            empty = (a.sum(0) == 0).nonzero().flatten().tolist()
            raise ValueError(f"composite basis masks {empty} are all zeros")
        self.masks = masks.to(torch.float64)
        self._a = a
        self._pinv = torch.linalg.pinv(a)
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    @property
    def full_shape(self) -> tuple[int, ...]:
        return tuple(self.masks.shape[1:])

    @property
    def num_elements(self) -> int:
        return self.masks.shape[0]

    @property
    def ratio(self) -> float:
        return math.prod(self.full_shape) / self.num_elements

    def matrix(self, *, dtype: torch.dtype = torch.float64) -> Tensor:
        return self._a.to(dtype)

    def _ops(self, like: Tensor) -> tuple[Tensor, Tensor]:
        key = (like.device, like.dtype)
        if key not in self._cache:
            proj = self._a @ self._pinv
            self._cache[key] = (self._pinv.to(like.device, like.dtype), proj.to(like.device, like.dtype))
        return self._cache[key]

    def _flat(self, weight: Tensor) -> Tensor:
        shape = self.full_shape
        if tuple(weight.shape[weight.dim() - len(shape) :]) != shape:
            raise ValueError(f"weight must end with shape {shape}, got {tuple(weight.shape)}")
        return weight.reshape(*weight.shape[: weight.dim() - len(shape)], -1)

    def project(self, weight: Tensor) -> Tensor:
        return (self._flat(weight) @ self._ops(weight)[1].T).reshape(weight.shape)

    def coefficients(self, weight: Tensor) -> Tensor:
        """``alpha = A^+ W``, shape ``(..., M)``."""
        return self._flat(weight) @ self._ops(weight)[0].T

    def compose(self, alpha: Tensor) -> Tensor:
        a = self._a.to(alpha.device, alpha.dtype)
        return (alpha @ a.T).reshape(*alpha.shape[:-1], *self.full_shape)
