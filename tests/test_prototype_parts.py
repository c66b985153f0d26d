"""EvalProtoPNet part consistency / stability: hand-computed cases and planted part-aligned models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from explainkit.datasets.synthetic import PARTS, WorldSpec, generate_world, part_masks, write_world
from explainkit.loading.loaders import wrap
from explainkit.prototypes.adapters import ChannelPrototypes
from explainkit.prototypes.parts import (
    evaluate_parts,
    part_hits,
    part_keypoints,
    part_scores,
    prototype_part_hits,
    region_boxes,
)


def test_part_masks_split_the_object_into_named_quadrants(tmp_path):
    obj = np.zeros((8, 8), bool)
    obj[2:6, 1:7] = True  # bbox centre (4, 4)
    masks = part_masks(obj)
    assert masks.shape == (4, 8, 8)
    assert np.array_equal(masks.sum(axis=0), obj) and masks.sum() == obj.sum()
    assert masks[PARTS.index("upper_left")][2:4, 1:4].all() and masks[PARTS.index("upper_left")].sum() == 6
    assert masks[PARTS.index("lower_right")][4:6, 4:7].all()
    root = write_world(WorldSpec(n_images=6, size=32, parts=True), tmp_path / "w")
    assert sorted(p.name for p in (root / "masks").iterdir()) == sorted(["object", *PARTS])
    assert len(list((root / "masks" / "upper_left").rglob("*.png"))) == 6


def test_keypoints_boxes_and_hits_by_hand():
    masks = np.zeros((1, 2, 10, 10), bool)
    masks[0, 0, 0:2, 0:2] = True  # centroid (0.5, 0.5)
    kp, vis = part_keypoints(masks)
    assert np.allclose(kp[0, 0], [0.5, 0.5]) and vis.tolist() == [[True, False]]
    maps = np.zeros((1, 1, 10, 10), np.float32)
    maps[0, 0, 7, 3] = 1.0  # identity "upsampling" (same size): peak at (7, 3)
    box = region_boxes(maps, (10, 10), half_size=2)
    assert box[0, 0].tolist() == [5, 9, 1, 5]
    assert region_boxes(maps, (10, 10), half_size=3.5)[0, 0].tolist() == [3.5, 10, 0, 6.5]  # clipped, not rounded
    keypoints = np.array([[[6.0, 2.0], [4.9, 3.0], [8.9, 4.9], [9.0, 5.0], [9.0, 5.1]]])
    hits = part_hits(box, keypoints, np.array([[True, True, False, True, True]]))
    # closed box [5, 9] × [1, 5] (the reference's in_bbox); the third part is inside but not visible
    assert hits[0, 0].tolist() == [True, False, False, True, False]


def test_part_scores_hand_computed():
    # 5 images, 2 prototypes of classes 0 and 1, 2 parts; images 0-2 are class 0, 3-4 class 1.
    hits = np.zeros((5, 2, 2), bool)
    hits[[0, 1, 2], 0, 0] = True            # prototype 0: part 0 on 3/3 own images -> consistent
    hits[3, 1, 0] = hits[4, 1, 1] = True    # prototype 1: each part 1/2 -> not consistent
    visible = np.ones((5, 2), bool)
    own = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1]], bool)
    noisy = hits.copy()
    noisy[0, 0, 0] = False                  # prototype 0 changes on 1 of 3 images
    s = part_scores(hits, visible, own, noisy, n_resamples=200)
    assert np.allclose(s.frequency, [[1, 0], [0.5, 0.5]])
    assert s.consistent.tolist() == [True, False] and s.consistency == 0.5
    assert np.allclose(s.prototype_stability, [2 / 3, 1.0]) and np.isclose(s.stability, 5 / 6)
    assert s.consistency_ci[0] < 0.5 < s.consistency_ci[1]
    assert s.stability_ci[0] <= 5 / 6 <= s.stability_ci[1]
    none = part_scores(np.concatenate([hits, hits[:, :1]], axis=1), visible,
                       np.concatenate([own, np.zeros((5, 1), bool)], axis=1))  # a prototype with no own image
    assert none.consistency == 0.5 and none.to_json(["a", "b"])["consistency"]["n"] == 2
    visible[0, 0] = False                   # an invisible part leaves the denominator
    assert np.isclose(part_scores(hits & visible[:, None, :], visible, own).frequency[0, 0], 1.0)


class _PartDetector(nn.Module):
    """Input = part masks (N, K, H, W); channel k is a smooth detector of part k (so it fires on it)."""

    def __init__(self) -> None:
        super().__init__()
        self.blur = nn.AvgPool2d(9, stride=1, padding=4, count_include_pad=False)
        self.pool = nn.AvgPool2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.blur(x))


@pytest.fixture(scope="module")
def world_parts():
    world = generate_world(WorldSpec(n_images=60, size=64, seed=3))
    return torch.from_numpy(world.part_masks.astype(np.float32)), world.labels, world.part_masks


def _scores(x, labels, masks, **kw):
    model = _PartDetector().eval()
    adapter = ChannelPrototypes("pool", channels=range(4))  # 4-channel input: bind() dry-runs RGB
    return evaluate_parts(adapter, model, x, labels, masks, n_resamples=200, **kw)


def test_part_aligned_channels_score_one(world_parts):
    x, labels, masks = world_parts
    s = _scores(x, labels, masks)
    assert s.consistent.all() and s.consistency == 1.0
    assert s.best_part.tolist() == [0, 1, 2, 3]
    assert s.stability > 0.9 and s.consistency_ci[1] == 1.0
    report = s.to_json(PARTS)
    assert report["prototypes"][2]["part"] == "lower_left" and report["consistency"]["n"] == 4


def test_shuffled_prototypes_score_near_chance(world_parts):
    x, labels, masks = world_parts
    g = torch.Generator().manual_seed(0)
    perm = torch.stack([torch.randperm(4, generator=g) for _ in range(x.shape[0])])
    shuffled = torch.gather(x, 1, perm[:, :, None, None].expand_as(x))  # each image: channels fire on random parts
    s = _scores(shuffled, labels, masks, sigma=0.0)
    assert s.consistency == 0.0 and np.isnan(s.stability)
    # chance level, computed apart: a channel firing on a uniformly random part hits part k with probability
    # mean_j P(k in the region of the aligned channel j); the shuffled frequencies sit at that level
    kp, vis = part_keypoints(masks)
    aligned = prototype_part_hits(ChannelPrototypes("pool", channels=range(4)), _PartDetector().eval(), x, kp, vis)
    chance = aligned.mean(axis=(0, 1))
    assert np.abs(s.frequency - chance[None, :]).max() < 0.2 and chance.max() < 0.6


@pytest.fixture(scope="module")
def parts_run(tmp_path_factory):
    """The prototypes analyzer with part scores on a 24-image world written with part masks (light settings)."""
    import explainkit
    from explainkit.models import TinyCNN

    root = write_world(WorldSpec(n_images=24, size=64, parts=True, seed=5), tmp_path_factory.mktemp("pw") / "w")
    torch.manual_seed(0)
    model = TinyCNN(num_classes=3).eval()
    params = {"parts": list(PARTS), "part_noise": 0.0, "characteristics": ["hue"], "calibration": "none",
              "controls": False, "n_resamples": 50, "local_images": 0, "max_shown": 0}
    out = tmp_path_factory.mktemp("parts_out")
    report = explainkit.analyze(model, root, [("prototypes", params)], out=out, seed=0)
    return report, out, root, model


def test_analyzer_part_scores_match_the_library(parts_run, validated_section):
    from explainkit.data.probe import ProbeSet

    _, out, root, model = parts_run
    section = validated_section(out, "prototypes")
    parts = section["data"]["parts"]
    assert section["summary"]["part_consistency"] == parts["consistency"]
    assert parts["stability"]["value"] is None  # part_noise=0 skips stability
    probe = ProbeSet.from_folder(root)
    handle = wrap(model)
    x = handle.preprocess([probe.load_image(i) for i in range(len(probe))])
    masks = np.stack([[probe.mask(i, p) for p in PARTS] for i in range(len(probe))])
    adapter = ChannelPrototypes(section["data"]["adapter"]["layer"]).bind(handle, (64, 64))
    direct = evaluate_parts(adapter, handle, x, probe.labels, masks, sigma=0.0)
    assert parts["consistency"]["value"] == pytest.approx(direct.consistency)
    assert [r["part"] for r in parts["prototypes"]] == [PARTS[k] for k in direct.best_part]
    assert [r["frequency"] for r in parts["prototypes"]] == pytest.approx(
        direct.frequency[np.arange(len(direct.best_part)), direct.best_part], abs=1e-6)
    html = (out / "report.html").read_text()
    assert "Part consistency and stability" in html and "ek-protos-parts" in html


def test_analyzer_refuses_unknown_part_masks(parts_run):
    import explainkit
    from explainkit.errors import ConfigError

    _, _, root, model = parts_run
    with pytest.raises(ConfigError, match="no mask folder"):
        explainkit.analyze(model, root, [("prototypes", {"parts": ["wing"]})], seed=0)


def test_analyzer_stability_is_seeded_per_image(parts_run):
    """With noise on, the part block does not depend on the batch size (per-image seeded noise)."""
    import explainkit

    _, _, root, model = parts_run
    params = {"parts": list(PARTS), "characteristics": ["hue"], "calibration": "none", "controls": False,
              "n_resamples": 50, "local_images": 0, "max_shown": 0}
    a, b = (explainkit.analyze(model, root, [("prototypes", params)], seed=1, batch_size=bs).section("prototypes")
            for bs in (7, 24))
    assert a["data"]["parts"] == b["data"]["parts"]
    st = a["data"]["parts"]["stability"]
    assert 0 <= st["ci_low"] <= st["value"] <= st["ci_high"] <= 1 and st["n"] == 24  # channels: every image


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_planted_part_scores_on_larger_worlds(seed):
    """300 images per seed: aligned detectors score 1 and stay stable; shuffled ones sit at chance."""
    world = generate_world(WorldSpec(n_images=300, size=64, seed=seed))
    masks = world.part_masks
    x = torch.from_numpy(masks.astype(np.float32))
    aligned = _scores(x, world.labels, masks)
    assert aligned.consistency == 1.0 and aligned.stability >= 0.99
    g = torch.Generator().manual_seed(seed)
    perm = torch.stack([torch.randperm(4, generator=g) for _ in range(x.shape[0])])
    shuffled = _scores(torch.gather(x, 1, perm[:, :, None, None].expand_as(x)), world.labels, masks, sigma=0.0)
    kp, vis = part_keypoints(masks)
    chance = prototype_part_hits(ChannelPrototypes("pool", channels=range(4)), _PartDetector().eval(), x, kp,
                                 vis).mean(axis=(0, 1))
    assert shuffled.consistency == 0.0 and np.abs(shuffled.frequency - chance[None, :]).max() < 0.1
