"""Perturbations: pixel-exact against torchvision's ColorJitter on PIL and an independent sine warp."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import ColorJitter

import explainkit
from explainkit.errors import ConfigError
from explainkit.prototypes.perturb import DEFAULT_PARAMS, jpeg_roundtrip, make_perturbations


def _random_image(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    smooth = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(smooth).resize((w, h), Image.BICUBIC), np.int16)
    noisy = np.clip(big + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy, "RGB")


@pytest.mark.parametrize("size", [(37, 53), (64, 64), (96, 70)])
@pytest.mark.parametrize(("characteristic", "factor"), [
    ("hue", 0.1), ("hue", -0.27), ("hue", 0.5), ("contrast", 0.45), ("contrast", 1.6),
    ("saturation", 0.7), ("saturation", 0.0), ("brightness", 0.8), ("brightness", 1.3),
])
def test_colour_perturbations_match_torchvision_colorjitter_on_pil(size, characteristic, factor):
    image = _random_image(*size, seed=size[0] + int(factor * 100))
    torch.manual_seed(0)
    reference = ColorJitter(**{characteristic: [factor, factor]})(image)
    ours = explainkit.perturb(image, characteristic, factor=factor)
    assert ours.size == image.size and ours.mode == "RGB"
    assert np.array_equal(np.asarray(ours), np.asarray(reference))


def test_default_parameters_are_the_reference_values():
    assert DEFAULT_PARAMS["hue"] == {"factor": 0.1}
    assert DEFAULT_PARAMS["contrast"] == {"factor": 0.45}
    assert DEFAULT_PARAMS["saturation"] == {"factor": 0.7}
    assert DEFAULT_PARAMS["brightness"] == {"factor": 0.8}
    assert DEFAULT_PARAMS["shape"] == {"amplitude": 4.0, "w": 0.05}
    assert DEFAULT_PARAMS["texture"] == {"h": 4.0, "h_color": 4.0, "template_window": 7, "search_window": 21}
    image = _random_image(40, 40, 1)
    torch.manual_seed(0)
    assert np.array_equal(np.asarray(explainkit.perturb(image, "hue")),
                          np.asarray(ColorJitter(hue=[0.1, 0.1])(image)))


def _reference_sine_warp(arr: np.ndarray, amplitude: float, w: float) -> np.ndarray:
    """The reference loop, written out: roll each row, then each column of the result."""
    out = arr.copy()
    for i in range(out.shape[0]):
        out[i] = np.roll(out[i], int(amplitude * np.sin(np.pi * w * i)), axis=0)
    for j in range(out.shape[1]):
        out[:, j] = np.roll(out[:, j], int(amplitude * np.sin(np.pi * w * j)), axis=0)
    return out


@pytest.mark.parametrize(("size", "amplitude", "w"), [((64, 64), 4, 0.05), ((45, 80), 4, 0.05),
                                                      ((50, 33), 7.5, 0.11), ((30, 30), -3, 0.2)])
def test_sine_warp_matches_an_independent_loop_implementation(size, amplitude, w):
    image = _random_image(*size, seed=7)
    ours = explainkit.perturb(image, "shape", amplitude=amplitude, w=w)
    expected = _reference_sine_warp(np.asarray(image), amplitude, w)
    assert np.array_equal(np.asarray(ours), expected)


def test_sine_warp_is_a_permutation_of_pixels_with_wrap_around():
    image = _random_image(64, 64, 3)
    warped = np.asarray(explainkit.perturb(image, "shape"))
    original = np.asarray(image)
    assert not np.array_equal(warped, original)
    # every row is a cyclic shift of the row-shifted image, so the multiset of pixel values is kept
    assert sorted(map(tuple, warped.reshape(-1, 3))) == sorted(map(tuple, original.reshape(-1, 3)))
    # closed form of the two passes: out[r, c] = img[r', (c - s(r')) mod W] with r' = (r - s(c)) mod H
    s = [int(4 * np.sin(np.pi * 0.05 * i)) for i in range(64)]
    for r, c in [(0, 0), (5, 17), (63, 10), (31, 63), (40, 40)]:
        src_row = (r - s[c]) % 64
        assert np.array_equal(warped[r, c], original[src_row, (c - s[src_row]) % 64])


def test_texture_is_opencv_nlm_on_the_bgr_array_and_removes_fine_grain():
    rng = np.random.default_rng(0)
    base = np.full((48, 48, 3), (150, 90, 60), np.float32)
    grainy = Image.fromarray(np.clip(base + rng.normal(0, 4, (48, 48, 1)), 0, 255).astype(np.uint8))
    ours = np.asarray(explainkit.perturb(grainy, "texture"))
    bgr = np.ascontiguousarray(np.asarray(grainy)[..., ::-1])
    expected = cv2.fastNlMeansDenoisingColored(bgr, None, 4, 4, 7, 21)[..., ::-1]
    assert np.array_equal(ours, expected)
    assert ours.astype(np.float32).std(axis=(0, 1)).max() < 0.5 * np.asarray(grainy, np.float32).std(axis=(0, 1)).min()
    flat = Image.new("RGB", (32, 32), (10, 200, 30))  # nothing to remove: only the Lab round trip's rounding
    diff = np.abs(np.asarray(explainkit.perturb(flat, "texture"), np.int16) - np.asarray(flat, np.int16))
    assert diff.max() <= 3


def test_jpeg_emulation_uses_the_reference_codecs():
    image = _random_image(40, 52, 5)
    hue = explainkit.perturb(image, "hue")
    buf = io.BytesIO()
    hue.save(buf, format="JPEG", quality=75)
    expected = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert np.array_equal(np.asarray(explainkit.perturb(image, "hue", jpeg=True)), expected)
    shape = np.asarray(explainkit.perturb(image, "shape"))
    ok, enc = cv2.imencode(".jpg", np.ascontiguousarray(shape[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    expected = np.asarray(Image.open(io.BytesIO(enc.tobytes())).convert("RGB"))
    assert np.array_equal(np.asarray(explainkit.perturb(image, "shape", jpeg=True)), expected)
    assert not np.array_equal(np.asarray(jpeg_roundtrip(image, "pillow", 20)), np.asarray(image))


def test_perturb_leaves_the_input_alone_and_converts_to_rgb():
    image = _random_image(32, 32, 9).convert("RGBA")
    before = np.asarray(image).copy()
    out = explainkit.perturb(image, "saturation")
    assert out.mode == "RGB" and out.size == image.size
    assert np.array_equal(np.asarray(image), before)


@pytest.mark.parametrize(("args", "kwargs", "match"), [
    (("colour",), {}, "unknown characteristic"),
    (("hue",), {"amount": 0.2}, "unknown parameter"),
    (("hue",), {"factor": 0.8}, r"\[-0.5, 0.5\]"),
    (("contrast",), {"factor": -1}, ">= 0"),
    (("texture",), {"template_window": 6}, "odd positive"),
    (("hue",), {"jpeg": True, "jpeg_quality": 0}, "1..100"),
])
def test_bad_perturbation_parameters_raise_config_errors(args, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        explainkit.perturb(Image.new("RGB", (16, 16)), *args, **kwargs)


def test_make_perturbations_validates_up_front():
    perts = make_perturbations(["hue", "texture"], {"hue": {"factor": 0.2}})
    assert [p.name for p in perts] == ["hue", "texture"]
    assert perts[0].describe() == {"characteristic": "hue", "factor": 0.2, "jpeg": False}
    with pytest.raises(ConfigError, match="not analysed"):
        make_perturbations(["hue"], {"shape": {"amplitude": 2}})
    with pytest.raises(ConfigError, match="repeats"):
        make_perturbations(["hue", "hue"])
    with pytest.raises(ConfigError, match="odd"):
        make_perturbations(["texture"], {"texture": {"search_window": 4}})
