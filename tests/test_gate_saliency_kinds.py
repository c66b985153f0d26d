"""``attribution_mass`` and ``randomisation`` against closed forms.

The model reads its red channel through a parameter-free layer ``features`` and scores it with a
head whose weights enter only through their absolute value. Grad-CAM's channel weight is then
``|w_t| / (H W) > 0`` and the map is the min-max scaled red channel, whatever the weights are:

* the share of the map's mass inside a mask is computed here in NumPy from the image files;
* randomising the weights leaves every map unchanged (Spearman 1): the sanity check must FAIL.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import explainkit
from explainkit.errors import ConfigError, ExitCode
from explainkit.gate import parse_policy

SIZE = 16


class PositiveHead(nn.Module):
    """Logits ``pooled @ |W|.T``: (B, 1) -> (B, K); randomising W keeps every sign."""

    def __init__(self, k: int = 2) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([[1.0], [0.5]])[:k])

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return pooled @ self.weight.abs().T


class RedChannel(nn.Module):
    """(B, 3, H, W) -> (B, 2); its map does not depend on its weights."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.head = PositiveHead()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x[:, :1]).mean((2, 3)))


def red_handle() -> explainkit.ModelHandle:
    return explainkit.wrap(RedChannel(), input_size=SIZE, mean=(0, 0, 0), std=(1, 1, 1), class_names=["a", "b"])


@pytest.fixture()
def masked_probe(tmp_path):
    """12 noise images; 10 carry a square mask under masks/stamp/ (one of them empty)."""
    root = tmp_path / "probe"
    (root / "masks" / "stamp").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / f"img_{i:03d}.png")
        if i < 10:
            mask = np.zeros((SIZE, SIZE), np.uint8)
            if i != 9:
                y, x, s = *rng.integers(0, SIZE - 5, 2), int(rng.integers(2, 6))
                mask[y : y + s, x : x + s] = 255
            Image.fromarray(mask).save(root / "masks" / "stamp" / f"img_{i:03d}.png")
    return root


def _expected_mass(root, sid) -> tuple[float, float]:
    red = np.asarray(Image.open(root / sid).convert("RGB"), np.float64)[..., 0] / 255.0
    heat = (red - red.min()) / (red.max() - red.min())
    mask = np.asarray(Image.open(root / "masks" / "stamp" / sid).convert("L")) > 127
    return float((heat * mask).sum() / heat.sum()), float(mask.mean())


def _mass_policy(data, **check):
    base = {"id": "mass", "kind": "attribution_mass", "concept": "stamp", "data": str(data), "layer": "features",
            "tau": 0.05}
    return {"version": 1, "defaults": {"min_images": 5}, "checks": [{**base, **check}]}


def test_attribution_mass_closed_form(masked_probe):
    c = explainkit.check(red_handle(), _mass_policy(masked_probe)).check("mass")
    per = c["details"]["per_image"]
    assert len(per["ids"]) == c["n"] == 9 and c["details"]["empty_masks_left_out"] == 1
    expected = np.array([_expected_mass(masked_probe, sid) for sid in per["ids"]])
    np.testing.assert_allclose(per["mass_inside"], expected[:, 0], atol=1e-5)
    np.testing.assert_allclose(per["area_fraction"], expected[:, 1], atol=1e-12)
    diff = expected[:, 0] - expected[:, 1]
    assert c["effect"]["value"] == pytest.approx(diff.mean(), abs=1e-5)
    from scipy import stats

    assert c["p"] == pytest.approx(stats.wilcoxon(diff, alternative="greater").pvalue, rel=1e-3)
    # noise maps put about the mask's area on it: no material excess
    assert abs(c["effect"]["value"]) < 0.05 and c["status"] != "fail"
    assert c["severity"] == "warning" and not c["gating"]
    assert [p["label"] for p in c["examples"][0]["panels"]] == ["image", "gradcam", "mask (stamp)"]


def test_attribution_mass_target_and_method(masked_probe):
    explained = explainkit.check(red_handle(), _mass_policy(masked_probe, target_class="b")).check("mass")
    assert explained["details"]["explains"] == "class b"
    with pytest.raises(ConfigError, match="unknown CAM method 'gradcamm'"):
        explainkit.check(red_handle(), _mass_policy(masked_probe, method="gradcamm"))
    with pytest.raises(ConfigError, match=r"needs artifact .* or concept"):
        parse_policy({"version": 1, "checks": [{"id": "m", "kind": "attribution_mass", "data": str(masked_probe)}]})


def test_randomisation_fails_when_maps_ignore_the_weights(masked_probe):
    policy = {"version": 1, "defaults": {"min_images": 5}, "checks": [
        {"id": "sanity", "kind": "randomisation", "data": str(masked_probe), "layer": "features",
         "severity": "error"}]}
    result = explainkit.check(red_handle(), policy)
    c = result.check("sanity")
    assert c["details"]["groups"] == [["head"]] and c["details"]["head"]
    np.testing.assert_allclose(c["details"]["per_image"]["rho_full"], 1.0, atol=1e-9)
    assert c["effect"]["value"] == pytest.approx(1.0) and c["tau"] == 0.5
    assert c["status"] == "fail" and result.exit_code == ExitCode.FINDINGS
    # one randomisation group (the head is everything): image, trained map, randomised map
    assert [p["label"] for p in c["examples"][0]["panels"]] == ["image", "trained", "all randomised"]
    assert c["examples"][0]["panels"][2]["score"] == pytest.approx(1.0)


def test_randomisation_passes_for_gradcam_on_a_trained_model(small_world, demo_handle):
    policy = {"version": 1, "checks": [{"id": "sanity", "kind": "randomisation", "data": str(small_world),
                                        "max_images": 40, "stage": "full"}]}
    c = explainkit.check(demo_handle, policy).check("sanity")
    assert c["status"] == "pass", c["reason"]
    rho = np.array(c["details"]["per_image"]["rho_full"])
    assert c["effect"]["value"] == pytest.approx(rho.mean()) and c["effect"]["ci_high"] < 0.5
    both = dict(policy["checks"][0], stage="both")
    c2 = explainkit.check(demo_handle, {**policy, "checks": [both]}).check("sanity")
    per = c2["details"]["per_image"]
    np.testing.assert_allclose(per["rho_full"], rho)  # the same randomised weights
    scored = c2["details"]["scored_stage"]
    means = {"head": np.mean(per["rho_head"]), "full": np.mean(per["rho_full"])}
    assert scored == max(means, key=means.get) and c2["effect"]["value"] == pytest.approx(means[scored])
    from scipy import stats

    one = stats.wilcoxon(np.array(per[f"rho_{scored}"]) - 0.5, alternative="greater").pvalue
    assert c2["p"] == pytest.approx(min(1.0, 2 * one), rel=1e-3)
    # examples: the images whose maps changed least, recomputed with the same randomised weights
    ex = c2["examples"]
    assert [p["label"] for p in ex[0]["panels"]] == ["image", "trained", "head randomised", "all randomised"]
    ids = per["ids"]
    order = np.argsort(-np.array(per[f"rho_{scored}"]), kind="stable")[:3]
    assert [e["id"] for e in ex] == [ids[i] for i in order]
    for e in ex:
        i = ids.index(e["id"])
        assert e["panels"][2]["score"] == pytest.approx(per["rho_head"][i], abs=1e-6)
        assert e["panels"][3]["score"] == pytest.approx(per["rho_full"][i], abs=1e-6)
