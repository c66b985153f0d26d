"""Layouts are decided from evidence that cannot collide (issue 13, items 1 and 8).

Unit tests of the evidence (module type, input size and stride, one probe), then real
architectures at non-square inputs: the layout each layer gets, and the maps against
pytorch-grad-cam given the correct reshape. The two collisions of the issue are reproduced:
ResNet-18 ``layer1`` at 256 x 160 (64 channels and 64 rows) and torchvision ``swin_t``
``features.7`` at 128 x 192 (channels last). Full-size architectures are slow-marked, except a few
at small inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from explainkit.adapters import SpatialLayout, default_layer, infer_layout, resolve_layer, token_hints
from explainkit.adapters.layout import layout_candidates, module_evidence
from explainkit.cam import compute
from explainkit.errors import ConfigError

pgc = pytest.importorskip("pytorch_grad_cam")

TOL = 1e-5


def test_module_type_decides():
    shape = (2, 64, 64, 64)
    assert module_evidence(nn.Conv2d(3, 64, 3), shape) == "nchw"
    assert module_evidence(nn.BatchNorm2d(64), shape) == "nchw"
    assert module_evidence(nn.MaxPool2d(2), shape) == "nchw"
    assert module_evidence(nn.LayerNorm(64), shape) == "nhwc"
    assert module_evidence(nn.Linear(8, 64), shape) == "nhwc"
    # a Sequential reads as its last non-element-wise child
    assert module_evidence(nn.Sequential(nn.Conv2d(3, 64, 3), nn.BatchNorm2d(64), nn.ReLU()), shape) == "nchw"
    assert module_evidence(nn.Sequential(nn.Linear(8, 64), nn.GELU(), nn.Dropout()), shape) == "nhwc"

    class LayerNorm2d(nn.LayerNorm):  # timm / torchvision: a LayerNorm over channels of NCHW maps
        def forward(self, x):
            return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    assert module_evidence(LayerNorm2d(64), shape) is None
    assert module_evidence(nn.LayerNorm(32), shape) is None  # not over the last axis
    assert module_evidence(nn.Sequential(nn.ReLU()), shape) is None


def test_input_size_and_stride_decide_the_issues_collisions():
    # ResNet-18 layer1 at 256 x 160: (B, 64, 64, 40) is 64 channels of 64 x 40 (stride 4), not 64 x 64
    assert layout_candidates((1, 64, 64, 40), (256, 160)) == {"nchw"}
    # swin_t features.7 at 128 x 192: (B, 4, 6, 768) is a 4 x 6 grid of 768 channels (stride 32)
    assert layout_candidates((1, 4, 6, 768), (128, 192)) == {"nhwc"}
    # a square input with as many channels as rows: both fit, a probe is needed
    assert layout_candidates((1, 64, 64, 64), (256, 256)) == {"nchw", "nhwc"}
    # volumes: (B, C, D, H, W) against (D, H, W)
    assert layout_candidates((1, 16, 8, 16, 12), (32, 64, 48)) == {"nchw"}
    assert layout_candidates((1, 8, 16, 12, 16), (32, 64, 48)) == {"nhwc"}


def test_probe_decides_and_nothing_is_guessed():
    t = torch.zeros(1, 64, 64, 64)
    calls = []

    def probe(shape):
        return lambda: calls.append(1) or shape

    # doubling the input height doubles the first spatial axis: axis 2 channels-first, axis 1 channels-last
    first = infer_layout(t, input_size=(256, 256), probe=probe((1, 64, 128, 64)))
    assert (first.kind, first.evidence) == ("nchw", "probe at a second input size")
    assert infer_layout(t, input_size=(256, 256), probe=probe((1, 128, 64, 64))).kind == "nhwc"
    # the probe is not run when cheaper evidence decides
    calls.clear()
    assert infer_layout(torch.zeros(1, 64, 64, 40), input_size=(256, 160), probe=probe(None)).kind == "nchw"
    assert not calls
    for probed in (None, (1, 64, 64, 64), (1, 70, 70, 70)):  # refused / nothing changed / everything changed
        with pytest.raises(ConfigError, match=r"pass layout='nchw' or layout='nhwc'"):
            infer_layout(t, input_size=(256, 256), probe=probe(probed), name="'layer1'")
    # a forced layout is taken as given, also for volumes
    assert infer_layout(torch.zeros(1, 4, 5, 6, 7), layout="nhwc") == SpatialLayout("nhwc", rank=3)


def test_volume_layout_reads_channels_first_and_last():
    vol = torch.randn(2, 8, 4, 6, 5)
    first = infer_layout(vol, nn.Conv3d(1, 8, 3))
    assert first.rank == 3 and torch.equal(first.apply(vol), vol)
    last = infer_layout(vol.movedim(1, -1), input_size=(16, 24, 20))
    assert (last.kind, last.rank) == ("nhwc", 3) and torch.equal(last.apply(vol.movedim(1, -1)), vol)


def _torchvision(name, **kw):
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None, **kw).eval()


def _peer_gradcam(model, layer, x, reshape=None):
    with pgc.GradCAM(model, [resolve_layer(model, layer)[1]], reshape_transform=reshape) as c:
        return c(x, None)


def _check(model, x, layer, kind, reshape=None, evidence=None):
    res = compute(model, x, methods=["gradcam"], layer=layer)
    layout = res.layouts[res.layers[0]]
    assert layout.kind == kind, f"{layer}: {layout}"
    if evidence is not None:
        assert layout.evidence == evidence
    diff = np.abs(res.maps["gradcam"].numpy() - _peer_gradcam(model, layer, x, reshape)).max()
    assert diff <= TOL, f"{layer}: max abs diff {diff:.2e}"


def _nhwc(t):
    return t.permute(0, 3, 1, 2)


def test_resnet18_layer1_non_square_with_as_many_channels_as_rows():
    model = _torchvision("resnet18")
    torch.manual_seed(1)
    _check(model, torch.randn(1, 3, 256, 160), "layer1", "nchw", evidence="input size and stride")
    # square, 64 channels = 64 rows = 64 columns: only the probe can tell
    _check(model, torch.randn(1, 3, 256, 256), "layer1", "nchw", evidence="probe at a second input size")


def test_swin_t_channels_last_non_square():
    model = _torchvision("swin_t")
    torch.manual_seed(2)
    x = torch.randn(1, 3, 128, 192)
    _check(model, x, "features.7", "nhwc", _nhwc, evidence="input size and stride")
    _check(model, x, "features.7.1.norm1", "nhwc", _nhwc, evidence="module LayerNorm")


def test_default_layer_of_a_channels_last_model_with_collision():
    class Last(nn.Module):  # a channels-last map with as many channels as rows
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(3, 16)
            self.mix = nn.Linear(16, 16)
            self.head = nn.Linear(16, 2)

        def forward(self, x):
            h = self.mix(torch.relu(self.embed(x.permute(0, 2, 3, 1))))  # (B, 16, 16, 16) at 16 x 16
            return self.head(h.mean((1, 2)))

    model = Last().eval()
    assert default_layer(model, (16, 16)) == "mix"
    res = compute(model, torch.randn(2, 3, 16, 16), methods=["gradcam"], layer="mix")
    assert res.layouts["mix"].evidence == "module Linear" and res.layouts["mix"].kind == "nhwc"


class _Square(nn.Module):
    """The input is resized to a fixed 8 x 8 map of 8 channels: neither size nor probe can tell the layout."""

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 1)
        self.block = nn.Identity()
        self.head = nn.Linear(8, classes)

    def forward(self, x):
        h = self.block(self.conv(nn.functional.interpolate(x, size=(8, 8))))
        return self.head(h.mean((2, 3)))


def test_undecidable_layout_names_layout_and_a_given_one_is_used():
    model = _Square().eval()
    x = torch.randn(1, 3, 20, 30)
    with pytest.raises(ConfigError, match=r"'block'.*layout='nchw'"):
        compute(model, x, methods=["gradcam"], layer="block")
    assert compute(model, x, methods=["gradcam"], layer="block", layout="nchw").layouts["block"].evidence == "given"


def test_the_analyzer_takes_layout(small_world):
    import explainkit

    probe = explainkit.ProbeSet.from_folder(small_world).subset(np.arange(8))
    model = explainkit.wrap(_Square(len(probe.class_names)).eval(), input_size=64, mean="0.5,0.5,0.5",
                            std="0.5,0.5,0.5", class_names=list(probe.class_names))
    cheap = {"layer": "block", "methods": ["gradcam"], "metric_images": 2, "road_images": 1, "steps": 2,
             "n_random": 0, "sanity": False, "n_examples": 1, "n_resamples": 100}
    with pytest.raises(ConfigError, match="layout=nchw"):
        explainkit.analyze(model, probe, [("gradcam", cheap)], progress=False)
    rep = explainkit.analyze(model, probe, [("gradcam", {**cheap, "layout": "nchw"})], progress=False)
    assert [m["name"] for m in rep.section("gradcam")["data"]["methods"]] == ["gradcam"]
    with pytest.raises(ConfigError, match="cannot go with layout=nhwc"):
        explainkit.analyze(model, probe, [("gradcam", {**cheap, "layout": "nhwc", "grid": [2, 2]})], progress=False)


def test_timm_vit_dynamic_img_size_grid_from_input_size():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, dynamic_img_size=True, num_classes=5,
                              depth=2).eval()
    assert "grid" not in token_hints(model)  # grid_size (14, 14) of the default size is not the grid
    for size, grid in (((64, 96), (4, 6)), ((96, 48), (6, 3)), ((80, 80), (5, 5))):
        assert token_hints(model, size)["grid"] == grid
        torch.manual_seed(3)
        x = torch.randn(1, 3, *size)
        res = compute(model, x, methods=["gradcam"])
        layout = res.layouts[res.layers[0]]
        assert (layout.grid, layout.prefix_tokens) == (grid, 1)

        def reshape(t, g=grid):
            return t[:, 1:, :].reshape(t.size(0), *g, t.size(2)).permute(0, 3, 1, 2)

        ref = _peer_gradcam(model, res.layers[0], x, reshape)
        assert np.abs(res.maps["gradcam"].numpy() - ref).max() <= TOL


#: Every architecture of the parity suite, a layer, a non-square input size and the true layout.
ARCHITECTURES = [
    ("resnet18", {}, "layer4", (256, 160), "nchw"),
    ("vgg11", {}, "features.19", (96, 128), "nchw"),
    ("densenet121", {}, "features.denseblock3", (128, 96), "nchw"),
    ("mobilenet_v2", {}, "features.18", (96, 64), "nchw"),
    ("mobilenet_v3_small", {}, "features.12", (64, 96), "nchw"),
    ("efficientnet_b0", {}, "features.8", (96, 64), "nchw"),
    ("convnext_tiny", {}, "features.7", (64, 96), "nchw"),
    ("regnet_y_400mf", {}, "trunk_output", (96, 64), "nchw"),
    ("squeezenet1_1", {}, "features.12", (64, 96), "nchw"),
    ("swin_t", {}, "features.7", (128, 192), "nhwc"),
    ("swin_t", {}, "features.5", (192, 128), "nhwc"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "kw", "layer", "size", "kind"), ARCHITECTURES,
                         ids=[f"{a[0]}-{a[2]}" for a in ARCHITECTURES])
def test_torchvision_architectures_non_square(arch, kw, layer, size, kind):
    model = _torchvision(arch, **kw)
    torch.manual_seed(4)
    _check(model, torch.randn(2, 3, *size), layer, kind, _nhwc if kind == "nhwc" else None)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "layer", "kind"), [
    ("vit_tiny_patch16_224", "blocks.11.norm1", "tokens"),
    ("swin_tiny_patch4_window7_224", "layers.3", "nhwc"),
    ("swin_tiny_patch4_window7_224", "layers.3.blocks.1.norm1", "nhwc"),
    ("convnext_atto", "stages.3", "nchw"),
])
def test_timm_architectures_non_square(name, layer, kind):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    size = (128, 192)
    model = timm.create_model(name, pretrained=False, img_size=size).eval() if "convnext" not in name else \
        timm.create_model(name, pretrained=False).eval()
    torch.manual_seed(5)
    x = torch.randn(1, 3, *size)
    reshape = {"nhwc": _nhwc, "nchw": None,
               "tokens": lambda t: t[:, 1:, :].reshape(t.size(0), 8, 12, t.size(2)).permute(0, 3, 1, 2)}[kind]
    _check(model, x, layer, kind, reshape)
