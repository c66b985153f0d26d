"""Closed-form and independently computed expectations for every CAM method.

A global-average-pooling head makes the gradient at the feature layer known in closed form:
``y_c = sum_k W_ck mean_ij A_kij + b_c``, so ``g_kij = W_ck / Z``. Methods pytorch-grad-cam does not
have (Smooth Grad-CAM++, the paper's Score-CAM, Ablation-CAM with other values or signed layers,
the Eigen sign rule, the captum bridge) are checked against second implementations written here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import explainkit
from explainkit.cam import compute, get_method, list_methods
from explainkit.cam.methods import first_component
from explainkit.cam.postprocess import combine_layers, minmax
from explainkit.hooks import hook_count

K, H, W = 6, 12, 10


class GapNet(nn.Module):
    """features (conv + ReLU, or signed conv) → GAP → linear."""

    def __init__(self, signed: bool = False, classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, K, 3, padding=1), nn.Identity() if signed else nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(K, classes)

    def head(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(a).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.fixture()
def gap():
    return GapNet().eval()


@pytest.fixture()
def x():
    torch.manual_seed(1)
    return torch.randn(3, 3, H, W)


def _acts(model, x):
    with torch.no_grad():
        return model.features(x)


def _raw(model, x, method, **params):
    return compute(model, x, methods=[method], layer="features", params={method: params}).raw[method]["features"]


def test_gradient_methods_closed_form(gap, x):
    a = _acts(gap, x)
    c = gap(x).argmax(1)
    wc = gap.fc.weight.detach()[c]  # (B, K)
    z = H * W
    cam = torch.einsum("bk,bkhw->bhw", wc / z, a)
    torch.testing.assert_close(_raw(gap, x, "gradcam"), cam, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(_raw(gap, x, "hirescam"), cam, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(_raw(gap, x, "xgradcam"), cam, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(_raw(gap, x, "layercam"), torch.einsum("bk,bkhw->bhw", wc.clamp_min(0) / z, a),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(_raw(gap, x, "gradcam_elementwise"), (wc[:, :, None, None] / z * a).clamp_min(0).sum(1),
                               rtol=1e-5, atol=1e-6)
    g = wc / z
    s = a.sum((2, 3))
    alpha = g**2 / (2 * g**2 + s * g**3 + 1e-6)
    w_pp = z * alpha * g.clamp_min(0)
    torch.testing.assert_close(_raw(gap, x, "gradcampp"), torch.einsum("bk,bkhw->bhw", w_pp, a), rtol=1e-4, atol=1e-7)
    w_tc = z * g**2 * g.clamp_min(0)
    torch.testing.assert_close(_raw(gap, x, "gradcampp", variant="torchcam"), torch.einsum("bk,bkhw->bhw", w_tc, a),
                               rtol=1e-4, atol=1e-9)


def test_gradcam_is_invariant_to_target_scale_gradcampp_is_not(gap, x):
    c = gap(x).argmax(1)
    plain = compute(gap, x, methods=["gradcam", "gradcampp"], layer="features", targets=c.tolist()).maps
    scaled = compute(gap, x, methods=["gradcam", "gradcampp"], layer="features",
                     targets=lambda out: 100 * out.gather(1, c[:, None])[:, 0]).maps
    torch.testing.assert_close(plain["gradcam"], scaled["gradcam"], atol=1e-5, rtol=0)
    # eps = 1e-6 in alpha's denominator is not negligible for small gradients (documented)
    assert not torch.allclose(plain["gradcampp"], scaled["gradcampp"], atol=1e-3)


def test_eigen_methods_match_numpy_pca_with_deterministic_sign(gap, x):
    a = _acts(gap, x)
    out = first_component(a)
    for i in range(a.shape[0]):
        m = a[i].flatten(1).T.double().numpy()
        m = m - m.mean(0)
        _, _, vt = np.linalg.svd(m, full_matrices=False)
        v = vt[0] if vt[0].sum() > 0 else -vt[0]
        np.testing.assert_allclose(out[i].flatten().numpy(), m @ v, rtol=1e-5, atol=1e-6)
        # the map correlates positively with the channel sum of the features
        assert np.corrcoef(out[i].flatten().numpy(), a[i].sum(0).flatten().numpy())[0, 1] > 0
    # the rule is a property of the data, not of the SVD: permuting channels changes nothing, and
    # negating the features negates the map (it follows the new channel sum)
    torch.testing.assert_close(_raw(gap, x, "eigencam"), out)
    torch.testing.assert_close(first_component(a[:, torch.randperm(K)]), out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(first_component(-a), -out, atol=1e-5, rtol=1e-5)
    maxabs = first_component(a, "max_abs")
    assert all(maxabs[i].max().abs() >= maxabs[i].min().abs() for i in range(a.shape[0]))


def test_smooth_gradcampp_against_a_loop_over_noisy_copies(gap, x):
    n, sigma = 5, 0.3
    got = _raw(gap, x, "smoothgradcampp", n_samples=n, sigma=sigma)
    c = gap(x).argmax(1)
    a0 = _acts(gap, x)
    # independent: the same noise draws (one shared (C, H, W) field per sample), full autograd
    from explainkit.cam.smooth import _noise

    d = [torch.zeros_like(a0) for _ in range(3)]
    for m in range(n):
        xm = x + sigma * _noise(0, m, tuple(x.shape[1:]))
        am = gap.features(xm)
        y = gap.head(am).gather(1, c[:, None]).sum()
        (g,) = torch.autograd.grad(y, am)
        for p, acc in enumerate(d):
            acc += g ** (p + 1) / n
    d1, d2, d3 = d
    alpha = torch.where(d2 != 0, d2 / (2 * d2 + a0.sum((2, 3), keepdim=True) * d3 + 1e-6), torch.zeros_like(d2))
    w = (alpha * d1.clamp_min(0)).sum((2, 3))
    torch.testing.assert_close(got, torch.einsum("bk,bkhw->bhw", w, a0), rtol=1e-4, atol=1e-7)
    # with zero noise it reduces to Grad-CAM++
    torch.testing.assert_close(_raw(gap, x, "smoothgradcampp", n_samples=2, sigma=0.0), _raw(gap, x, "gradcampp"),
                               rtol=1e-5, atol=1e-8)
    # the switches change the result
    assert not torch.allclose(_raw(gap, x, "smoothgradcampp", n_samples=n, sigma=sigma, numerator="grad1"), got)
    assert not torch.allclose(_raw(gap, x, "smoothgradcampp", n_samples=n, sigma=sigma, activations="noisy"), got)


def test_scorecam_paper_variant_against_a_loop(gap, x):
    a = _acts(gap, x)
    c = gap(x).argmax(1)
    expected = torch.zeros(a.shape[0], H, W)
    for b in range(a.shape[0]):
        for k in range(K):
            up = torch.nn.functional.interpolate(a[b, k][None, None], size=(H, W), mode="bilinear",
                                                 align_corners=False)[0, 0]
            if up.max() == up.min():
                continue
            mask = (up - up.min()) / (up.max() - up.min())
            with torch.no_grad():
                p = torch.softmax(gap(x[b:b + 1] * mask), 1)[0, c[b]]
            expected[b] += p * a[b, k]
    torch.testing.assert_close(_raw(gap, x, "scorecam"), expected, rtol=1e-5, atol=1e-6)
    # the CIC baseline subtracts f(zeros) from every weight: a constant times the channel sum
    with torch.no_grad():
        p0 = torch.softmax(gap(torch.zeros_like(x)), 1).gather(1, c[:, None])[:, 0]
    torch.testing.assert_close(_raw(gap, x, "scorecam", baseline="zeros"), expected - p0[:, None, None] * a.sum(1),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("value", [0.0, -3.0])
def test_ablationcam_on_a_signed_layer_against_a_loop(value, x):
    model = GapNet(signed=True).eval()
    a = _acts(model, x)
    c = model(x).argmax(1)
    with torch.no_grad():
        y = model.head(a).gather(1, c[:, None])[:, 0]
        weights = torch.zeros(a.shape[0], K)
        for k in range(K):
            ab = a.clone()
            ab[:, k] = value
            weights[:, k] = (y - model.head(ab).gather(1, c[:, None])[:, 0]) / y
    expected = torch.einsum("bk,bkhw->bhw", weights, a)
    torch.testing.assert_close(_raw(model, x, "ablationcam", ablation_value=value), expected, rtol=1e-4, atol=1e-6)


def test_multilayer_maps_are_the_mean_of_normalised_layer_maps(gap, x):
    res = compute(gap, x, methods=["gradcam"], layer=["features.0", "features"])
    per = [torch.nn.functional.interpolate(minmax(torch.relu(r))[:, None], size=(H, W), mode="bilinear",
                                           align_corners=False)[:, 0] for r in res.raw["gradcam"].values()]
    torch.testing.assert_close(res.maps["gradcam"], minmax(torch.stack(per).mean(0)))
    assert set(explainkit.cam(gap, x, layer=["features.0", "features"], raw=True)) == {"features.0", "features"}


def test_captum_saliency_and_occlusion_against_direct_computation(gap, x):
    c = gap(x).argmax(1)
    xi = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(gap(xi).gather(1, c[:, None]).sum(), xi)
    torch.testing.assert_close(_raw_input(gap, x, "saliency"), grad.abs().sum(1))
    # occlusion, 4x4 windows tiling a 12x8 crop, zero baseline: the score drop over each window
    x = x[:, :, :12, :8]
    c = gap(x).argmax(1)
    got = _raw_input(gap, x, "occlusion", window=4, stride=4, reduce="sum")
    expected = torch.zeros(x.shape[0], 12, 8)
    with torch.no_grad():
        y = gap(x).gather(1, c[:, None])[:, 0]
        for i in range(0, 12, 4):
            for j in range(0, 8, 4):
                xo = x.clone()
                xo[:, :, i:i + 4, j:j + 4] = 0
                drop = y - gap(xo).gather(1, c[:, None])[:, 0]
                expected[:, i:i + 4, j:j + 4] += drop[:, None, None] * 3  # summed over 3 channels
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_integrated_gradients_against_gauss_legendre_sum(gap, x):
    c = gap(x).argmax(1)
    n = 8
    nodes, weights = np.polynomial.legendre.leggauss(n)
    alphas, wts = (nodes + 1) / 2, weights / 2
    total = torch.zeros_like(x)
    for a_, w_ in zip(alphas, wts):
        xi = (float(a_) * x).requires_grad_(True)
        (g,) = torch.autograd.grad(gap(xi).gather(1, c[:, None]).sum(), xi)
        total += float(w_) * g
    expected = (x * total).sum(1)
    torch.testing.assert_close(_raw_input(gap, x, "integrated_gradients", n_steps=n, reduce="sum"), expected,
                               rtol=1e-4, atol=1e-6)


def _raw_input(model, x, method, **params):
    return compute(model, x, methods=[method], params={method: params}).raw[method]["input"]


@pytest.mark.parametrize("method", list_methods())
def test_every_method_gives_unit_maps_at_input_resolution(method, gap, x):
    """Conformance over the registry: (B, H, W) maps in [0, 1], no hook left, declared parameters."""
    maps = explainkit.cam(gap, x, method=method, layer="features")
    assert maps.shape == (3, H, W) and maps.dtype == torch.float32
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1 and torch.isfinite(maps).all()
    assert hook_count(gap) == 0
    m = get_method(method)
    assert m.title and all(o.help for o in m.options.values())


def test_postprocessing_matches_opencv_resize():
    cv2 = pytest.importorskip("cv2")
    raw = torch.randn(2, 7, 5)
    ours = combine_layers([raw], (40, 29))
    ref = []
    for r in raw.numpy():
        m = np.maximum(r, 0)
        m = m - m.min()
        m = m / (1e-7 + m.max())
        m = cv2.resize(m.astype(np.float32), (29, 40))
        m = m - m.min()
        ref.append(m / (1e-7 + m.max()))
    np.testing.assert_allclose(ours.numpy(), np.stack(ref), atol=1e-6)
