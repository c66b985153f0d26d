"""The ``transform`` kind against closed forms and an independent blur, on tiny probes built here.

With a model whose logits are linear in the mean colour (``f_t(x) = w_t . mean_hw(x)``), every
transform's per-image effect has a closed form computed in NumPy from the image files:

* recolour with strength s: raw = s w_t . mean_region(c - x) * |region| / HW, control the same
  with the colour's luminance grey, so effect = s |region| / HW  w_t . (c - grey(c));
* background swap of uniform-background images: the pasted background changes the mean colour by
  (1 - object share) (bg_donor - bg_own).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from test_gate_interventions import SIZE, _pixels, flat_probe, linear_handle

import explainkit
from explainkit.errors import ConfigError, DataError
from explainkit.gate.kinds.transforms import LUMA, blur_region, luminance_grey, recolour, retexture_region

W = torch.tensor([[0.5, 2.0, -1.0], [1.0, 0.0, 0.0]])
BACKGROUNDS = {"a": (200, 30, 30), "b": (30, 30, 200)}


def _policy(data, **check):
    base = {"id": "t", "kind": "transform", "target_class": 0, "data": str(data), "tau": 10.0}
    return {"version": 1, "checks": [{**base, **check}]}


def _class_probe(root, n_per_class: int = 6, seed: int = 0):
    """Two classes; each image: its class's uniform background and a green square object (with a mask)."""
    rng = np.random.default_rng(seed)
    for cls, bg in BACKGROUNDS.items():
        (root / cls).mkdir(parents=True)
        (root / "masks" / "object" / cls).mkdir(parents=True)
        for i in range(n_per_class):
            img = np.empty((SIZE, SIZE, 3), np.uint8)
            img[:] = bg
            y, x = rng.integers(1, SIZE - 6, 2)
            mask = np.zeros((SIZE, SIZE), bool)
            mask[y : y + 5, x : x + 5] = True
            img[mask] = (40, 220, 60)
            Image.fromarray(img).save(root / cls / f"{i}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / "object" / cls / f"{i}.png")
    return root


def test_recolour_whole_image_closed_form(tmp_path):
    data = flat_probe(tmp_path / "probe")
    colour, s = np.array([0.0, 0.7, 0.7]), 0.4
    c = explainkit.check(linear_handle(W), _policy(data, transform="recolour", colour=list(colour),
                                                    strength=s)).check("t")
    per = c["details"]["per_image"]
    w = W[0].double().numpy()
    grey = np.full(3, float(np.dot(LUMA, colour)))
    assert c["n"] == 12 and c["details"]["control"] == "luminance_grey"
    for sid, raw, control, effect in zip(per["ids"], per["raw"], per["control"], per["effect"]):
        mean = _pixels(data, sid).mean((1, 2))
        assert raw == pytest.approx(s * w @ (colour - mean), abs=1e-5)
        assert control == pytest.approx(s * w @ (grey - mean), abs=1e-5)
        assert effect == pytest.approx(s * w @ (colour - grey), abs=1e-5)


def test_recolour_of_the_background_only(tmp_path):
    data = _class_probe(tmp_path / "probe")
    colour = np.array([1.0, 1.0, 0.0])
    c = explainkit.check(linear_handle(W), _policy(data, transform="recolour", colour=list(colour), strength=1.0,
                                                    region="background", target_class="a")).check("t")
    per = c["details"]["per_image"]
    assert c["n"] == 6 and all(sid.startswith("b/") for sid in per["ids"])  # class b: the images outside "a"
    w = W[0].double().numpy()
    for sid, effect in zip(per["ids"], per["effect"]):
        obj = np.asarray(Image.open(data / "masks" / "object" / sid)) > 127
        share = 1.0 - obj.mean()
        assert effect == pytest.approx(share * w @ (colour - luminance_grey(torch.tensor(colour)).numpy()), abs=1e-5)


def test_background_swap_closed_form(tmp_path):
    data = _class_probe(tmp_path / "probe")
    c = explainkit.check(linear_handle(W), _policy(data, transform="background_swap", target_class="a",
                                                    repeats=2)).check("t")
    per = c["details"]["per_image"]
    w = W[0].double().numpy()
    bg_a, bg_b = (np.array(BACKGROUNDS[k]) / 255.0 for k in "ab")
    assert c["n"] == 6 and c["details"]["control"] == "own_class_background"
    for sid, raw, control in zip(per["ids"], per["raw"], per["control"]):
        obj = np.asarray(Image.open(data / "masks" / "object" / sid)) > 127
        share = 1.0 - obj.mean()
        # the donors' objects are inpainted from a uniform background: their backgrounds are uniform (8-bit)
        assert raw == pytest.approx(share * w @ (bg_a - bg_b), abs=2e-3)
        assert control == pytest.approx(0.0, abs=2e-3)
    assert c["effect"]["value"] > 0


def test_blur_region_matches_opencv():
    rng = np.random.default_rng(0)
    image = rng.random((3, 20, 24)).astype(np.float32)
    region = np.zeros((20, 24), bool)
    region[3:12, 5:20] = True
    sigma = 1.5
    k = 2 * int(np.ceil(3 * sigma)) + 1
    ref = cv2.GaussianBlur(image.transpose(1, 2, 0), (k, k), sigma, borderType=cv2.BORDER_REFLECT_101)
    expected = np.where(region[None], ref.transpose(2, 0, 1), image)
    out = blur_region(torch.from_numpy(image), torch.from_numpy(region), sigma).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_texture_region_matches_opencv_inside_the_region():
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    region = np.zeros((24, 24), bool)
    region[4:14, 6:20] = True
    smooth = cv2.fastNlMeansDenoisingColored(np.ascontiguousarray(arr[..., ::-1]), None, 4.0, 4.0, 7, 21)[..., ::-1]
    expected = np.where(region[..., None], smooth, arr).astype(np.float32).transpose(2, 0, 1) / 255
    image = torch.from_numpy(arr.astype(np.float32).transpose(2, 0, 1) / 255)
    out = retexture_region(image, torch.from_numpy(region), h=4.0, h_color=4.0, template_window=7, search_window=21)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)


def test_texture_check_runs_on_the_target_class(tmp_path):
    """Flat objects have no texture to remove: a mean-colour model sees (almost) nothing."""
    data = _class_probe(tmp_path / "probe")
    c = explainkit.check(linear_handle(W), _policy(data, transform="texture", region="object", target_class="a",
                                                    repeats=1)).check("t")
    assert c["n"] == 6 and c["details"]["control"] == "shifted_region"
    np.testing.assert_allclose(c["details"]["per_image"]["raw"], 0.0, atol=1e-3)


def test_recolour_is_a_convex_mix():
    x = torch.rand(3, 5, 5)
    region = torch.zeros(5, 5, dtype=torch.bool)
    region[1:3] = True
    colour = torch.tensor([1.0, 0.0, 0.5])
    out = recolour(x, region, colour, 0.25)
    assert torch.equal(out[:, ~region], x[:, ~region])
    torch.testing.assert_close(out[:, region], 0.75 * x[:, region] + 0.25 * colour[:, None])


def test_blur_lowers_a_model_that_reads_the_region_detail(tmp_path):
    """A model scoring the object's high-frequency energy relies on its detail: blurring it must count."""
    data = _class_probe(tmp_path / "probe")

    class Detail(torch.nn.Module):
        def forward(self, x):
            dx = (x[..., 1:] - x[..., :-1]).abs().mean((1, 2, 3))
            return torch.stack([dx, torch.zeros_like(dx)], 1) * 10

    handle = explainkit.wrap(Detail(), input_size=SIZE, mean=(0, 0, 0), std=(1, 1, 1), class_names=["a", "b"])
    c = explainkit.check(handle, _policy(data, transform="blur", region="object", target_class="a",
                                          sigma=1.0, tau=0.01)).check("t")
    assert c["n"] == 6 and all(sid.startswith("a/") for sid in c["details"]["per_image"]["ids"])
    assert c["metrics"]["raw_effect"]["value"] > 0
    assert c["details"]["control"] == "shifted_region"


@pytest.mark.parametrize(("check", "message"), [
    ({"transform": "recolour"}, "colour"),
    ({"transform": "recolour", "colour": [1, 0]}, "colour"),
    ({"transform": "blur"}, "mask folder"),
    ({"transform": "texture", "region": "background"}, "mask folder"),
    ({"transform": "background_swap", "region": "object"}, "background"),
])
def test_policy_errors_are_one_line(tmp_path, check, message):
    data = flat_probe(tmp_path / "probe", n=2)
    with pytest.raises(ConfigError, match=message):
        explainkit.check(linear_handle(W), _policy(data, **check))


def test_missing_masks_are_a_data_error(tmp_path):
    data = flat_probe(tmp_path / "probe", n=2)
    with pytest.raises(DataError, match="masks/object"):
        explainkit.check(linear_handle(W), _policy(data, transform="recolour", colour=[1, 0, 0],
                                                    region="background"))


# -- slow: models trained on planted worlds (background tint, colour cast) and a clean twin -----------

def _planted_checks(kind: str, root) -> list[dict]:
    from explainkit.datasets.synthetic import CAST_COLOUR, CAST_WEIGHT, TINT_COLOUR

    base = {"kind": "transform", "target_class": "circle", "data": str(root)}
    if kind == "background":
        return [{**base, "id": "swap", "transform": "background_swap", "donor_concept": "cue"},
                {**base, "id": "tint", "transform": "recolour", "region": "background",
                 "colour": [c / 255 for c in TINT_COLOUR], "strength": 0.5}]
    return [{**base, "id": "cast", "transform": "recolour", "colour": [c / 255 for c in CAST_COLOUR],
             "strength": CAST_WEIGHT}]


@pytest.mark.slow
def test_planted_background_and_cast_fail_and_the_clean_twin_does_not(tmp_path):
    from test_discovery_planted import _model, _probe

    clean = _model(tmp_path / "train-clean", 0, None)
    for kind in ("background", "cast"):
        biased = _model(tmp_path / f"train-{kind}", 0, kind)
        root = _probe(tmp_path / f"probe-{kind}", 0, kind, True)
        policy = {"version": 1, "checks": _planted_checks(kind, root)}
        for handle, expected in ((biased, {"fail"}), (clean, {"pass", "inconclusive"})):
            result = explainkit.check(handle, policy)
            for c in result.checks:
                assert c["status"] in expected, (kind, expected, c["id"], c["effect"], c["status"])
