import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

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
