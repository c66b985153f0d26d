"""CAMs on Conv3d models over (B, C, D, H, W) volumes, checked against independent computations.

* a depth-1 volume through a Conv3d model with (1, k, k) kernels is the 2-D image through the same
  Conv2d model: every volume method must give the 2-D path's maps;
* a stride-1 3-D model (no resize) matches pytorch-grad-cam 1.5.7's own 3-D path;
* a linear head gives Grad-CAM in closed form, and the trilinear resize equals separable 1-D
  linear interpolation (``np.interp``, half-pixel centres) along each axis.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from explainkit.cam import compute
from explainkit.cam.api import VOLUME_KINDS
from explainkit.cam.methods import list_methods
from explainkit.cam.postprocess import minmax, resize
from explainkit.errors import ConfigError

VOLUME_METHODS = [m for k in VOLUME_KINDS for m in list_methods(k)]


def _net(dims: int, seed: int = 0, stride: int = 2) -> nn.Sequential:
    """Conv-ReLU-Conv-ReLU-GAP-Linear, 2-D, or 3-D with (1, k, k) kernels sharing the 2-D weights."""
    torch.manual_seed(seed)
    conv2 = [nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 6, 3, stride=stride, padding=1)]
    if dims == 2:
        convs: list[nn.Module] = conv2
        pool: nn.Module = nn.AdaptiveAvgPool2d(1)
    else:
        convs = []
        for c in conv2:
            c3 = nn.Conv3d(c.in_channels, c.out_channels, (1, 3, 3), stride=(1, *c.stride), padding=(0, 1, 1))
            with torch.no_grad():
                c3.weight.copy_(c.weight[:, :, None])
                c3.bias.copy_(c.bias)
            convs.append(c3)
        pool = nn.AdaptiveAvgPool3d(1)
    torch.manual_seed(seed + 1)
    return nn.Sequential(convs[0], nn.ReLU(), convs[1], nn.ReLU(), pool, nn.Flatten(), nn.Linear(6, 3)).eval()


def test_depth_one_volume_equals_the_image_path():
    x = torch.randn(3, 2, 12, 10, generator=torch.Generator().manual_seed(3))
    flat = compute(_net(2), x, methods=VOLUME_METHODS, layer="3", batch_size=7)
    vol = compute(_net(3), x[:, :, None], methods=VOLUME_METHODS, layer="3", batch_size=7)
    assert vol.layouts["3"].rank == 3 and vol.layouts["3"].kind == "nchw"
    assert torch.equal(vol.classes, flat.classes)
    for m in VOLUME_METHODS:
        assert vol.maps[m].shape == (3, 1, 12, 10)
        diff = (vol.maps[m][:, 0] - flat.maps[m]).abs().max().item()
        assert diff < 1e-5, f"{m}: depth-1 volume differs from the image path by {diff:.2e}"
        assert vol.grid(m) == (1, 6, 5)


def test_default_layer_and_layout_on_volumes():
    net = _net(3)
    x = torch.randn(2, 2, 4, 12, 10)
    res = compute(net, x, methods=["gradcam"])
    assert res.layers == ["3"]  # the last spatial map (ReLU after the second conv), not the pooling
    assert res.maps["gradcam"].shape == (2, 4, 12, 10)
    assert 0.0 <= float(res.maps["gradcam"].min()) and float(res.maps["gradcam"].max()) <= 1.0


def test_gradcam_closed_form_and_trilinear_resize():
    """Linear head on a GAP: dy/dA = W_c / n everywhere, so Grad-CAM = ReLU(sum_k W_ck A_k) / n up to scale."""
    net = _net(3, seed=5)
    x = torch.randn(2, 2, 5, 9, 7, generator=torch.Generator().manual_seed(4))
    res = compute(net, x, methods=["gradcam"], layer="3", targets=1)
    with torch.no_grad():
        acts = net[:4](x)  # (B, 6, 5, 5, 4)
        expected = torch.einsum("k,bkdhw->bdhw", net[6].weight[1], acts) / acts[0, 0].numel()
    raw = res.raw["gradcam"]["3"]
    assert torch.allclose(raw, expected, atol=1e-6)
    heat = minmax(torch.relu(expected)).double().numpy()
    # trilinear, align_corners=False = separable linear interpolation at half-pixel centres
    for axis, size in zip((1, 2, 3), (5, 9, 7)):
        src = heat.shape[axis]
        coords = np.clip((np.arange(size) + 0.5) * src / size - 0.5, 0, src - 1)
        heat = np.apply_along_axis(lambda v, c=coords, n=src: np.interp(c, np.arange(n), v), axis, heat)
    heat = minmax(torch.from_numpy(heat)).numpy()
    assert np.abs(res.maps["gradcam"].numpy() - heat).max() < 1e-5
    assert resize(torch.ones(1, 2, 2, 2), (4, 4, 4)).shape == (1, 4, 4, 4)


def test_matches_the_peers_3d_path_without_resize():
    pgc = pytest.importorskip("pytorch_grad_cam")
    net = _net(3, seed=2, stride=1)
    x = torch.randn(2, 2, 3, 6, 5, generator=torch.Generator().manual_seed(6))
    ours = compute(net, x, methods=["gradcam", "gradcampp", "xgradcam"], layer="3")
    for name, cls in (("gradcam", "GradCAM"), ("gradcampp", "GradCAMPlusPlus"), ("xgradcam", "XGradCAM")):
        with getattr(pgc, cls)(net, [net[3]]) as c:
            ref = c(x, None)  # (B, D, H, W); its scipy zoom is the identity at factor 1
        assert ref.shape == tuple(ours.maps[name].shape)
        assert np.abs(ours.maps[name].numpy() - ref).max() < 1e-5, name


def test_image_only_methods_are_refused_on_volumes():
    x = torch.randn(1, 2, 2, 8, 8)
    with pytest.raises(ConfigError, match="do not run on volumes"):
        compute(_net(3), x, methods=["gradcam", "saliency"])
    with pytest.raises(ConfigError, match="do not run on volumes"):
        compute(_net(3), x, methods=["gradcam"], params={"gradcam": {"aug_smooth": True}})
    with pytest.raises(ConfigError, match=r"\(B, C, D, H, W\)"):
        compute(_net(3), torch.randn(2, 8, 8), methods=["gradcam"])
