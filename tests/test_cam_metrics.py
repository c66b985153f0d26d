"""Metrics, imputation, random baselines and the sanity check against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from torch import nn

import explainkit
from explainkit.cam import baseline, metrics
from explainkit.cam.engine import CamRun
from explainkit.cam.imputation import impute
from explainkit.cam.postprocess import minmax, resize
from explainkit.cam.sanity import parameter_randomization, randomize_
from explainkit.errors import ConfigError


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


@pytest.fixture()
def net():
    return Net().eval()


@pytest.fixture()
def data():
    torch.manual_seed(3)
    x = torch.randn(4, 3, 12, 10)
    maps = torch.rand(4, 12, 10)
    return x, maps


def _prob(net, x, c):
    with torch.no_grad():
        return torch.softmax(net(x), 1)[0, c].item()


def test_imputation_reproduces_linear_images_and_matches_the_road_reference():
    yy, xx = np.mgrid[0:16, 0:12].astype(np.float64)
    ramp = np.stack([2 * yy - xx + 1, yy + 3 * xx, -yy])
    remove = np.zeros((16, 12), bool)
    remove[3:12, 2:9] = True
    remove[5, 5] = False
    np.testing.assert_allclose(impute(ramp, remove), ramp, atol=1e-9)
    road = pytest.importorskip("pytorch_grad_cam.metrics.road")
    rng = np.random.default_rng(0)
    img = rng.random((3, 16, 12))
    remove = rng.random((16, 12)) < 0.6
    ref = road.NoisyLinearImputer(noise=0.0)(torch.from_numpy(img).float(), torch.from_numpy((~remove).astype(float)))
    np.testing.assert_allclose(impute(img, remove), ref.numpy(), atol=1e-6)
    noise = rng.normal(0, 0.01, img.shape)
    np.testing.assert_allclose(impute(img, remove, noise) - impute(img, remove), np.where(remove, noise, 0), atol=1e-12)
    with pytest.raises(ConfigError, match="every pixel"):
        impute(img, np.ones((16, 12), bool))


def test_deletion_insertion_against_a_loop(net, data):
    x, maps = data
    run = CamRun.for_classes(net, x, [0, 1, 2, 0], batch_size=5)
    got = metrics.deletion_insertion(run, maps, steps=6)
    blurred = TF.gaussian_blur(x, [11, 11], [5.0, 5.0])
    n = 12 * 10
    for b, c in enumerate([0, 1, 2, 0]):
        order = np.argsort(-maps[b].flatten().numpy(), kind="stable")
        fr, dele, ins = [], [], []
        for t in range(7):
            k = round(t * n / 6)
            m = np.zeros(n, bool)
            m[order[:k]] = True
            m = torch.from_numpy(m).view(1, 1, 12, 10).float()
            dele.append(_prob(net, x[b:b + 1] * (1 - m), c))
            ins.append(_prob(net, blurred[b:b + 1] * (1 - m) + x[b:b + 1] * m, c))
            fr.append(k / n)
        np.testing.assert_allclose(got["deletion"][b], np.trapezoid(dele, fr), rtol=1e-5)
        np.testing.assert_allclose(got["insertion"][b], np.trapezoid(ins, fr), rtol=1e-5)
        np.testing.assert_allclose(got["deletion_curve"][b], dele, rtol=1e-5)


def test_average_drop_and_increase(net, data):
    x, maps = data
    run = CamRun.for_classes(net, x, [2, 2, 1, 0])
    got = metrics.average_drop(run, maps)
    for b, c in enumerate([2, 2, 1, 0]):
        y, o = _prob(net, x[b:b + 1], c), _prob(net, x[b:b + 1] * maps[b], c)
        np.testing.assert_allclose(got["drop"][b], max(0.0, y - o) / y, rtol=1e-5, atol=1e-7)
        assert got["increase"][b] == float(o > y)


def test_road_removes_the_right_pixels(net, data):
    x, maps = data
    run = CamRun.for_classes(net, x, [0, 1, 2, 0], batch_size=3)
    got = metrics.road(run, maps, levels=(0.25, 0.75), noise=0.0)
    for b, c in enumerate([0, 1, 2, 0]):
        order = np.argsort(-maps[b].flatten().numpy(), kind="stable")
        for j, p in enumerate((0.25, 0.75)):
            k = round(p * 120)
            for name, removed in (("morf", order[:k]), ("lerf", order[120 - k:])):
                mask = np.zeros(120, bool)
                mask[removed] = True
                filled = impute(x[b].double().numpy(), mask.reshape(12, 10))
                expected = _prob(net, torch.from_numpy(filled).float()[None], c)
                np.testing.assert_allclose(got[name][b, j], expected, rtol=1e-5)
    np.testing.assert_allclose(got["combined"], (got["lerf"].mean(1) - got["morf"].mean(1)) / 2)
    with pytest.raises(ConfigError, match="strictly between"):
        metrics.road(run, maps, levels=(0.0, 0.5))


def test_pointing_game_closed_form():
    maps = np.zeros((4, 30, 30))
    maps[0, 5, 5] = 1  # inside the mask
    maps[1, 5, 25] = 1  # 10 px right of the mask's edge at x=15
    maps[2, 5, 20] = 1  # 5 px away
    maps[3, 5, 5] = 1
    mask = np.zeros((30, 30), bool)
    mask[0:10, 0:16] = True
    got = metrics.pointing_game(maps, [mask, mask, mask, None], tolerance=6)
    np.testing.assert_array_equal(got["hit"][:3], [1.0, 0.0, 1.0])
    assert np.isnan(got["hit"][3]) and np.isnan(got["energy"][3])
    maps[0, 20, 20] = 3
    got = metrics.pointing_game(maps[:1], [mask])
    assert got["hit"][0] == 0.0 and got["energy"][0] == pytest.approx(0.25)


def test_random_maps_have_the_spatial_structure_and_are_keyed_by_image():
    maps = baseline.random_maps([5, 9], (3, 4), (12, 16), n=10, seed=1)
    assert maps.shape == (10, 2, 12, 16) and float(maps.min()) >= 0 and float(maps.max()) <= 1
    again = baseline.random_maps([9], (3, 4), (12, 16), n=10, seed=1)
    torch.testing.assert_close(maps[:, 1:], again)
    grid = torch.from_numpy(np.random.default_rng([1, 5, 7919]).random((10, 3, 4))).float()
    torch.testing.assert_close(maps[:, 0], minmax(resize(grid, (12, 16))))


def test_better_than_random():
    rng = np.random.default_rng(0)
    rand = rng.normal(0, 0.1, (30, 10))
    good = baseline.better_than_random(rand.mean(1) + 0.5, rand, n_resamples=200)
    assert good["p"] < 1e-6 and good["win_rate"] == 1.0 and good["effect_size"] == 1.0
    assert good["advantage"]["ci_low"] > 0.4 and good["n_random"] == 10
    same = baseline.better_than_random(rand[:, 0], rand, n_resamples=200)
    assert same["p"] > 0.05
    lower = baseline.better_than_random(rand.mean(1) - 0.5, rand, higher_is_better=False, n_resamples=200)
    assert lower["p"] < 1e-6


def test_randomize_is_seeded_and_changes_weights():
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    randomize_(a, 7)
    randomize_(b, 7)
    assert torch.equal(a.weight, b.weight)
    w = a.weight.clone()
    randomize_(a, 8)
    assert not torch.equal(a.weight, w)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.fill_(2.0)
    randomize_(bn, 0)
    assert torch.equal(bn.weight, torch.ones(3))  # its own reset_parameters


def test_sanity_check_flags_class_agnostic_maps(net):
    torch.manual_seed(5)
    x = torch.randn(16, 3, 12, 10)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        classes = net(x).argmax(1)
    out = parameter_randomization(net, x, methods=["gradcam", "eigencam"], classes=classes, layer="features",
                                  steps=3, n_resamples=200)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert out["head"] and out["groups"][0] == ["fc"] and out["groups"][-1] == ["features.0"]
    eigen = out["methods"]["eigencam"]
    # EigenCAM ignores everything above the target layer: randomising the head changes nothing
    assert eigen["cascading"][0]["value"] == pytest.approx(1.0)
    assert eigen["verdict"] == "FAIL" and "above the target layer" in eigen["reason"]
    grad = out["methods"]["gradcam"]
    assert grad["verdict"] != "FAIL" and grad["cascading"][0]["value"] < 0.5
    assert len(grad["cascading"]) == len(grad["independent"]) == len(out["groups"])
    assert len(grad["cascading"][0]["per_image"]) == 16
    # the cascade alone, with its maps: the same correlations, maps consistent with them
    lean = parameter_randomization(net, x, methods=["gradcam"], classes=classes, layer="features", steps=3,
                                   n_resamples=200, independent=False, keep_maps=True)
    assert lean["methods"]["gradcam"]["independent"] == []
    assert lean["methods"]["gradcam"]["cascading"] == grad["cascading"]
    maps = lean["maps"]
    torch.testing.assert_close(maps["original"]["gradcam"], explainkit.cam(net, x, layer="features",
                                                                           targets=classes.tolist()))
    assert len(maps["cascading"]) == len(out["groups"])
    assert maps["cascading"][-1]["gradcam"].shape == (16, 12, 10)
