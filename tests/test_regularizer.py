import pytest
import torch
from torch import nn

import structconv as sc

from .conftest import rel_err


def explicit_term(layer) -> torch.Tensor:
    """||(I - A A^+) W||_F / ||W||_F with A built explicitly and torch.linalg.pinv (Eq. 3)."""
    a = layer.basis.matrix(dtype=torch.float64)
    proj = a @ torch.linalg.pinv(a)
    w = layer.weight.reshape(layer.weight.shape[0], -1)
    residual = w - w @ proj.T
    return residual.norm() / w.norm()


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(
        sc.StructuredConv2d(3, 6, 3, padding=1, c=2, n=2, dtype=torch.float64),
        nn.ReLU(),
        nn.Identity(),
        sc.StructuredConv2d(6, 8, (3, 1), groups=2, c=2, n=(2, 1), dtype=torch.float64),
        nn.Flatten(),
        sc.StructuredLinear(8 * 3 * 5, 4, r=30, dtype=torch.float64),
    )


def test_regularizer_equals_explicit_pinv_formula_and_its_gradient():
    model = small_model()
    layers = [m for m in model.modules() if isinstance(m, sc.StructuredLayer)]
    assert len(layers) == 3
    reg = sc.structural_regularization(model)
    explicit = sum(explicit_term(m) for m in layers)
    torch.testing.assert_close(reg, explicit, atol=1e-12, rtol=1e-10)
    grads = torch.autograd.grad(reg, [m.weight for m in layers])
    explicit_grads = torch.autograd.grad(explicit, [m.weight for m in layers])
    for g, e in zip(grads, explicit_grads):
        torch.testing.assert_close(g, e, atol=1e-12, rtol=1e-9)


def test_regularizer_is_zero_on_structured_weights_and_counts_composite_layers():
    model = small_model()
    for m in model.modules():
        if isinstance(m, sc.StructuredLayer):
            m.project_()
    assert float(sc.structural_regularization(model)) < 1e-12
    masks = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 0.0]]]).unsqueeze(1)
    comp = sc.CompositeConv2d(1, 2, 2, basis=masks, dtype=torch.float64)
    torch.testing.assert_close(sc.structural_regularization(comp), explicit_term(comp))


def test_regularizer_drives_weights_to_structure():
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    before = sum(sc.structure_errors(model).values())
    for _ in range(50):
        opt.zero_grad()
        sc.structural_regularization(model).backward()
        opt.step()
    after = sum(sc.structure_errors(model).values())
    assert after < 0.5 * before


def test_structure_errors_by_name():
    errors = sc.structure_errors(small_model())
    assert set(errors) == {"0", "3", "5"}
    assert all(0 < e < 1 for e in errors.values())


def test_regularizer_without_structured_layers_raises():
    with pytest.raises(ValueError, match="Sequential has no structured layers"):
        sc.structural_regularization(nn.Sequential(nn.Conv2d(3, 3, 3)))


def test_zero_weight_contributes_zero_not_nan():
    conv = sc.StructuredConv2d(4, 2, 3, c=2, n=2)
    nn.init.zeros_(conv.weight)
    reg = sc.structural_regularization(conv)
    assert float(reg) == 0.0
    reg.backward()
    assert torch.isfinite(conv.weight.grad).all()


def test_operators_cached_under_inference_mode_still_train():
    # a fresh band size, so its operators are first built inside inference mode
    conv = sc.StructuredConv2d(37, 4, 3, c=19, n=3)
    with torch.inference_mode():
        conv.basis.project(torch.zeros(4, 37, 3, 3))
    sc.structural_regularization(conv).backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()


def kronecker_term(layer, weight=None) -> torch.Tensor:
    """Eq. 3 for one layer with A = kron of the 1-D band matrices (independent of basis.py's operators)."""
    from structconv.basis import band_matrix

    basis = layer.basis
    a = torch.ones(1, 1, dtype=torch.float64)
    for full, red in zip(basis.full_shape, basis.reduced_shape):
        a = torch.kron(a, band_matrix(full, red))
    weight = layer.weight if weight is None else weight
    w = weight.double().reshape(weight.shape[0], -1)
    residual = w - w @ (a @ torch.linalg.pinv(a)).T
    return residual.norm() / w.norm()


def test_regularizer_gradient_on_wide_and_stacked_layers():
    """Wide channel axes (closed forms), a wide axis next to a structured kernel axis, and layers
    stacked because they share a basis: value and gradient equal autograd of the explicit formula."""
    torch.manual_seed(0)
    layers = nn.ModuleList([
        sc.StructuredConv2d(6, 4, 3, c=3, n=2, dtype=torch.float64),
        sc.StructuredConv2d(6, 4, 3, c=3, n=2, dtype=torch.float64),  # stacked with the first
        sc.StructuredLinear(300, 3, r=150, dtype=torch.float64),
        sc.StructuredLinear(301, 2, r=290, dtype=torch.float64),  # period 12 < r
        sc.StructuredConv1d(260, 2, 3, c=100, n=2, dtype=torch.float64),
    ])  # fmt: skip
    reg = sc.structural_regularization(layers)
    explicit = sum(kronecker_term(m) for m in layers)
    torch.testing.assert_close(reg, explicit, atol=1e-12, rtol=1e-10)
    weights = [m.weight for m in layers]
    for g, e in zip(torch.autograd.grad(reg, weights), torch.autograd.grad(explicit, weights)):
        torch.testing.assert_close(g, e, atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_layers_with_tiny_weights_read_their_true_error(dtype):
    # norms below finfo(float16).tiny: clamping the 16-bit norm there made 0.87 read 0.03
    torch.manual_seed(0)
    layers = nn.ModuleList(
        [sc.StructuredConv2d(8, 4, 3, c=4, n=2, dtype=dtype), sc.StructuredLinear(300, 2, r=150, dtype=dtype)]
    )
    with torch.no_grad():
        for m in layers:
            m.weight.mul_(2e-6)
    reg = sc.structural_regularization(layers)
    assert reg.dtype == torch.float32
    for m in layers:
        true = float(kronecker_term(m))
        assert true > 0.5
        assert m.structure_error() == pytest.approx(true, rel=1e-5)
    torch.testing.assert_close(reg.double(), sum(kronecker_term(m) for m in layers).detach(), rtol=1e-5, atol=0)
    reg.backward()
    for m in layers:
        assert m.weight.grad.dtype == dtype
        w = m.weight.detach().double().requires_grad_(True)
        want = torch.autograd.grad(kronecker_term(m, w), w)[0]
        assert float((m.weight.grad.double() - want).norm() / want.norm()) < 4 * torch.finfo(dtype).eps


def _net():
    torch.manual_seed(0)
    return sc.structurize(nn.Sequential(nn.Conv2d(6, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(),
                                        nn.Linear(8 * 3 * 3, 5)), 2.0)  # fmt: skip


def test_normalized_gradient_is_a_per_layer_scaled_eq3_gradient():
    from structconv.regularizer import add_normalized_regularization_grad_

    model = _net()
    x, y = torch.randn(4, 6, 7, 7), torch.randint(0, 5, (4,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    layers = [m for m in model.modules() if isinstance(m, sc.StructuredLayer)]
    task = {m: m.weight.grad.clone() for m in layers}
    # the reference: autograd of each layer's own Eq. 3 term, scaled by the rule written out
    expected = {}
    for m in layers:
        w = m.weight.detach().clone().requires_grad_(True)
        term = torch.linalg.vector_norm(m.basis.residual(w)) / torch.linalg.vector_norm(w)
        (grad,) = torch.autograd.grad(term, w)
        e = float(term)
        push = (1 - e * e) ** 0.5 / float(torch.linalg.vector_norm(w))
        off = float(torch.linalg.vector_norm(m.basis.residual(task[m])))
        expected[m] = task[m] + max(0.5, 3.0 * off / push) * grad
    worst = add_normalized_regularization_grad_(model, lam=0.5, kappa=3.0)
    assert worst == pytest.approx(max(m.structure_error() for m in layers), rel=1e-5)
    for m in layers:
        assert rel_err(m.weight.grad, expected[m]) < 1e-5
    # kappa = 0 leaves lam * Eq. 3, the paper's gradient
    model.zero_grad()
    model2 = _net()
    (0.7 * sc.structural_regularization(model2)).backward()
    for m in layers:
        m.weight.grad = torch.zeros_like(m.weight)
    add_normalized_regularization_grad_(model, lam=0.7, kappa=0.0)
    for a, b in zip(layers, [m for m in model2.modules() if isinstance(m, sc.StructuredLayer)]):
        assert rel_err(a.weight.grad, b.weight.grad) < 1e-5


def test_projected_sgd_stays_structured():
    from structconv.regularizer import project_gradients_, project_weights_

    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    x, y = torch.randn(4, 6, 7, 7), torch.randint(0, 5, (4,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()  # momentum buffers now hold unstructured directions
    project_weights_(model, opt)
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        project_gradients_(model)
        opt.step()
    assert max(sc.structure_errors(model).values()) < 1e-5
