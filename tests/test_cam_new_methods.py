"""The methods pytorch-grad-cam has beyond the classic ones (issue 13, item 4).

Each is compared with pytorch-grad-cam 1.5.7 (max abs difference <= 1e-5 on the [0, 1] maps) where
the two agree on what to compute, and with a formula written out here where explainkit differs on
purpose (documented in the method's docstring): FullGrad's per-layer variant (the authors' code),
KPCA-CAM's default sign rule, ShapleyCAM's closed form on a pooling head, Guided Backprop for
every image (pytorch-grad-cam explains image 0 only), ARCC's harmonic mean.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import explainkit
from explainkit.adapters import ReSTScore, SoftmaxProbability, resolve_layer
from explainkit.cam import compute, deep_feature_factorization, get_method, list_methods
from explainkit.cam.arcc import arcc, confidence_change
from explainkit.cam.engine import CamRun
from explainkit.cam.methods import kernel_first_component
from explainkit.cam.postprocess import combine_layers, minmax

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import (  # noqa: E402
    ClassifierOutputReST,
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
)

TOL = 1e-5
LAYER = "layer4"


@pytest.fixture(scope="module")
def resnet():
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(1)
    return torch.randn(2, 3, 64, 80)


@pytest.fixture(scope="module")
def classes(resnet, x):
    with torch.no_grad():
        return resnet(x).argmax(1).tolist()


def _peer(model, cls, x, targets=None, layer=LAYER, **call):
    layers = [resolve_layer(model, layer)[1]] if layer else []
    with cls(model, layers) as c:
        return c(x, targets, **call)


def _ours(model, x, method, targets=None, layer=LAYER, **params):
    return compute(model, x, methods=[method], layer=layer, targets=targets, params={method: params})


def _close(got, ref, what):
    diff = np.abs(np.asarray(got) - np.asarray(ref)).max()
    assert diff <= TOL, f"{what}: max abs diff {diff:.2e} vs pytorch-grad-cam"


def _close_up_to_sign(res, method, ref, size):
    """Eigen-type maps: pytorch-grad-cam's SVD sign is arbitrary, so the flipped projection may match."""
    got = res.maps[method].numpy()
    flipped = combine_layers([-r for r in res.raw[method].values()], size).numpy()
    diff = np.minimum(np.abs(got - ref).max(axis=(1, 2)), np.abs(flipped - ref).max(axis=(1, 2))).max()
    assert diff <= TOL, f"{method}: max abs diff {diff:.2e}"


def test_fem_and_kpcacam(resnet, x):
    _close(_ours(resnet, x, "fem").maps["fem"], _peer(resnet, pgc.FEM, x), "fem")
    _close(_ours(resnet, x, "kpcacam", sign="max_abs").maps["kpcacam"], _peer(resnet, pgc.KPCA_CAM, x), "kpcacam")


def test_kpca_matches_scikit_learn_and_its_sign_follows_the_channel_sum():
    from sklearn.decomposition import KernelPCA

    torch.manual_seed(0)
    feats = torch.relu(torch.randn(2, 6, 5, 4))
    for kernel in ("sigmoid", "rbf", "poly", "cosine"):
        ours = kernel_first_component(feats, kernel, sign="none")
        for i in range(2):
            m = feats[i].flatten(1).T.double().numpy()
            m = m - m.mean(0)
            ref = KernelPCA(n_components=1, kernel=kernel, eigen_solver="dense").fit_transform(m)[:, 0]
            got = ours[i].flatten().double().numpy()
            assert min(np.abs(got - ref).max(), np.abs(got + ref).max()) < 1e-5, kernel
    default = kernel_first_component(feats)
    for i in range(2):
        assert np.corrcoef(default[i].flatten(), feats[i].sum(0).flatten())[0, 1] > 0


def test_shapleycam(resnet, x, classes):
    rest = ReSTScore(classes)
    _close(_ours(resnet, x, "shapleycam", rest).maps["shapleycam"],
           _peer(resnet, pgc.ShapleyCAM, x, [ClassifierOutputReST(c) for c in classes]), "shapleycam (ReST)")
    _close(_ours(resnet, x, "shapleycam").maps["shapleycam"], _peer(resnet, pgc.ShapleyCAM, x), "shapleycam (logit)")


def test_shapleycam_closed_form_on_a_pooling_head():
    """y = 2 o_c - logsumexp(o), o = W mean(A) + b: g = (2 W_c - W^T p) / Z, H A = -(M mean(A)) / Z."""
    from test_cam_methods import GapNet  # tests/ is on the path (pytest's default import mode)

    model = GapNet().eval()
    torch.manual_seed(2)
    x = torch.randn(3, 3, 12, 10)
    with torch.no_grad():
        a = model.features(x)
        o = model(x)
    c = o.argmax(1)
    p = torch.softmax(o, 1)
    w = model.fc.weight.detach()
    z = a.shape[2] * a.shape[3]
    mean = a.mean((2, 3))
    g = (2 * w[c] - p @ w) / z
    m = torch.einsum("mk,bm,ml->bkl", w, p, w) - torch.einsum("bk,bl->bkl", p @ w, p @ w)  # W^T (diag p - pp^T) W
    hvp = -torch.einsum("bkl,bl->bk", m, mean) / z
    expected = torch.einsum("bk,bkhw->bhw", g - 0.5 * hvp, a)
    got = _ours(model, x, "shapleycam", ReSTScore(c), layer="features").raw["shapleycam"]["features"]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("base", "alpha", "comparisons"), [("gradcam", 1.0, (1, 2, 3)), ("gradcampp", 0.5, (1, 2))])
def test_finercam(resnet, x, base, alpha, comparisons):
    base_cls = {"gradcam": pgc.GradCAM, "gradcampp": pgc.GradCAMPlusPlus}[base]
    with pgc.FinerCAM(resnet, [resolve_layer(resnet, LAYER)[1]], base_method=base_cls) as c:
        ref = c(x, None, alpha=alpha, comparison_categories=list(comparisons))
    got = _ours(resnet, x, "finercam", base=base, alpha=alpha, comparisons=list(comparisons)).maps["finercam"]
    _close(got, ref, f"finercam ({base})")


def test_fullgrad(resnet, x):
    _close(_ours(resnet, x, "fullgrad", layer=None).maps["fullgrad"], _peer(resnet, pgc.FullGrad, x, layer=None),
           "fullgrad")
    # eigen_smooth: min-max of the projection, whose SVD sign is arbitrary in the peer (flip: 1 - map)
    got = _ours(resnet, x, "fullgrad", layer=None, eigen_smooth=True).maps["fullgrad"]
    ref = _peer(resnet, pgc.FullGrad, x, layer=None, eigen_smooth=True)
    flipped = minmax(1 - got).numpy()
    diff = np.minimum(np.abs(got.numpy() - ref).max(axis=(1, 2)), np.abs(flipped - ref).max(axis=(1, 2))).max()
    assert diff <= TOL, f"fullgrad eigen_smooth: {diff:.2e}"


def test_fullgrad_per_layer_variant_by_hand(tiny_cnn):
    """The authors' psi: min-max of each whole term (eps 1e-6), summed over channels, align_corners=True."""
    import copy

    model = copy.deepcopy(tiny_cnn)
    g = torch.Generator().manual_seed(6)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in norms:  # non-trivial statistics, so that every bias term counts
        for t in (bn.weight.data, bn.bias.data, bn.running_mean):
            t.copy_(torch.randn(t.shape, generator=g))
        bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g) + 0.5)
    torch.manual_seed(3)
    x = torch.randn(2, 3, 20, 24)
    c = model(x).argmax(1)
    xi = x.clone().requires_grad_(True)
    outs = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: outs.append(out)) for m in norms]
    y = model(xi).gather(1, c[:, None]).sum()
    for h in hooks:
        h.remove()
    grads = torch.autograd.grad(y, [xi, *outs])

    def psi(t):
        flat = t.abs().flatten(1)
        flat = flat - flat.min(1, keepdim=True).values
        return (flat / (flat.max(1, keepdim=True).values + 1e-6)).view_as(t)

    expected = psi(x * grads[0]).sum(1)
    for bn, grad in zip(norms, grads[1:]):
        bias = bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)
        term = psi(bias.detach()[None, :, None, None] * grad)
        expected = expected + F.interpolate(term, size=(20, 24), mode="bilinear", align_corners=True).sum(1)
    got = compute(model, x, methods=["fullgrad"], params={"fullgrad": {"variant": "per_layer"}}).raw["fullgrad"]
    torch.testing.assert_close(got["input"], expected.detach(), rtol=1e-5, atol=1e-5)


def test_guided_backprop_every_image_and_guided_gradcam(resnet, x, classes):
    import copy

    gb = pgc.GuidedBackpropReLUModel(copy.deepcopy(resnet), device="cpu")  # it swaps the model's ReLU modules
    ref = np.stack([gb(x[i:i + 1], classes[i]) for i in range(x.shape[0])])  # image 0 only: one at a time
    raw = compute(resnet, x, methods=["guided_backprop"], params={"guided_backprop": {"reduce": "sum"}})
    _close(raw.raw["guided_backprop"]["input"], ref.sum(-1), "guided backprop (signed sum)")
    cam = _peer(resnet, pgc.GradCAM, x, [ClassifierOutputTarget(k) for k in classes])
    expected = minmax(torch.from_numpy(np.abs(ref * cam[..., None]).sum(-1))).numpy()
    _close(_ours(resnet, x, "guided_gradcam").maps["guided_gradcam"], expected, "guided gradcam")


def test_deep_feature_factorization(resnet, x):
    dff = pgc.DeepFeatureFactorization(resnet, resolve_layer(resnet, LAYER)[1], computation_on_concepts=resnet.fc)
    concepts, maps, scores = dff(x, 4)
    ours = deep_feature_factorization(resnet, x, layer=LAYER, n_components=4, head="fc")
    _close(ours.concepts, concepts, "dff concepts")
    _close(ours.maps, np.stack(maps), "dff maps")
    _close(ours.scores, scores, "dff concept scores")
    assert ours.maps.shape == (2, 4, 64, 80) and ours.raw.shape == (2, 4, 2, 3)


@pytest.mark.parametrize(("method", "peer"), [("gradcam", "GradCAM"), ("gradcampp", "GradCAMPlusPlus"),
                                              ("layercam", "LayerCAM"), ("fem", "FEM")])
def test_aug_smooth(resnet, x, classes, method, peer):
    ref = _peer(resnet, getattr(pgc, peer), x, [ClassifierOutputTarget(c) for c in classes], aug_smooth=True)
    _close(_ours(resnet, x, method, classes, aug_smooth=True).maps[method], ref, f"{method} aug_smooth")


EIGEN_SMOOTH = {"gradcam": "GradCAM", "gradcampp": "GradCAMPlusPlus", "xgradcam": "XGradCAM",
                "layercam": "LayerCAM", "hirescam": "HiResCAM", "gradcam_elementwise": "GradCAMElementWise",
                "shapleycam": "ShapleyCAM"}


def test_eigen_smooth(resnet, x, classes):
    targets = [ClassifierOutputTarget(c) for c in classes]
    for method, peer in EIGEN_SMOOTH.items():
        ref = _peer(resnet, getattr(pgc, peer), x, targets, eigen_smooth=True)
        _close_up_to_sign(_ours(resnet, x, method, classes, eigen_smooth=True), method, ref, (64, 80))
    declared = {m for m in list_methods() if "eigen_smooth" in get_method(m).options}
    assert set(EIGEN_SMOOTH) | {"scorecam", "ablationcam", "smoothgradcampp", "fullgrad"} == declared


def test_eigen_smooth_of_perturbation_methods(tiny_cnn):
    torch.manual_seed(4)
    x = torch.randn(2, 3, 32, 32)
    for method, peer, params in (("scorecam", "ScoreCAM", {"variant": "channel_softmax"}),
                                 ("ablationcam", "AblationCAM", {})):
        ref = _peer(tiny_cnn, getattr(pgc, peer), x, layer="features.3", eigen_smooth=True)
        res = _ours(tiny_cnn, x, method, layer="features.3", eigen_smooth=True, **params)
        _close_up_to_sign(res, method, ref, (32, 32))


def test_confidence_change_and_arcc(tiny_cnn, monkeypatch):
    from pytorch_grad_cam.metrics import road as peer_road
    from pytorch_grad_cam.metrics.arcc import ARCC, Coherency
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange

    torch.manual_seed(5)
    x = torch.randn(3, 3, 24, 24)
    with torch.no_grad():
        cls = tiny_cnn(x).argmax(1).tolist()
    layer = "features.3"
    targets = [ClassifierOutputSoftmaxTarget(c) for c in cls]
    run = CamRun.create(tiny_cnn, x, layer=layer, targets=SoftmaxProbability(cls), needs_layers=True)
    run.record(gradients=False)
    maps = explainkit.cam(tiny_cnn, x, layer=layer, targets=SoftmaxProbability(cls))
    cams = maps.numpy()
    change = confidence_change(run, maps)
    _close(change["change"], CamMultImageConfidenceChange()(x, cams, targets, tiny_cnn), "confidence change")
    assert np.array_equal(change["drop"], np.maximum(-change["change"], 0))
    # ROAD's imputation noise is unseeded in pytorch-grad-cam: compare without noise
    monkeypatch.setattr(peer_road.NoisyLinearImputer.__init__, "__defaults__", (0.0, peer_road.neighbors_weights))
    with pgc.GradCAM(tiny_cnn, [resolve_layer(tiny_cnn, layer)[1]]) as base:
        ref = ARCC(base, road_percentiles=[20, 40, 60, 80])(x, cams, targets, tiny_cnn)
        coherency = Coherency()(x, cams, targets, tiny_cnn, base)
    road = peer_road.ROADCombined(percentiles=[20, 40, 60, 80])(x, cams, targets, tiny_cnn)
    ours = arcc(run, maps, "gradcam", noise=0.0)
    _close(ours["arcc"], ref, "ARCC")
    _close(ours["coherency"], coherency, "Coherency")
    _close(ours["road"], road, "ROAD combined (percentile removal)")
    _close(ours["complexity"], np.abs(cams).mean(axis=(1, 2)), "Complexity")
    # the harmonic mean of its three parts
    r = np.clip(2 * ours["road"], 0, 1)
    with np.errstate(divide="ignore"):
        expected = 3 / (1 / ours["coherency"] + 1 / (1 - ours["complexity"]) + 1 / r)
    np.testing.assert_allclose(ours["arcc"], expected, rtol=1e-6, atol=1e-7)


def test_analyzers_run_the_new_methods(small_world, demo_model_path):
    """The gradcam analyzer runs the backward-kind methods, the captum analyzer FullGrad / Guided Backprop
    (module hooks: refused on TorchScript before the first pass); their maps find the demo's stamp shortcut."""
    probe = explainkit.ProbeSet.from_folder(small_world).subset(np.arange(0, 120, 6))
    handle = explainkit.load_model(demo_model_path)
    cheap = {"metric_images": 4, "road_images": 2, "steps": 4, "n_random": 0, "sanity": False, "n_examples": 1,
             "n_resamples": 100}
    specs = [("gradcam", {**cheap, "methods": ["shapleycam", "finercam", "guided_gradcam"]}),
             ("captum", {**cheap, "methods": ["fullgrad", "guided_backprop"]})]
    rep = explainkit.analyze(handle, probe, specs, progress=False)
    n_stamped = int(probe.concepts[:, probe.concept_index("stamp")].sum())
    for name, methods in (("gradcam", ["shapleycam", "finercam", "guided_gradcam"]),
                          ("captum", ["fullgrad", "guided_backprop"])):
        data = rep.section(name)["data"]
        assert [m["name"] for m in data["methods"]] == methods
        for m in data["methods"]:
            assert m["deletion"]["n"] == 4 and np.isfinite(m["deletion"]["value"])
            hit = m["pointing"]["stamp"]["hit_rate"]
            # the stamp covers ~3 % of the image: the Wilson CI of the hit rate lies far above chance
            assert hit["n"] == n_stamped and hit["ci_low"] > 0.25, (m["name"], hit)
    scripted = explainkit.wrap(torch.jit.script(handle.module.eval()), input_size=64, mean="0.5,0.5,0.5",
                               std="0.5,0.5,0.5", class_names=list(handle.class_names))
    with pytest.raises(explainkit.CapabilityError, match="fullgrad need module hooks"):
        explainkit.analyze(scripted, probe, [("captum", {"methods": ["saliency", "fullgrad"]})], progress=False)
