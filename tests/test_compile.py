"""The deployment form under torch.compile: same outputs, no errors."""

import pytest
import torch

import structconv as sc

from .conftest import rel_err


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()  # each test compiles new modules: start from an empty cache
    yield
    torch._dynamo.reset()


def _layers():
    torch.manual_seed(0)
    yield sc.StructuredConv2d(32, 16, 3, padding=1, c=16, n=3).project_()  # GEMM channel pool
    yield sc.StructuredConv2d(8, 8, 3, stride=2, padding=1, c=6, n=2).project_()  # spatial + channel sums
    yield sc.StructuredConv2d(32, 16, 1, stride=2, c=8, n=1).project_()  # strided 1x1 pool
    yield sc.StructuredLinear(40, 8, r=16).project_()


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("idx", range(4))
def test_decomposed_layers_compile(backend, idx):
    layer = list(_layers())[idx]
    dec = layer.decompose().eval()
    x = torch.randn(2, 40) if isinstance(layer, sc.StructuredLinear) else torch.randn(2, layer.in_channels, 9, 9)
    compiled = torch.compile(dec, backend=backend, fullgraph=True)
    with torch.no_grad():
        assert rel_err(compiled(x), layer(x)) < 1e-5
        if x.dim() == 4:  # channels_last input through the same compiled module
            xc = x.contiguous(memory_format=torch.channels_last)
            assert rel_err(compiled(xc), layer(x)) < 1e-5


def test_training_through_compiled_decomposed_layer():
    torch.manual_seed(0)
    dec = sc.DecomposedConv2d(16, 8, 3, padding=1, c=8, n=3)
    compiled = torch.compile(dec, backend="aot_eager")
    x = torch.randn(2, 16, 6, 6)
    compiled(x).square().sum().backward()
    assert dec.conv.weight.grad is not None and dec.conv.weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_decomposed_resnet_with_inductor():
    from structconv.models import create_model

    model = sc.decompose(create_model("cifar_resnet20", struct="A")).eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model)
    with torch.no_grad():
        assert rel_err(compiled(x), model(x)) < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_decomposed_layer_on_cuda_matches_cpu():
    layer = next(_layers())
    dec = layer.decompose().eval()
    x = torch.randn(2, 32, 9, 9)
    with torch.no_grad():
        expected = layer(x)
        got = dec.cuda()(x.cuda()).cpu()
    assert rel_err(got, expected) < 1e-4


def test_spatial_pool_compiles_to_the_fusable_pooling_kernel():
    """Eager picks a depthwise conv with ones for a narrow tensor; under torch.compile 'auto'
    picks avg_pool (Inductor fuses it with its neighbours), and an explicit choice is kept."""
    layer = sc.StructuredConv2d(16, 16, 3, padding=1, c=16, n=2).project_()
    dec = layer.decompose().eval()
    x = torch.randn(2, 16, 8, 8)

    def ops_of(module):
        seen = []

        def backend(gm, example_inputs):
            seen.extend(str(n.target) for n in gm.graph.nodes if n.op in ("call_function", "call_module"))
            return gm.forward

        torch._dynamo.reset()
        with torch.no_grad():
            assert rel_err(torch.compile(module, backend=backend, fullgraph=True)(x), layer(x)) < 1e-5
        return " ".join(seen)

    auto = ops_of(dec)
    assert "avg_pool2d" in auto and auto.count("conv2d") == 1  # the pool, then only the small conv
    dec.pool.spatial_method = "conv"
    explicit = ops_of(dec)
    assert "avg_pool2d" not in explicit and explicit.count("conv2d") == 2
