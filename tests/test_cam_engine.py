"""The CAM engine's contract: one pass, gradients only to the layer, no side effects, batching."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import explainkit
from explainkit.cam import GRADIENT_METHODS, cams, compute, get_method, list_methods
from explainkit.cam.engine import CamRun
from explainkit.errors import CapabilityError, ConfigError
from explainkit.hooks import hook_count
from explainkit.models import TinyCNN


class _Count(torch.autograd.Function):
    backward_calls = 0

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        _Count.backward_calls += 1
        return g


class _NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        raise AssertionError("the backward pass went below the target layer")


class Probe(nn.Module):
    """TinyCNN with a forward counter, a backward counter at the logits and a tripwire below the target."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = TinyCNN(3)
        self.forwards = 0

    def forward(self, x):
        self.forwards += 1
        f = self.net.features
        h = f[1](_NoBackward.apply(f[0](x)))
        h = f[3](f[2](h))
        return _Count.apply(self.net.classifier(torch.flatten(self.net.pool(h), 1)))


@pytest.fixture()
def x():
    torch.manual_seed(2)
    return torch.randn(3, 3, 64, 64)


def test_all_gradient_methods_from_one_forward_and_one_backward(x):
    model = Probe().eval()
    _Count.backward_calls = 0
    out = cams(model, x, layer="net.features.3")
    assert set(out) == set(GRADIENT_METHODS)
    assert model.forwards == 1 and _Count.backward_calls == 1


@pytest.mark.parametrize("kind", ["layer", "input"])
def test_no_side_effects_on_the_model(kind, x):
    # Probe trips if a backward goes below the layer: methods whose backward runs to the input use TinyCNN
    model = Probe() if kind == "layer" else TinyCNN(3)
    model.train()
    model.get_submodule("net.features.2" if kind == "layer" else "features.2").eval()  # mixed state
    flags = {n: m.training for n, m in model.named_modules()}
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    if kind == "input":
        x = x[:, :, :32, :32]
    for method in list_methods():
        if get_method(method).to_input == (kind == "input"):
            explainkit.cam(model, x, layer="net.features.3" if kind == "layer" else "features.3", method=method,
                           batch_size=16)
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())  # BN ran in eval mode
    assert hook_count(model) == 0 and torch.is_grad_enabled()


def test_hooks_removed_and_grad_mode_restored_after_a_failure(x):
    class Boom(TinyCNN):
        def forward(self, x):
            self.features(x)
            raise RuntimeError("boom")

    model = Boom().eval()
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="boom"):
            explainkit.cam(model, x, layer="features.3")
        assert not torch.is_grad_enabled()
    assert hook_count(model) == 0 and torch.is_grad_enabled()


@pytest.mark.parametrize("method", [m for m in list_methods() if m not in ("smoothgrad", "gradient_shap")])
def test_a_batch_gives_the_maps_of_its_images_one_by_one(method, tiny_cnn, x):
    x = x[:, :, :32, :32]
    batch = explainkit.cam(tiny_cnn, x, method=method, layer="features.3", batch_size=5)
    singles = torch.cat([explainkit.cam(tiny_cnn, x[i:i + 1], method=method, layer="features.3", batch_size=5)
                         for i in range(x.shape[0])])
    torch.testing.assert_close(batch, singles, atol=2e-5, rtol=0)


@pytest.mark.parametrize("method", ["scorecam", "ablationcam", "smoothgradcampp"])
def test_extra_passes_are_chunked(method, tiny_cnn, x, monkeypatch):
    rows: list[int] = []
    for name in ("scores", "capture"):
        original = getattr(CamRun, name)

        def spy(self, inputs, *args, _original=original, **kwargs):
            rows.append(inputs.shape[0])
            return _original(self, inputs, *args, **kwargs)

        monkeypatch.setattr(CamRun, name, spy)
    explainkit.cam(tiny_cnn, x, method=method, layer="features.3", batch_size=7)
    assert len(rows) > 3 and max(rows) <= 7


def test_targets_default_class_index_list_and_function(tiny_cnn, x):
    with torch.no_grad():
        logits = tiny_cnn(x)
    pred = logits.argmax(1)
    res = compute(tiny_cnn, x, methods=["gradcam"], layer="features.3")
    assert torch.equal(res.classes, pred)
    torch.testing.assert_close(res.scores, logits.gather(1, pred[:, None])[:, 0])
    other = (pred + 1) % 3
    by_list = explainkit.cam(tiny_cnn, x, layer="features.3", targets=other.tolist())
    by_fn = explainkit.cam(tiny_cnn, x, layer="features.3", targets=lambda out: out.gather(1, other[:, None])[:, 0])
    torch.testing.assert_close(by_list, by_fn)
    assert not torch.allclose(by_list, explainkit.cam(tiny_cnn, x, layer="features.3"))
    # one class for all images broadcasts
    assert torch.equal(compute(tiny_cnn, x, methods=["gradcam"], layer="features.3", targets=2).classes,
                       torch.full((3,), 2))


def test_handle_default_layer_and_raw_maps(tiny_cnn, x):
    handle = explainkit.wrap(tiny_cnn)
    res = compute(handle, x, methods=["gradcam"])
    assert res.layers == ["features"] and res.grid("gradcam") == (8, 8)
    raw = explainkit.cam(handle, x, raw=True)
    assert raw.shape == (3, 8, 8) and raw.min() < 0  # signed, un-normalised
    torch.testing.assert_close(res.raw["gradcam"]["features"], raw)


def test_errors_are_one_line_and_typed(tiny_cnn, x):
    with pytest.raises(ConfigError, match="unknown CAM method 'nope'"):
        explainkit.cam(tiny_cnn, x, method="nope")
    with pytest.raises(ConfigError, match="has no parameter bogus"):
        explainkit.cam(tiny_cnn, x, method="gradcampp", bogus=1)
    with pytest.raises(ConfigError, match="variant"):
        explainkit.cam(tiny_cnn, x, method="scorecam", variant="other")
    with pytest.raises(ConfigError, match="not requested"):
        cams(tiny_cnn, x, methods=["gradcam"], params={"scorecam": {}})
    with pytest.raises(ConfigError, match="requested twice"):
        cams(tiny_cnn, x, methods=["gradcam", "grad-cam"])
    with pytest.raises(ConfigError, match=r"\(B, C, H, W\)"):
        explainkit.cam(tiny_cnn, x[0])
    with pytest.raises(ConfigError, match="no layer named"):
        explainkit.cam(tiny_cnn, x, layer="features.9")
    with pytest.raises(ConfigError, match="one per image"):
        explainkit.cam(tiny_cnn, x, layer="features.3", targets=[0, 1])
    with pytest.raises(ConfigError, match="does not depend on layer"):
        explainkit.cam(tiny_cnn, x, layer="features.3", targets=lambda out: torch.zeros(out.shape[0]))


def test_torchscript_gets_input_level_methods_only(tiny_cnn, x):
    scripted = torch.jit.script(tiny_cnn)
    with pytest.raises(CapabilityError, match="module hooks"):
        explainkit.cam(scripted, x, method="gradcam")
    ours = explainkit.cam(scripted, x, method="integrated_gradients")
    eager = explainkit.cam(tiny_cnn, x, method="integrated_gradients")
    torch.testing.assert_close(ours, eager, atol=1e-5, rtol=0)


def test_aliases():
    assert get_method("Grad-CAM++").name == "gradcampp" and get_method("smooth-grad-cam++").name == "smoothgradcampp"
