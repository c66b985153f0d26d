"""Layer resolution, default layers, token grids and targets."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from explainkit.adapters import (
    ClassLogit,
    OutputFunction,
    PredictedClass,
    SoftmaxProbability,
    as_target,
    default_layer,
    infer_layout,
    resolve_layer,
    select_logits,
    token_hints,
)
from explainkit.errors import ConfigError


def test_resolve_layer_dotted_and_indexed(tiny_cnn):
    assert resolve_layer(tiny_cnn, "features.3")[0] == "features.3"
    assert resolve_layer(tiny_cnn, "features[-1]")[0] == "features.3"
    assert resolve_layer(tiny_cnn, "features.-1.0")[0] == "features.3.0"
    assert resolve_layer(tiny_cnn, "model.classifier")[0] == "classifier"


def test_resolve_layer_suggests_close_matches(tiny_cnn):
    with pytest.raises(ConfigError, match=r"no layer named 'featurs.3'.*closest: features\.3"):
        resolve_layer(tiny_cnn, "featurs.3")
    with pytest.raises(ConfigError, match="no layer named"):
        resolve_layer(tiny_cnn, "features.9")


@pytest.mark.parametrize(
    ("builder", "expected", "size"),
    [
        (lambda: torchvision.models.resnet18(num_classes=4), "layer4", 64),
        (lambda: torchvision.models.vgg11(num_classes=4), "features", 64),
        (lambda: torchvision.models.mobilenet_v3_small(num_classes=4), "features", 64),
        (lambda: torchvision.models.vit_b_16(num_classes=4, image_size=32), "encoder.layers.encoder_layer_11.ln_1", 32),
        (lambda: torchvision.models.swin_t(num_classes=4), "features.7.1.norm1", 64),
    ],
)
def test_default_layer_per_architecture(builder, expected, size):
    torch.manual_seed(0)
    assert default_layer(builder().eval(), (size, size)) == expected


def test_default_layer_timm_vit_and_tiny(tiny_cnn):
    timm = pytest.importorskip("timm")
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=3)
    assert default_layer(vit, (32, 32)) == "blocks.11.norm1"
    assert default_layer(tiny_cnn, (64, 64)) == "features"


def test_token_grid_inference():
    t = torch.arange(2 * 197 * 4, dtype=torch.float32).reshape(2, 197, 4)
    layout = infer_layout(t, input_size=(224, 224))
    assert (layout.kind, layout.prefix_tokens, layout.grid) == ("tokens", 1, (14, 14))
    grid = layout.apply(t)
    assert grid.shape == (2, 4, 14, 14)
    # token 1 + r*14 + c lands at (r, c), channels first
    assert torch.equal(grid[1, :, 2, 3], t[1, 1 + 2 * 14 + 3])
    rect = infer_layout(torch.zeros(1, 1 + 7 * 14, 8), input_size=(112, 224))
    assert rect.grid == (7, 14)
    with pytest.raises(ConfigError, match="ambiguous token grid"):
        infer_layout(torch.zeros(1, 50, 8))  # 1+7x7 or 14+6x6
    assert infer_layout(torch.zeros(1, 50, 8), prefix_tokens=1).grid == (7, 7)
    with pytest.raises(ConfigError, match="cannot arrange"):
        infer_layout(torch.zeros(1, 3, 8), prefix_tokens=0)


def test_channels_last_and_hints():
    x = torch.randn(2, 7, 7, 96)
    with pytest.raises(ConfigError, match="layout='nchw' or layout='nhwc'"):
        infer_layout(x)  # no evidence at all: never guessed
    assert infer_layout(x, input_size=(224, 224)).kind == "nhwc"
    assert infer_layout(x, nn.LayerNorm(96)).apply(x).shape == (2, 96, 7, 7)
    assert infer_layout(torch.randn(2, 96, 7, 7), input_size=(224, 224)).kind == "nchw"
    vit = torchvision.models.vit_b_16(num_classes=4, image_size=32)
    assert token_hints(vit) == {"grid": (2, 2), "prefix_tokens": 1}
    with pytest.raises(ConfigError, match=r"cannot read the layer.s output"):
        infer_layout(torch.zeros(2, 3))


def test_targets_validate_one_score_per_image():
    logits = torch.tensor([[1.0, 5.0, 2.0], [3.0, 0.0, 4.0]])
    assert torch.equal(PredictedClass()(logits), torch.tensor([5.0, 4.0]))
    assert torch.equal(ClassLogit(0)(logits), torch.tensor([1.0, 3.0]))
    assert torch.equal(ClassLogit([2, 1])(logits), torch.tensor([2.0, 0.0]))
    p = SoftmaxProbability(1)(logits)
    assert torch.allclose(p, torch.softmax(logits, 1)[:, 1])
    with pytest.raises(ConfigError, match="3 target classes for 2 images"):
        ClassLogit([0, 1, 2])(logits)
    with pytest.raises(ConfigError, match="out of range"):
        ClassLogit(7)(logits)
    with pytest.raises(ConfigError, match="exactly one score per image"):
        OutputFunction(lambda out: out.sum())(logits)
    assert isinstance(as_target(None), PredictedClass)
    assert isinstance(as_target(lambda o: o[:, 0]), OutputFunction)
    with pytest.raises(ConfigError):
        as_target("cat")


def test_select_logits_from_structures():
    t = torch.randn(2, 3)
    assert select_logits((t, torch.randn(2, 9))) is t
    assert select_logits({"aux": torch.randn(2, 9), "logits": t}) is t
    assert select_logits({"y": t}) is t
    assert select_logits({"a": t, "b": t}, key="b") is t
    with pytest.raises(ConfigError, match="cannot tell which output"):
        select_logits({"a": t, "b": t})
    assert PredictedClass(output_key="logits")({"logits": t}).shape == (2,)
