import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Randomized tests: a fixed profile so CI runs the same amount of work every time.
settings.register_profile(
    "structconv",
    deadline=None,
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.load_profile("structconv")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per xdist worker (and per subprocess a test starts): two workers with two
    # OpenMP threads each on two cores stall in every parallel region whenever a thread is
    # descheduled -- a plain conv2d was measured 100x slower that way.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(min(2, torch.get_num_threads()))


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| (0 when both are 0)."""
    num = torch.linalg.vector_norm((actual - expected).detach().double())
    den = torch.linalg.vector_norm(expected.detach().double())
    return float(num / den) if den > 0 else float(num)


def float64_reference(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` evaluated in float64 with the module's own (possibly float32) weights.

    Exactness tests compare a float32 path with this ground truth rather than with another
    float32 computation, so the tolerance measures our error, not the reference's rounding.
    """
    import copy

    return copy.deepcopy(module).double()(x.double())


TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


@pytest.fixture(params=[torch.float64, torch.float32], ids=["f64", "f32"])
def dtype(request):
    return request.param
