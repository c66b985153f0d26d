"""Insertion and removal against closed forms: a model whose logits are linear in the mean colour.

For ``f_t(x) = sum_c w[t, c] * mean_hw(x_c)``, pasting a patch changes the logit by
``sum_c w[t, c] * sum_region alpha * (patch_c - x_c) / (H * W)``, computed here in NumPy from the
image files, independently of the gate's tensor code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import explainkit
from explainkit.errors import ConfigError, ExitCode
from explainkit.gate.kinds.interventions import target_scores

SIZE = 16


class MeanColour(nn.Module):
    """Logits linear in the image's mean colour: (B, 3, H, W) -> (B, K)."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3)) @ self.w.T


class NaNModel(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 2), float("nan"))


def linear_handle(w: torch.Tensor) -> explainkit.ModelHandle:
    return explainkit.wrap(MeanColour(w), input_size=SIZE, mean=(0, 0, 0), std=(1, 1, 1))


def flat_probe(root, n: int = 12, seed: int = 0):
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / f"img_{i:03d}.png")
    return root


def _pixels(root, sid) -> np.ndarray:
    return np.asarray(Image.open(root / sid).convert("RGB"), dtype=np.float64).transpose(2, 0, 1) / 255.0


@pytest.fixture()
def setup(tmp_path):
    data = flat_probe(tmp_path / "probe")
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 250, 220, 10
    rgba[..., 3] = [[255, 255, 128, 0], [255, 255, 128, 0], [64, 64, 255, 255], [0, 255, 255, 255]]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "art.png")
    w = torch.tensor([[0.5, 2.0, -1.0], [1.0, 0.0, 0.0]])
    return data, tmp_path / "art.png", w, rgba.astype(np.float64) / 255.0


def _policy(data, art, **check):
    base = {"id": "c", "kind": "insertion", "artifact": str(art), "target_class": 0, "data": str(data),
            "placement": "center", "repeats": 2, "tau": 10.0}
    return {"version": 1, "checks": [{**base, **check}]}


def _expected_shift(x: np.ndarray, patch: np.ndarray, alpha: np.ndarray, w: np.ndarray) -> float:
    y0 = x0 = (SIZE - 4) // 2
    region = x[:, y0 : y0 + 4, x0 : x0 + 4]
    return float(np.sum(w[:, None, None] * alpha[None] * (patch - region)) / SIZE**2)


def test_insertion_mean_patch_closed_form(setup):
    data, art, w, rgba = setup
    c = explainkit.check(linear_handle(w), _policy(data, art)).check("c")
    per = c["details"]["per_image"]
    assert len(per["ids"]) == 12 and c["n"] == 12
    colour, alpha = rgba[..., :3].transpose(2, 0, 1), rgba[..., 3]
    wt = w[0].double().numpy()
    for sid, raw, control in zip(per["ids"], per["raw"], per["control"]):
        x = _pixels(data, sid)
        assert raw == pytest.approx(_expected_shift(x, colour, alpha, wt), abs=1e-5)
        # the mean patch keeps the region's alpha-weighted mean colour: a mean-colour model cannot see it
        assert control == pytest.approx(0.0, abs=1e-5)
    assert c["effect"]["value"] == pytest.approx(np.mean(per["raw"]), abs=1e-6)


def test_insertion_grey_patch_closed_form(setup):
    data, art, w, rgba = setup
    c = explainkit.check(linear_handle(w), _policy(data, art, control="grey_patch")).check("c")
    per = c["details"]["per_image"]
    alpha = rgba[..., 3]
    wt = w[0].double().numpy()
    for sid, control, effect, raw in zip(per["ids"], per["control"], per["effect"], per["raw"]):
        x = _pixels(data, sid)
        assert control == pytest.approx(_expected_shift(x, np.full((3, 4, 4), 0.5), alpha, wt), abs=1e-5)
        assert effect == pytest.approx(raw - control, abs=1e-9)


def test_shuffled_pixels_hide_colour_reliance(setup):
    """With a binary alpha, shuffled pixels have the artifact's exact colour sums: a colour-only model shows 0."""
    data, art, w, _ = setup
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = np.random.default_rng(1).integers(0, 256, (4, 4, 3))
    rgba[..., 3] = 255
    Image.fromarray(rgba, "RGBA").save(art)
    c = explainkit.check(linear_handle(w), _policy(data, art, control="shuffled_pixels")).check("c")
    assert abs(c["metrics"]["raw_effect"]["value"]) > 0.01
    np.testing.assert_allclose(c["details"]["per_image"]["effect"], 0.0, atol=1e-5)
    assert c["status"] == "pass" and any("colour" in n for n in c["notes"])


def test_target_scores_for_each_effect():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(target_scores(logits, 1, "logit_shift"), [0.0, 1.0])
    np.testing.assert_allclose(target_scores(logits, 1, "prob_shift"),
                               [1 / (1 + np.exp(2)), 1 / (1 + np.exp(-1))])
    np.testing.assert_allclose(target_scores(logits, 1, "flip_rate"), [0.0, 1.0])
    with pytest.raises(ConfigError, match="out of range"):
        target_scores(logits, 2, "logit_shift")


def test_flip_rate_counts_flips_to_the_target(setup):
    """A white patch raises class 0 by a known amount; images near the boundary flip, the others do not."""
    data, art, _, _ = setup
    Image.new("RGBA", (4, 4), (255, 255, 255, 255)).save(art)
    w = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    bias = 1.5 + 3 * 16 / 256 / 2  # logit_0 = sum(mean) - bias: around the typical noise image's value
    model = nn.Sequential(MeanColour(w), _Shift(torch.tensor([-bias, 0.0])))
    handle = explainkit.wrap(model, input_size=SIZE, mean=(0, 0, 0), std=(1, 1, 1))
    c = explainkit.check(handle, _policy(data, art, effect="flip_rate", control="grey_patch", tau=0.5)).check("c")
    expected = []
    for sid in c["details"]["per_image"]["ids"]:
        x = _pixels(data, sid)
        before = x.mean((1, 2)).sum() - bias
        after = before + _expected_shift(x, np.ones((3, 4, 4)), np.ones((4, 4)), np.ones(3))
        grey = before + _expected_shift(x, np.full((3, 4, 4), 0.5), np.ones((4, 4)), np.ones(3))
        expected.append(float(after > 0) - float(grey > 0))
    np.testing.assert_allclose(c["details"]["per_image"]["effect"], expected)
    assert 0 < sum(expected) < len(expected)  # some images flip, some do not
    assert c["effect"]["unit"] == "fraction of images"


class _Shift(nn.Module):
    def __init__(self, b: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("b", b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b


def test_removal_closed_form(tmp_path):
    data = flat_probe(tmp_path / "probe", n=10)
    masks = tmp_path / "probe" / "masks" / "stamp"
    masks.mkdir(parents=True)
    for i in range(10):
        m = np.zeros((SIZE, SIZE), np.uint8)
        m[1:5, 2 + i % 5 : 6 + i % 5] = 255
        Image.fromarray(m).save(masks / f"img_{i:03d}.png")
    w = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    policy = {"version": 1, "checks": [{"id": "r", "kind": "removal", "concept": "stamp", "fill": "grey_patch",
                                        "target_class": 0, "data": str(data), "tau": 5.0}]}
    c = explainkit.check(linear_handle(w), policy).check("r")
    assert c["n"] == 10
    for sid, raw, control, effect in zip(*(c["details"]["per_image"][k] for k in ("ids", "raw", "control",
                                                                                  "effect"))):
        x = _pixels(data, sid)
        mask = np.asarray(Image.open(masks / sid)) > 127
        expected = float(np.sum(w[0].double().numpy()[:, None] * (x[:, mask] - 0.5)) / SIZE**2)  # the drop
        assert raw == pytest.approx(expected, abs=1e-5)
        assert effect == pytest.approx(raw - control, abs=1e-9)


def test_holm_across_checks_in_a_run(tmp_path):
    """The runner adjusts every check's p-value with Holm (compared with a hand-written step-down)."""
    data = flat_probe(tmp_path / "probe", n=24)
    handle = linear_handle(torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    for name, colour in (("white", (255, 255, 255, 255)), ("dark", (40, 40, 40, 255)), ("mid", (140, 140, 140, 255))):
        Image.new("RGBA", (4, 4), colour).save(tmp_path / f"{name}.png")
    checks = [{"id": name, "kind": "insertion", "artifact": str(tmp_path / f"{name}.png"), "target_class": 0,
               "data": str(data), "control": "grey_patch", "placement": "random", "tau": 0.5}
              for name in ("white", "dark", "mid")]
    result = explainkit.check(handle, {"version": 1, "checks": checks})
    p = np.array([c["p"] for c in result.checks])
    order = np.argsort(p)
    expected, running = np.empty(3), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (3 - rank) * p[i]))
        expected[i] = running
    np.testing.assert_allclose([c["p_adj"] for c in result.checks], expected)
    assert all(c["correction"] == "holm" for c in result.checks)
    assert result.checks[0]["mde_definition"].endswith("at level 0.0167")


def test_sample_is_capped_and_seeded(setup):
    data, art, w, _ = setup
    a = explainkit.check(linear_handle(w), _policy(data, art, max_images=5)).check("c")
    b = explainkit.check(linear_handle(w), _policy(data, art, max_images=5, seed=9)).check("c")
    assert a["n"] == a["n_planned"] == 5 and not a["truncated"]
    assert a["details"]["per_image"]["ids"] != b["details"]["per_image"]["ids"]


def test_a_check_that_cannot_run_is_error_and_exit_3(setup):
    data, art, _, _ = setup
    handle = explainkit.wrap(NaNModel(), input_size=SIZE, mean=(0, 0, 0), std=(1, 1, 1))
    result = explainkit.check(handle, _policy(data, art))
    c = result.check("c")
    assert c["status"] == "error" and "non-finite" in c["error"]
    assert result.exit_code == ExitCode.RUNTIME and result.status == "error"
    warn = _policy(data, art, severity="warning")
    assert explainkit.check(handle, warn).exit_code == ExitCode.OK


def test_bad_target_and_data_are_usage_errors(setup, small_world, demo_handle):
    data, art, w, _ = setup
    with pytest.raises(ConfigError, match="out of range"):
        explainkit.check(linear_handle(w), _policy(data, art, target_class=7))
    with pytest.raises(ConfigError, match="unknown target_class 'dog'"):
        explainkit.check(demo_handle, _policy(small_world, art, target_class="dog"))


def test_images_carrying_the_artifact_are_left_out(small_world, demo_handle):
    probe = explainkit.ProbeSet.from_folder(small_world)
    stamped = int(probe.concepts[:, probe.concept_index("stamp")].sum())
    policy = _policy(small_world, small_world / "artifacts" / "stamp.png", target_class="circle", max_images=500,
                     placement="corner:any", repeats=1)
    c = explainkit.check(demo_handle, policy).check("c")
    assert c["details"]["left_out_with_artifact"] == stamped > 0
    assert c["n"] == len(probe) - stamped
    stamped_ids = {sid for sid, row in zip(probe.ids, probe.concepts[:, probe.concept_index("stamp")]) if row}
    assert not stamped_ids & set(c["details"]["per_image"]["ids"])
