import json
import math

import pytest
import torch
from torch import nn

import structconv as sc
from structconv._timing import capture_inputs
from structconv.autotune import optimize
from structconv.speed_plan import candidate_structures, speed_plan

from .conftest import TOL, float64_reference, rel_err


def _tiny(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.ReLU(),
        nn.Conv2d(16, 32, 1, stride=2), nn.Flatten(), nn.LazyLinear(10),
    )  # fmt: skip
    model(torch.randn(1, 3, 8, 8))
    return model.eval()


def _decomposed():
    structured = sc.structurize(_tiny(), 2.0)
    for m in structured.modules():
        if isinstance(m, sc.StructuredLayer):
            m.project_()
    return structured, sc.decompose(structured).eval()


def test_optimize_is_exact_and_reports_every_layer(tmp_path):
    structured, dec = _decomposed()
    x = torch.randn(2, 3, 8, 8)
    cache = tmp_path / "tune.json"
    # The whole-model check is off: it is re-timed on every call (never cached), so on a noisy
    # machine it may flip the model to all-dense in one run and not in the other; it has its
    # own test below.
    tuned, report = optimize(dec, x, threads=1, cache=cache, repeats=2, warmup=1, min_time_s=0, whole_model=False)
    names = [n for n, m in dec.named_modules() if isinstance(m, sc.DecomposedLayer)]
    assert [c.name for c in report.layers] == names
    assert all(c.choice in ("decomposed", "dense") for c in report.layers)
    assert report.threads == 1
    with torch.no_grad():
        assert rel_err(tuned(x), structured(x)) < 1e-5
    assert "Autotune" in str(report) and names[0] in str(report)
    data = json.loads(cache.read_text())
    assert len(data) == len(names)
    # the second run reads every decision from the cache
    _, again = optimize(dec, x, threads=1, cache=cache, whole_model=False)
    assert all(c.cached for c in again.layers)
    assert [c.choice for c in again.layers] == [c.choice for c in report.layers]


def test_cached_dense_choice_replaces_layer_with_exact_dense_kernel(tmp_path):
    structured, dec = _decomposed()
    x = torch.randn(2, 3, 8, 8)
    cache = tmp_path / "tune.json"
    optimize(dec, x, threads=1, cache=cache, repeats=1, warmup=0, min_time_s=0)
    data = json.loads(cache.read_text())
    for entry in data.values():
        entry["choice"] = "dense"
    cache.write_text(json.dumps(data))
    tuned, report = optimize(dec, x, threads=1, cache=cache)
    assert report.dense_layers == [c.name for c in report.layers]
    assert not any(isinstance(m, sc.DecomposedLayer) for m in tuned.modules())
    assert type(tuned[2]) is nn.Conv2d
    with torch.no_grad():
        assert rel_err(tuned(x), structured(x)) < 1e-5
    # the input model is untouched (inplace=False)
    assert isinstance(dec[2], sc.DecomposedConv2d)


def test_cached_pool_choice_is_applied(tmp_path):
    _, dec = _decomposed()
    x = torch.randn(2, 3, 8, 8)
    cache = tmp_path / "tune.json"
    optimize(dec, x, threads=1, cache=cache, repeats=1, warmup=0, min_time_s=0)
    data = json.loads(cache.read_text())
    key = next(k for k in data if "16->16" in k)
    data[key].update(choice="decomposed", pool="sum")
    cache.write_text(json.dumps(data))
    tuned, _ = optimize(dec, x, threads=1, cache=cache, whole_model=False)
    assert tuned[2].pool.channel_method == "sum"


def test_optimize_rejects_models_without_decomposed_layers():
    with pytest.raises(ValueError, match="decompose"):
        optimize(_tiny(), torch.randn(1, 3, 8, 8), cache=False)


def test_candidate_structures_reach_the_ratio():
    cands = candidate_structures(64, (3, 3), 2.0)
    assert cands
    for spec in cands:
        assert 64 * 9 / (spec.c * math.prod(spec.n)) >= 2.0 - 1e-9
    assert sc.StructureSpec(32, (3, 3)) in cands


def test_speed_plan_gives_overrides_structurize_accepts():
    model = _tiny()
    x = torch.randn(1, 3, 8, 8)
    plan = speed_plan(model, x, 2.0, threads=1, repeats=1, warmup=0)
    assert plan.overrides, "the 16-channel 3x3 conv has several choices"
    structured = sc.structurize(model, 2.0, overrides=plan.overrides)
    for name, spec in plan.overrides.items():
        layer = structured.get_submodule(name)
        assert (layer.c, layer.n) == (spec.c, spec.n)
        assert layer.basis.ratio >= 2.0 - 1e-9
    assert "SpeedPlan" in str(plan)


def test_candidates_stay_within_the_slack_of_the_requested_compression():
    # 16-channel 3x3 at ratio 2: (8, 3x3), (12, 3x2), (12, 2x3), (16, 2x2) -- not (16, 1x3) (3x)
    cands = candidate_structures(16, (3, 3), 2.0)
    assert sc.StructureSpec(16, (2, 2)) in cands and sc.StructureSpec(8, (3, 3)) in cands
    assert all(16 * 9 / (s.c * math.prod(s.n)) <= 2.0 * 1.15 + 1e-9 for s in cands)
    assert sc.StructureSpec(16, (1, 3)) not in cands
    assert sc.StructureSpec(16, (1, 3)) in candidate_structures(16, (3, 3), 2.0, slack=1.5)


def test_speed_plan_over_a_reference_plan_keeps_each_layers_compression():
    """A speed plan for a reference plan (e.g. Struct-A) keeps every layer at its own ratio
    (within the slack), and the reference's own (c, n) is among the measured candidates."""
    model = _tiny()
    reference = sc.plan(model, 2.0, overrides={"2": (16, 2), "0": None})
    plan = speed_plan(model, torch.randn(1, 3, 8, 8), reference, threads=1, repeats=1, warmup=0)
    assert set(plan.overrides) <= {p.name for p in reference.structured}
    assert "0" not in plan.overrides  # dense in the reference: stays dense
    own = {p.name: p.ratio for p in reference.structured}
    assert plan.overrides, "the 16-channel 3x3 conv has several choices"
    for name, spec in plan.overrides.items():
        layer = model.get_submodule(name)
        ratio = layer.in_channels * math.prod(layer.kernel_size) / (spec.c * math.prod(spec.n))
        assert own[name] - 1e-9 <= ratio <= own[name] * 1.15 + 1e-9
    assert "SpeedPlan" in str(plan)
    assert "16x2x2" in plan.candidates["2"]  # the reference's own (c, n) competed
    with pytest.raises(ValueError, match="slack"):
        speed_plan(model, torch.randn(1, 3, 8, 8), 2.0, slack=0.5)


@pytest.mark.parametrize("faster", ["tuned", "dense", "tie"])
def test_whole_model_check_keeps_the_faster_of_tuned_and_all_dense(monkeypatch, faster, tmp_path):
    """Layers that each win alone can lose together: the whole-model check times the tuned
    model against every-layer-dense and keeps the faster, exactly either way."""
    import structconv.autotune as at

    structured, dec = _decomposed()
    x = torch.randn(2, 3, 8, 8)
    # a huge margin: every layer stays decomposed, as if each had won on its own
    tuned, report = optimize(dec, x, threads=1, cache=False, repeats=1, warmup=0, margin=1e9, whole_model=False)
    decomposed_names = [c.name for c in report.layers if c.choice == "decomposed"]
    assert decomposed_names and report.whole_model is None
    inputs = capture_inputs(tuned, x, decomposed_names)
    fake = {"tuned": {"tuned": [1.0, 1.0, 3.0], "dense": [2.0, 2.0, 1.0]},  # one slow round must not flip it
            "dense": {"tuned": [2.0, 2.0, 1.0], "dense": [1.0, 1.0, 3.0]},
            "tie": {"tuned": [1.0, 1.0, 1.0], "dense": [1.0, 1.0, 1.0]}}[faster]  # ties go to the dense reference
    monkeypatch.setattr(at, "interleaved_times", lambda fns, **kw: {k: list(fake[k]) for k in fns})
    at._check_whole_model(tuned, x, inputs, report, warmup=0, repeats=1, min_time_s=0, margin=1.0)
    assert report.whole_model["choice"] == ("tuned" if faster == "tuned" else "all_dense")
    kinds = {type(tuned.get_submodule(n)).__name__ for n in decomposed_names}
    if faster == "tuned":
        assert all(k.startswith("Decomposed") for k in kinds)
    else:
        assert not any(k.startswith("Decomposed") for k in kinds)
        assert set(report.dense_layers) >= set(decomposed_names)
        assert "every layer dense" in str(report)
    with torch.inference_mode():
        # four float32 layers in a row: a few times the one-layer tolerance
        assert rel_err(tuned(x), float64_reference(structured, x)) <= 10 * TOL[torch.float32]
