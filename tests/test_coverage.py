"""Which layers are safe to decompose (structconv.usage), and model coverage.

Unit tests of :func:`find_unsafe_layers` / :func:`find_unsafe_layers_static` on tiny modules,
and (slow) every torchvision classifier and a timm sample: after leaving the flagged layers
dense, ``structurize -> project_ -> decompose`` is exact in float64 and structures something.
The slow models are built by :func:`structconv.coverage.cheap_model`: the model's
own initialization is skipped (no memory touched), every run of repeated shape-preserving
blocks is cut to its first two (vit_h_14 keeps two encoder blocks of its original width), then
a simple random init; inputs are the smallest size each model accepts.  Every layer width is
checked (the projections are linear in the width); ``benchmarks/model_coverage.py --full``
checks the models at their full size.
"""


import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torchvision.models.vision_transformer import EncoderBlock

import structconv as sc
from structconv import coverage as mc
from structconv.usage import find_unsafe_layers, find_unsafe_layers_static

from .conftest import rel_err


# ------------------------------------------------------------------------------------------
# tiny modules
# ------------------------------------------------------------------------------------------
class ReadsChildWeight(nn.Module):
    """Like torchvision's Swin attention: the parent calls F.linear with the child's weight."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        q, k, v = F.linear(x, self.qkv.weight, self.qkv.bias).chunk(3, dim=-1)
        return self.proj(torch.softmax(q @ k.transpose(-1, -2), -1) @ v)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = ReadsChildWeight()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(self.attn(x)) + x


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.b.weight = self.a.weight
        self.c = nn.Linear(8, 4)

    def forward(self, x):
        return self.c(self.b(self.a(x)))


class Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Conv2d(3, 4, 3)
        self.aux = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.used(x)


class Metadata(nn.Module):
    """Reads shape / dtype / device / size() of a child's weight outside its forward: fine."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        w = self.conv.weight
        assert w.shape[0] == w.size(0) == 6 and w.dim() == 4 and w.numel() > 0
        x = x.to(dtype=w.dtype, device=w.device)
        return {"logits": self.fc(self.conv(x).mean((2, 3))), "aux": (x.sum(),)}


class CalledTwiceAndDirectly(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = self.conv(self.conv(x))
        return self.head.forward(x.mean((2, 3)))  # .forward() instead of __call__: still its own forward


class Scale(nn.Module):
    def forward(self, w):
        return 2 * w


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, groups=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )  # fmt: skip


def test_parent_reading_a_childs_weight_is_flagged():
    model = nn.Sequential(Block(), Block())
    unsafe = find_unsafe_layers(model, torch.randn(2, 5, 8))
    assert set(unsafe) == {"0.attn.qkv", "1.attn.qkv"}
    assert "outside its own forward (by 0.attn)" in unsafe["0.attn.qkv"]
    assert "never ran" in unsafe["0.attn.qkv"]


def test_excluding_flagged_layers_makes_decomposition_exact():
    torch.manual_seed(0)
    model = nn.Sequential(Block(), Block()).double().eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    unsafe = find_unsafe_layers(model, x)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        broken = sc.structurize(model, 2.0, check_usage=False)
        sc.decompose(broken)(x)
    # plan() checks by itself: with an example input, by tracing without one, or as overrides
    for s in (sc.structurize(model, 2.0, example_inputs=x), sc.structurize(model, 2.0),
              sc.structurize(model, 2.0, overrides={n: None for n in unsafe}, check_usage=False)):  # fmt: skip
        for m in s.modules():
            if isinstance(m, sc.StructuredLayer):
                m.project_()
        assert rel_err(sc.decompose(s)(x), s(x)) <= 1e-12
        assert isinstance(s[0].attn.qkv, nn.Linear) and not isinstance(s[0].attn.qkv, sc.StructuredLayer)
    skipped = {p.name: p.reason for p in sc.plan(model, 2.0, example_inputs=x).skipped}
    assert "outside its own forward (by 0.attn)" in skipped["0.attn.qkv"]


def test_tied_weights_are_flagged_on_both_layers():
    unsafe = find_unsafe_layers(Tied(), torch.randn(3, 8))
    assert set(unsafe) == {"a", "b"}
    assert "shares its parameter weight with b.weight" in unsafe["a"]


def test_embedding_tied_to_a_linear_head_is_flagged():
    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 6)
            self.head = nn.Linear(6, 10, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, idx):
            return self.head(self.emb(idx))

    unsafe = find_unsafe_layers(LM(), torch.tensor([[1, 2, 3]]))
    assert "shares its parameter weight with emb.weight" in unsafe["head"]
    assert "by emb" in unsafe["head"]


def test_a_child_never_called_is_flagged():
    unsafe = find_unsafe_layers(Unused(), torch.randn(1, 3, 8, 8))
    assert unsafe == {"aux": "its forward never ran on the example input"}


def test_a_normal_model_has_nothing_flagged_and_keeps_its_training_flags():
    model = small_cnn().train()
    model[1].eval()
    unsafe = find_unsafe_layers(model, torch.randn(2, 3, 8, 8))
    assert unsafe == {}
    assert model.training and not model[1].training and model[0].training
    assert "forward" not in model[0].__dict__ and not model[0]._forward_hooks and not model[0]._forward_pre_hooks


def test_metadata_reads_repeated_and_direct_calls_are_fine():
    assert find_unsafe_layers(Metadata(), torch.randn(1, 3, 6, 6)) == {}
    assert find_unsafe_layers(CalledTwiceAndDirectly(), (torch.randn(1, 4, 5, 5),)) == {}


def test_kwargs_inputs_and_no_grad_context():
    class KW(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.gate = nn.Linear(4, 4)

        def forward(self, x, *, gate=True):
            with torch.no_grad():
                g = torch.sigmoid(F.linear(x, self.gate.weight)) if gate else 1.0
            return self.fc(x) * g

    assert set(find_unsafe_layers(KW(), {"x": torch.randn(2, 4)})) == {"gate"}
    assert find_unsafe_layers(KW(), {"x": torch.randn(2, 4), "gate": False}) == {"gate": "its forward never ran on the example input"}


def test_parametrized_layers():
    model = small_cnn()
    parametrize.register_parametrization(model[3], "weight", Scale())
    assert find_unsafe_layers(model, torch.randn(1, 3, 8, 8)) == {}

    block = Block()
    parametrize.register_parametrization(block.attn.qkv, "weight", Scale())
    unsafe = find_unsafe_layers(block, torch.randn(1, 3, 8))
    assert set(unsafe) == {"attn.qkv"} and "by attn" in unsafe["attn.qkv"]


def test_weight_norm_hook_is_inside_the_layer_but_flagged_as_derived():
    model = small_cnn()
    with pytest.warns(FutureWarning):
        torch.nn.utils.weight_norm(model[0])
    unsafe = find_unsafe_layers(model, torch.randn(1, 3, 8, 8))
    assert unsafe == {"0": "its weight is not a Parameter (a hook derives it, e.g. weight_norm)"}


def test_candidates_restrict_the_answer_and_shared_modules_are_flagged():
    conv = nn.Conv2d(3, 3, 1)
    model = nn.Sequential(conv, nn.ReLU(), conv)
    unsafe = find_unsafe_layers(model, torch.randn(1, 3, 4, 4))
    assert "registered under several names (0, 2)" in unsafe["0"]
    block = Block()
    assert set(find_unsafe_layers(block, torch.randn(1, 2, 8), candidates=["fc", "attn.proj"])) == set()


def test_multihead_attention_out_proj_is_flagged():
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    unsafe = find_unsafe_layers(layer, torch.randn(1, 3, 16))
    assert set(unsafe) == {"self_attn.out_proj"} and "by self_attn" in unsafe["self_attn.out_proj"]


@pytest.mark.parametrize(
    "make, inputs",
    [
        (lambda: nn.Sequential(Block(), Block()), torch.randn(1, 3, 8)),
        (Tied, torch.randn(1, 8)),
        (Unused, torch.randn(1, 3, 6, 6)),
        (small_cnn, torch.randn(1, 3, 6, 6)),
        (lambda: EncoderBlock(2, 16, 32, 0.0, 0.0), torch.randn(1, 3, 16)),
    ],
    ids=["reads-child-weight", "tied", "unused", "cnn", "vit-encoder-block"],
)
def test_static_agrees_with_dynamic(make, inputs):
    model = make()
    assert set(find_unsafe_layers_static(model)) == set(find_unsafe_layers(model, inputs))


def test_static_ignores_metadata_and_returns_none_when_untraceable():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else x  # data-dependent: fx cannot trace it

    class ShapeOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x).reshape(-1, self.fc.weight.shape[0])

    assert find_unsafe_layers_static(Branchy()) is None
    assert find_unsafe_layers_static(ShapeOnly()) == {}


def test_shrink_drops_repeated_shape_preserving_blocks_only():
    def block(c_in, c_out):
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU())

    stage = nn.Sequential(block(3, 8), block(8, 8), block(8, 8), block(8, 8))
    stages = nn.Sequential(stage, nn.Sequential(block(8, 16), block(16, 16)))
    model = nn.Sequential(stages, nn.Flatten())
    x = torch.randn(1, 3, 4, 4)
    shape = model(x).shape
    assert mc.shrink_(model, x) == 2  # stage blocks 2 and 3; the stages change the width, Flatten is alone
    assert len(stage) == 2 and len(stages) == 2 and model(x).shape == shape


# ------------------------------------------------------------------------------------------
# model coverage (slow)
# ------------------------------------------------------------------------------------------
def _torchvision_names():
    try:
        return mc.torchvision_models()
    except Exception:  # pragma: no cover - collection must not fail
        return []


@pytest.mark.slow
@pytest.mark.parametrize(
    "source, name",
    [("torchvision", n) for n in _torchvision_names()] + [("timm", n) for n in mc.TIMM_SAMPLE],
)
def test_model_decomposes_exactly_after_excluding_flagged_layers(source, name):
    if source == "timm":
        pytest.importorskip("timm")
    torch.manual_seed(0)
    model, size, info = mc.cheap_model(source, name, max_params=0)
    rec = mc.check_model(model, size, today=False, static=False, reparameterize=False, inplace=True)
    det = rec["detected"]
    assert det["status"] == "ok", (det, rec["unsafe_sample"], info)
    assert det["structured"] > 0
    assert det["structurize_err"] <= 1e-12
