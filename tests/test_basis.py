import math
from contextlib import contextmanager

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from structconv import basis as basis_mod
from structconv.basis import CompositeBasis, StructuredBasis, band_matrix, band_pinv, band_projector


@given(size=st.integers(1, 12), data=st.data())
def test_band_matrix_columns_are_shifted_runs(size, data):
    m = data.draw(st.integers(1, size))
    t = band_matrix(size, m)
    assert t.shape == (size, m)
    for j in range(m):
        col = t[:, j]
        ones = col.nonzero().flatten().tolist()
        assert ones == list(range(j, j + size - m + 1))
    assert torch.linalg.matrix_rank(t) == m


@given(size=st.integers(1, 12), data=st.data())
def test_band_pinv_and_projector(size, data):
    m = data.draw(st.integers(1, size))
    t = band_matrix(size, m)
    torch.testing.assert_close(band_pinv(size, m), torch.linalg.pinv(t), atol=1e-12, rtol=0)
    p = band_projector(size, m)
    torch.testing.assert_close(p @ p, p, atol=1e-12, rtol=0)
    torch.testing.assert_close(p, p.T, atol=1e-12, rtol=0)
    torch.testing.assert_close(p @ t, t, atol=1e-12, rtol=0)


def test_band_rejects_bad_sizes():
    with pytest.raises(ValueError, match="m=4"):
        band_matrix(3, 4)
    with pytest.raises(ValueError, match="m=0"):
        band_projector(3, 0)


@st.composite
def bases(draw, max_dims=3):
    nd = draw(st.integers(0, max_dims))
    channels = draw(st.integers(1, 6))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    c = draw(st.integers(1, channels))
    n = tuple(draw(st.integers(1, k)) for k in kernel)
    return StructuredBasis(channels, kernel, c, n)


def explicit_matrix(basis: StructuredBasis) -> torch.Tensor:
    """A as the Kronecker product of the 1-D band matrices (paper Sec. 5), row-major order."""
    a = torch.ones(1, 1, dtype=torch.float64)
    for full, red in zip(basis.full_shape, basis.reduced_shape):
        a = torch.kron(a, band_matrix(full, red))
    return a


@given(basis=bases())
def test_masks_are_shifted_cuboids_of_ones(basis):
    masks = basis.masks()
    assert masks.shape == (basis.num_elements, *basis.full_shape)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    window = math.prod(basis.pool_window)
    assert (masks.reshape(basis.num_elements, -1).sum(1) == window).all()
    # each mask's support is a box of the pool window's extent
    for mask in masks:
        idx = mask.nonzero()
        extent = tuple((idx.max(0).values - idx.min(0).values + 1).tolist())
        assert extent == basis.pool_window
    assert torch.linalg.matrix_rank(basis.matrix()) == basis.num_elements
    torch.testing.assert_close(basis.matrix(), explicit_matrix(basis))


@given(basis=bases(), out=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_separable_projection_equals_explicit_pinv(basis, out, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, *basis.full_shape, generator=g, dtype=torch.float64)
    a = explicit_matrix(basis)
    flat = w.reshape(out, -1)
    expected_proj = (a @ torch.linalg.pinv(a) @ flat.T).T.reshape(w.shape)
    expected_alpha = (torch.linalg.pinv(a) @ flat.T).T.reshape(out, *basis.reduced_shape)
    torch.testing.assert_close(basis.project(w), expected_proj, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(basis.coefficients(w), expected_alpha, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(basis.compose(basis.coefficients(w)), basis.project(w), atol=1e-10, rtol=1e-10)
    alpha = torch.randn(out, *basis.reduced_shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(basis.coefficients(basis.compose(alpha)), alpha, atol=1e-10, rtol=1e-10)
    assert basis.error(basis.compose(alpha)) < 1e-12


def test_structured_basis_validation_names_values():
    with pytest.raises(ValueError, match=r"c=5 .*C=4"):
        StructuredBasis(4, (3, 3), 5, (2, 2))
    with pytest.raises(ValueError, match=r"axis 1 has n=4 but kernel size 3"):
        StructuredBasis(4, (3, 3), 2, (2, 4))
    with pytest.raises(ValueError, match="one entry per kernel axis"):
        StructuredBasis(4, (3, 3), 2, (2,))


def test_ratio_and_pool_window():
    b = StructuredBasis(64, (3, 3), 32, (3, 3))
    assert b.ratio == 2.0
    assert b.pool_window == (33, 1, 1)
    assert StructuredBasis(16, (3, 3), 16, (2, 2)).pool_window == (1, 2, 2)


def test_composite_basis_matches_structured():
    b = StructuredBasis(3, (3, 3), 2, (2, 2))
    comp = b.to_composite()
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(comp.project(w), b.project(w))
    assert comp.ratio == b.ratio


def test_composite_basis_rejects_bad_masks():
    with pytest.raises(ValueError, match="binary"):
        CompositeBasis(torch.tensor([[[0.5, 1.0]]]))
    dependent = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]])
    with pytest.raises(ValueError, match="linearly independent"):
        CompositeBasis(dependent)
    with pytest.raises(ValueError, match="all zeros|linearly independent"):
        CompositeBasis(torch.zeros(1, 1, 2))


# ---- per-axis operators: the dense GEMM path and the closed forms for wide axes ---------------
THRESHOLD = basis_mod._CLOSED_FORM_MIN_SIZE
# the dense GEMM on every axis, or the closed form on every axis (whatever its size)
PATHS = {"dense": 10**9, "closed": 1}


@contextmanager
def closed_form_from(size: int):
    old = basis_mod._CLOSED_FORM_MIN_SIZE
    basis_mod._CLOSED_FORM_MIN_SIZE = size
    try:
        yield
    finally:
        basis_mod._CLOSED_FORM_MIN_SIZE = old


@st.composite
def bands(draw, low=1, high=24):
    """(size, m): m == 1, m == size (L == 1), L > m, L < m, size a multiple of L or not."""
    size = draw(st.integers(low, high))
    period = draw(st.one_of(st.integers(1, size), st.sampled_from([1, size, (size + 1) // 2, 2])))
    period = min(max(period, 1), size)
    return size, size - period + 1


def along_axis(mat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``mat`` applied along dim 1 of ``(before, size, after)``."""
    return torch.einsum("ij,bja->bia", mat, x)


def check_axis_operators(size, m, before, after, seed, dtype):
    """StructuredBasis(size, (after,), m, (after,)): one band along dim 1, an identity axis after it."""
    g = torch.Generator().manual_seed(seed)
    basis = StructuredBasis(size, (after,), m, (after,))
    t = band_matrix(size, m)
    pinv = torch.linalg.pinv(t)
    w = torch.randn(before, size, after, generator=g, dtype=torch.float64)
    alpha = torch.randn(before, m, after, generator=g, dtype=torch.float64)
    expected = {
        "project": along_axis(t @ pinv, w),
        "residual": w - along_axis(t @ pinv, w),
        "coefficients": along_axis(pinv, w),
        "compose": along_axis(t, alpha),
    }
    got = {
        "project": basis.project(w.to(dtype)),
        "residual": basis.residual(w.to(dtype)),
        "coefficients": basis.coefficients(w.to(dtype)),
        "compose": basis.compose(alpha.to(dtype)),
    }
    tol = 1e-12 if dtype == torch.float64 else 1e-6 * math.sqrt(size)
    for name, want in expected.items():
        assert got[name].dtype == dtype and got[name].shape == want.shape, name
        scale = float(want.abs().max()) + float((alpha if name == "compose" else w).abs().max())
        err = float((got[name].double() - want).abs().max())
        assert err <= tol * scale, (name, err)


@pytest.mark.parametrize("path", list(PATHS))
@given(band=bands(), before=st.integers(1, 3), after=st.integers(1, 3), seed=st.integers(0, 2**31 - 1),
       dtype=st.sampled_from([torch.float64, torch.float32]))  # fmt: skip
def test_axis_operators_match_explicit_pinv(path, band, before, after, seed, dtype):
    with closed_form_from(PATHS[path]):
        check_axis_operators(*band, before, after, seed, dtype)


@settings(max_examples=12)
@given(band=bands(THRESHOLD, THRESHOLD + 160), seed=st.integers(0, 2**31 - 1),
       dtype=st.sampled_from([torch.float64, torch.float32]))  # fmt: skip
def test_wide_axis_operators_match_explicit_pinv(band, seed, dtype):
    """Above the threshold the default path is the closed form; its cached-matrix twins agree."""
    size, m = band
    assert not basis_mod._dense(size)
    check_axis_operators(size, m, 2, 2, seed, dtype)
    t = band_matrix(size, m)
    torch.testing.assert_close(band_pinv(size, m), torch.linalg.pinv(t), atol=1e-12, rtol=0)
    torch.testing.assert_close(band_projector(size, m), t @ torch.linalg.pinv(t), atol=1e-12, rtol=0)


@pytest.mark.parametrize("path", list(PATHS))
@given(basis=bases(), out=st.integers(1, 3), seed=st.integers(0, 2**31 - 1),
       dtype=st.sampled_from([torch.float64, torch.float32]))  # fmt: skip
def test_nd_operators_match_explicit_kronecker(path, basis, out, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, *basis.full_shape, generator=g, dtype=torch.float64)
    a = explicit_matrix(basis)
    flat = w.reshape(out, -1)
    proj = (flat @ (a @ torch.linalg.pinv(a)).T).reshape(w.shape)
    alpha = (flat @ torch.linalg.pinv(a).T).reshape(out, *basis.reduced_shape)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    with closed_form_from(PATHS[path]):
        wd = w.to(dtype)
        torch.testing.assert_close(basis.project(wd).double(), proj, atol=tol, rtol=tol)
        torch.testing.assert_close(basis.residual(wd).double(), w - proj, atol=tol, rtol=tol)
        torch.testing.assert_close(basis.coefficients(wd).double(), alpha, atol=tol, rtol=tol)
        torch.testing.assert_close(basis.compose(alpha.to(dtype)).double(), proj, atol=tol, rtol=tol)
        want_err = float((w - proj).norm() / w.norm())
        assert basis.error(wd) == pytest.approx(want_err, rel=tol, abs=tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_closed_forms_compute_half_types_in_float32(dtype):
    basis = StructuredBasis(600, (3,), 300, (3,))
    w = torch.randn(4, 600, 3, dtype=torch.float64)
    tol = 5 * torch.finfo(dtype).eps  # a few roundings of the 16-bit input and output
    ref = basis.residual(w)
    got = basis.residual(w.to(dtype))
    assert got.dtype == dtype
    assert float((got.double() - ref).norm() / ref.norm()) < tol
    alpha = basis.coefficients(w.to(dtype))
    assert alpha.dtype == dtype
    assert float((basis.compose(alpha).double() - basis.project(w)).norm() / w.norm()) < tol
    # tiny weights: the error is read in float32, not from an underflowing 16-bit norm
    tiny = (w * 1e-5).to(dtype)
    assert basis.error(tiny) == pytest.approx(basis.error(tiny.double()), rel=1e-2)


@pytest.mark.parametrize("op", ["residual", "project", "coefficients", "compose"])
def test_closed_forms_gradcheck(op):
    torch.manual_seed(0)
    with closed_form_from(1):
        for size, m in [(7, 3), (7, 5), (6, 1), (5, 4), (9, 2)]:
            basis = StructuredBasis(size, (2,), m, (1,))
            shape = (2, *(basis.reduced_shape if op == "compose" else basis.full_shape))
            x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
            fn = getattr(basis, op)
            assert torch.autograd.gradcheck(fn, (x,))
            if op in ("residual", "project"):  # the projection Function's own backward is differentiable
                assert torch.autograd.gradgradcheck(fn, (x,))


def test_wide_axes_build_no_dense_operator_and_caches_are_bounded():
    basis_mod._band_ops.cache_clear()
    basis_mod._gram_roots.cache_clear()
    basis = StructuredBasis(4096, (1, 1), 2048, (1, 1))
    w = torch.randn(3, 4096, 1, 1)
    basis.project(w), basis.residual(w), basis.compose(basis.coefficients(w)), basis.error(w)
    assert basis_mod._band_ops.cache_info().currsize == 0
    assert basis_mod._gram_roots.cache_info().currsize == 0  # only the orthonormal parametrization builds them
    for cache in (basis_mod._band_ops_cpu64, basis_mod._band_ops, basis_mod._gram_roots_cpu64, basis_mod._gram_roots):
        assert cache.cache_info().maxsize is not None


@settings(max_examples=30)
@given(band=st.one_of(bands(1, 12), bands(THRESHOLD, THRESHOLD + 40)))
def test_orthonormal_parametrization_on_any_width(band):
    size, m = band
    basis = StructuredBasis(size, (), m, ())
    eye = torch.eye(m, dtype=torch.float64)
    q = basis.compose(basis.orthonormal_to_coefficients(eye))  # rows: the columns of Q = A (A^T A)^{-1/2}
    torch.testing.assert_close(q @ q.T, eye, atol=1e-9, rtol=0)
    torch.testing.assert_close(q.T @ q, band_projector(size, m), atol=1e-9, rtol=0)
    alpha = torch.randn(2, m, dtype=torch.float64)
    beta = basis.coefficients_to_orthonormal(alpha)
    torch.testing.assert_close(basis.orthonormal_to_coefficients(beta), alpha, atol=1e-9, rtol=1e-9)


def test_operators_cached_under_inference_mode_still_train():
    # fresh sizes, so the cached matrices (dense projection, Gram roots) are first built inside inference mode
    basis = StructuredBasis(43, (3, 3), 20, (2, 3))
    with torch.inference_mode():
        basis.project(torch.zeros(2, 43, 3, 3))
        basis.orthonormal_to_coefficients(torch.zeros(2, 20, 2, 3))
    w = torch.randn(2, 43, 3, 3, requires_grad=True)
    beta = torch.randn(2, 20, 2, 3, requires_grad=True)
    (basis.residual(w).square().sum() + basis.orthonormal_to_coefficients(beta).square().sum()).backward()
    assert torch.isfinite(w.grad).all() and torch.isfinite(beta.grad).all()


@pytest.mark.parametrize("path", list(PATHS))
def test_operators_accept_non_contiguous_weights(path):
    basis = StructuredBasis(12, (3, 3), 5, (2, 3))
    w = torch.randn(4, 12, 3, 3, dtype=torch.float64)
    w_cl = w.to(memory_format=torch.channels_last)
    with closed_form_from(PATHS[path]):
        for op in ("project", "residual", "coefficients"):
            torch.testing.assert_close(getattr(basis, op)(w_cl), getattr(basis, op)(w), atol=1e-12, rtol=0)
        torch.testing.assert_close(basis.project(w.transpose(0, 1).contiguous().transpose(0, 1)), basis.project(w))
