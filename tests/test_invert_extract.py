"""Streaming extraction (pooled channels, units, logits, ViT tokens) and the class connection."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import explainkit
from explainkit.adapters.activations import LOGITS, Pooler, extract_activations
from explainkit.errors import ConfigError
from explainkit.hooks import capture_layers, hook_count
from explainkit.invert.connection import batch_contributions, class_connection

PREP = dict(input_size=(64, 64), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    from explainkit.datasets.synthetic import WorldSpec, write_world

    root = tmp_path_factory.mktemp("extract") / "probe"
    write_world(WorldSpec(n_images=12, artifact="stamp", seed=2), root)
    return explainkit.ProbeSet.from_folder(root)


def _inputs(handle, probe):
    return handle.preprocess([probe.load_image(i) for i in range(len(probe))])


def test_capture_layers_accepts_per_layer_transforms(tiny_cnn):
    x = torch.randn(2, 3, 64, 64)
    layers = {"features.1": tiny_cnn.features[1], "features.2": tiny_cnn.features[2]}
    with torch.no_grad(), capture_layers(tiny_cnn, layers, detach=True,
                                         transform={"features.1": lambda t: t.mean((2, 3))}) as cap:
        tiny_cnn(x)
    assert cap["features.1"].shape == (2, 32) and cap["features.2"].shape == (2, 64, 16, 16)
    assert hook_count(tiny_cnn) == 0


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_pooled_channels_units_and_logits(tiny_cnn, probe, pooling):
    handle = explainkit.wrap(tiny_cnn, **PREP)
    acts, reps = extract_activations(handle, probe, ["features.2", "classifier", LOGITS], pooling=pooling,
                                     batch_size=5)
    x = _inputs(handle, probe)
    with torch.no_grad():
        maps = tiny_cnn.features[:3](x)
        logits = tiny_cnn(x)
    want = maps.mean((2, 3)) if pooling == "mean" else maps.amax((2, 3))
    np.testing.assert_allclose(acts["features.2"], want.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(acts["classifier"], logits.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(acts[LOGITS], logits.numpy(), rtol=1e-5, atol=1e-6)
    assert reps["features.2"]["kind"] == "spatial" and reps["features.2"]["pooling"] == pooling
    assert reps["features.2"]["output_shape"] == [64, 16, 16]
    assert reps["classifier"]["kind"] == "units" and reps[LOGITS]["kind"] == "logits"


@pytest.mark.parametrize("tokens", ["cls", "mean"])
def test_vit_tokens(probe, tokens):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, patch_size=16, embed_dim=32,
                            depth=1, num_heads=2, num_classes=3).eval()
    handle = explainkit.wrap(vit, **PREP)
    acts, reps = extract_activations(handle, probe, ["norm"], tokens=tokens)
    with torch.no_grad():
        seq = vit.forward_features(_inputs(handle, probe))
    want = seq[:, 0] if tokens == "cls" else seq[:, 1:].mean(1)
    np.testing.assert_allclose(acts["norm"], want.numpy(), rtol=1e-5, atol=1e-6)
    assert reps["norm"]["kind"] == "tokens" and reps["norm"]["layout"]["prefix_tokens"] == 1
    assert reps["norm"]["aggregation"] == ("CLS token" if tokens == "cls" else "mean of patch tokens")


def test_bad_representations_raise():
    with pytest.raises(ConfigError, match="pooling"):
        Pooler("x", None, pooling="median")
    p = Pooler("odd", None)
    with pytest.raises(ConfigError, match="shape"):
        p(torch.zeros(2, 3, 4, 5, 6))
    no_cls = torch.nn.Module()
    no_cls.num_prefix_tokens = 0
    no_cls.patch_embed = SimpleNamespace(grid_size=(4, 4))
    seq = Pooler("seq", None, tokens="cls", model=no_cls)
    with pytest.raises(ConfigError, match="CLS"):
        seq(torch.zeros(2, 16, 8))  # a 4x4 grid, no prefix token
    assert Pooler("seq", None, tokens="mean", model=no_cls)(torch.ones(2, 16, 8)).shape == (2, 8)


def test_contribution_is_weight_times_pooled_unit(tiny_cnn, probe):
    # TinyCNN: mean-pooled features feed a linear classifier, so grad x activation summed over the map
    # equals w[pred, j] * pooled_j exactly.
    handle = explainkit.wrap(tiny_cnn, **PREP)
    x = _inputs(handle, probe)
    pooler = Pooler("features", tiny_cnn.features)
    contrib, pred = batch_contributions(handle, x, pooler)
    with torch.no_grad():
        pooled = tiny_cnn.features(x).mean((2, 3))
        logits = tiny_cnn(x)
    assert np.array_equal(pred, logits.argmax(1).numpy())
    want = tiny_cnn.classifier.weight.detach()[torch.as_tensor(pred)] * pooled
    np.testing.assert_allclose(contrib, want.numpy(), rtol=1e-4, atol=1e-6)
    # the contributions plus the bias add up to the logit
    total = contrib.sum(1) + tiny_cnn.classifier.bias.detach()[torch.as_tensor(pred)].numpy()
    np.testing.assert_allclose(total, logits.max(1).values.numpy(), rtol=1e-4, atol=1e-5)
    assert hook_count(tiny_cnn) == 0


def test_class_connection_summary():
    contrib = np.array([1.0, 3.0, -1.0, 0.5, 0.5])
    pred = np.array([0, 0, 1, 2, 2])
    out = class_connection(contrib, pred, ["a", "b"])
    assert out["top_class"] == "a" and out["strength"] == 2.0 and out["unit"] == "logit"
    assert [(c["class"], c["mean_contribution"]["value"], c["mean_contribution"]["n"]) for c in out["classes"]] == [
        ("a", 2.0, 2), ("2", 0.5, 2), ("b", -1.0, 1)]
