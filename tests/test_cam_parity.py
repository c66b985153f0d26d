"""Numerical parity with pytorch-grad-cam 1.5.7 (test-only dependency), ≤ 1e-5 max abs difference.

Same model, input, layer and target (the predicted class); explainkit's default post-processing.
EigenCAM/EigenGradCAM: pytorch-grad-cam's SVD sign is arbitrary (it depends on the LAPACK build),
explainkit fixes it; the peer must match explainkit's map or the map of the flipped projection.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pgc = pytest.importorskip("pytorch_grad_cam")

from explainkit.adapters import resolve_layer  # noqa: E402
from explainkit.cam import compute  # noqa: E402
from explainkit.cam.postprocess import combine_layers  # noqa: E402

TOL = 1e-5
GRADIENT = {
    "gradcam": "GradCAM", "gradcampp": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "layercam": "LayerCAM",
    "hirescam": "HiResCAM", "gradcam_elementwise": "GradCAMElementWise",
}
EIGEN = {"eigencam": "EigenCAM", "eigengradcam": "EigenGradCAM"}
PERTURBATION = {"scorecam": "ScoreCAM", "ablationcam": "AblationCAM"}
OUR_PARAMS = {"scorecam": {"variant": "channel_softmax"}}


def _peer(model, layers, name, x, reshape=None, batch_size=64):
    cls = getattr(pgc, name)
    modules = [resolve_layer(model, n)[1] for n in layers]
    with cls(model, modules, reshape_transform=reshape) as c:
        c.batch_size = batch_size
        return c(x, None)


def _check(model, x, layers, methods, reshape=None):
    model.eval()
    params = {k: v for k, v in OUR_PARAMS.items() if k in methods}
    res = compute(model, x, methods=list(methods), layer=layers, params=params, batch_size=64)
    for ours, theirs in methods.items():
        ref = _peer(model, layers, theirs, x, reshape)
        got = res.maps[ours].numpy()
        assert got.shape == ref.shape
        if ours in EIGEN:
            raw = list(res.raw[ours].values())
            flipped = combine_layers([-r for r in raw], tuple(x.shape[-2:])).numpy()
            per_image = np.minimum(np.abs(got - ref).max(axis=(1, 2)), np.abs(flipped - ref).max(axis=(1, 2)))
            diff = per_image.max()
        else:
            diff = np.abs(got - ref).max()
        assert diff <= TOL, f"{ours}: max abs diff {diff:.2e} vs pytorch-grad-cam {theirs}"


def _torchvision(name, **kw):
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None, **kw).eval()


@pytest.fixture(scope="module")
def resnet18():
    return _torchvision("resnet18")


def test_resnet18_gradient_and_eigen_methods(resnet18):
    torch.manual_seed(1)
    x = torch.randn(3, 3, 64, 64)
    _check(resnet18, x, ["layer4"], {**GRADIENT, **EIGEN})


def test_perturbation_methods_tiny_cnn(tiny_cnn):
    torch.manual_seed(7)
    x = torch.randn(2, 3, 64, 64)
    _check(tiny_cnn, x, ["features.3"], PERTURBATION)


@pytest.mark.slow
def test_resnet18_perturbation_methods(resnet18):
    torch.manual_seed(7)
    x = torch.randn(1, 3, 64, 64)
    _check(resnet18, x, ["layer4"], PERTURBATION)


def test_resnet18_two_layers_mean_of_normalised_maps(resnet18):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 64, 80)
    _check(resnet18, x, ["layer3", "layer4"], GRADIENT)


@pytest.mark.parametrize(("arch", "layer"), [
    ("squeezenet1_1", "features.12"),
    ("mobilenet_v3_small", "features.12"),
    ("densenet121", "features.denseblock4"),
])
def test_other_torchvision_architectures(arch, layer):
    model = _torchvision(arch)
    torch.manual_seed(3)
    x = torch.randn(2, 3, 64, 64)
    _check(model, x, [layer], {**GRADIENT, **EIGEN})


def test_vit_token_grid_timm():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=10).eval()
    torch.manual_seed(4)
    x = torch.randn(2, 3, 64, 64)

    def reshape(t):
        return t[:, 1:, :].reshape(t.size(0), 4, 4, t.size(2)).permute(0, 3, 1, 2)

    methods = {**GRADIENT, **EIGEN, "scorecam": "ScoreCAM"}
    _check(model, x, ["blocks.-1.norm1"], methods, reshape)
    # the default layer for timm ViTs is the last block's norm1, read as a 4x4 token grid
    res = compute(model, x, methods=["gradcam"])
    assert res.layers == ["blocks.11.norm1"]
    assert res.layouts["blocks.11.norm1"].grid == (4, 4)
    assert res.layouts["blocks.11.norm1"].prefix_tokens == 1


@pytest.mark.slow
def test_vit_token_grid_torchvision():
    model = _torchvision("vit_b_16", image_size=64, num_classes=10)
    torch.manual_seed(5)
    x = torch.randn(1, 3, 64, 64)

    def reshape(t):
        return t[:, 1:, :].reshape(t.size(0), 4, 4, t.size(2)).permute(0, 3, 1, 2)

    _check(model, x, ["encoder.layers.encoder_layer_11.ln_1"], {**GRADIENT, **EIGEN}, reshape)


@pytest.mark.slow
def test_swin_channels_last():
    model = _torchvision("swin_t", num_classes=10)
    torch.manual_seed(6)
    x = torch.randn(1, 3, 64, 64)
    _check(model, x, ["features.7.1.norm1"], GRADIENT, lambda t: t.permute(0, 3, 1, 2))
