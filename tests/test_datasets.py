"""Probe sets (layouts, tables, masks, skipping) and the synthetic world."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from explainkit.data.probe import ProbeSet
from explainkit.datasets.synthetic import WorldSpec, generate_world, stamp_template, write_world
from explainkit.errors import ConfigError, DataError


def test_world_layout_and_ground_truth(small_world):
    probe = ProbeSet.from_folder(small_world)
    meta = json.loads((small_world / "world.json").read_text())
    assert len(probe) == 120 and probe.class_names == ("circle", "square", "triangle")
    assert probe.artifact_concepts == ("stamp",)
    by_id = {s["id"]: s for s in meta["samples"]}
    for i, sid in enumerate(probe.ids):
        sample = by_id[sid]
        row = dict(zip(probe.concept_names, probe.concepts[i]))
        assert row[sample["shape"]] and row[sample["colour"]] and row[sample["texture"]]
        assert row["stamp"] == sample["stamp"]
        assert probe.class_names[probe.labels[i]] == sample["shape"]
        mask = probe.mask(i, "stamp")
        assert (mask is not None) == sample["stamp"]
        if mask is not None:
            assert 20 <= mask.sum() <= 12 * 12
    assert probe.concepts.sum(1).tolist() == [4 + int(r[-1]) for r in probe.concepts]
    assert set(probe.mask_names()) == {"object", "stamp"}


def test_world_is_deterministic_and_stable_under_size():
    a = generate_world(WorldSpec(n_images=9, seed=5, artifact="stamp"))
    b = generate_world(WorldSpec(n_images=12, seed=5, artifact="stamp"))
    for x, y in zip(a.images, b.images[:9]):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    c = generate_world(WorldSpec(n_images=9, seed=6, artifact="stamp"))
    assert not np.array_equal(np.asarray(a.images[0]), np.asarray(c.images[0]))


def test_artifact_rate_is_planted():
    w = generate_world(WorldSpec(n_images=600, artifact="stamp", artifact_rate=0.9, artifact_other_rate=0.05))
    stamp = w.concepts[:, -1]
    assert abs(stamp[w.labels == 0].mean() - 0.9) < 0.06
    assert stamp[w.labels != 0].mean() < 0.1


def test_class_factors_decide_the_label():
    for factor, key in (("colour", "colour"), ("texture", "texture"), ("shape", "shape")):
        w = generate_world(WorldSpec(n_images=30, class_factor=factor))
        assert [f[key] for f in w.factors] == [w.spec.class_names[c] for c in w.labels]


def test_spec_validation(tmp_path):
    with pytest.raises(ConfigError):
        WorldSpec(class_factor="size").validate()
    with pytest.raises(ConfigError):
        WorldSpec(colours=("red", "red")).validate()
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("")
    with pytest.raises(ConfigError, match="not empty"):
        write_world(WorldSpec(n_images=3), tmp_path / "x")
    assert stamp_template(64).size == (12, 12) and stamp_template(64).mode == "RGBA"


def _flat(tmp_path, small_world, labels: str | None) -> ProbeSet:
    d = tmp_path / "flat"
    d.mkdir()
    srcs = sorted((small_world / "circle").iterdir())[:2] + sorted((small_world / "square").iterdir())[:1]
    for k, s in enumerate(srcs):
        shutil.copy(s, d / f"{k}.png")
    if labels is not None:
        (d / "labels.csv").write_text(labels)
    return d


def test_flat_folder_with_labels_and_class_order(tmp_path, small_world):
    d = _flat(tmp_path, small_world, "path,label\n0.png,zebra\n1.png,ant\n./2.png,zebra\n")
    p = ProbeSet.from_folder(d)
    assert p.class_names == ("ant", "zebra") and p.labels.tolist() == [1, 0, 1]
    (d / "classes.txt").write_text("zebra\nant\n")
    assert ProbeSet.from_folder(d).labels.tolist() == [0, 1, 0]


def test_unlabelled_flat_folder(tmp_path, small_world):
    p = ProbeSet.from_folder(_flat(tmp_path, small_world, None))
    assert not p.has_labels and p.class_names is None and p.concepts is None


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ("path,label\n0.png,a\n0.png,b\n", "labels.csv row 3 \\(0.png\\): duplicate path"),
        ("path,label\n../0.png,a\n", "must be relative"),
        ("path,label\n9.png,a\n", "9.png\\): image file not found"),
        ("path,label\n0.png,\n", "empty label"),
    ],
)
def test_label_rows_are_validated(tmp_path, small_world, labels, message):
    d = _flat(tmp_path, small_world, labels)
    with pytest.raises(DataError, match=message):
        ProbeSet.from_folder(d)


def test_skip_bad_counts_rows(tmp_path, small_world):
    d = tmp_path / "w"
    shutil.copytree(small_world, d)
    victim = sorted((d / "square").iterdir())[0]
    victim.write_bytes(b"not an image")
    text = (d / "concepts.csv").read_text().splitlines()
    text[5] = text[5].rsplit(",", 1)[0] + ",x"
    (d / "concepts.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match="unreadable image"):
        ProbeSet.from_folder(d)
    p = ProbeSet.from_folder(d, skip_bad=True)
    assert len(p) == 118 and len(p.skipped) == 2
    reasons = sorted(b.reason.split(" (")[0] for b in p.skipped)
    assert reasons[0].startswith("non-binary") and reasons[1] == "unreadable image"
    assert p.describe()["skipped"][0]["reason"]


def test_npy_concepts_with_descriptions(tmp_path, small_world):
    d = tmp_path / "w"
    shutil.copytree(small_world, d)
    ref = ProbeSet.from_folder(d)
    (d / "concepts.csv").unlink()
    np.save(d / "concepts.npy", ref.concepts.astype(np.uint8))
    p = ProbeSet.from_folder(d)
    assert np.array_equal(p.concepts, ref.concepts) and p.concept_names == ref.concept_names
    np.save(d / "concepts.npy", ref.concepts[:5])
    with pytest.raises(DataError, match="sorted path order"):
        ProbeSet.from_folder(d)


def test_manifest_hash_tracks_content(tmp_path, small_world):
    d = tmp_path / "w"
    shutil.copytree(small_world, d)
    h1 = ProbeSet.from_folder(d).manifest_hash()
    assert ProbeSet.from_folder(d).manifest_hash() == h1
    img = sorted((d / "circle").iterdir())[0]
    im = np.asarray(Image.open(img)).copy()
    im[0, 0, 0] ^= 1
    Image.fromarray(im).save(img)
    assert ProbeSet.from_folder(d).manifest_hash() != h1


def test_subset_and_batches(small_world):
    p = ProbeSet.from_folder(small_world)
    s = p.subset([5, 1, 7])
    assert s.ids == [p.ids[5], p.ids[1], p.ids[7]] and np.array_equal(s.concepts[1], p.concepts[1])
    chunks = list(s.iter_batches(2))
    assert [c[0].tolist() for c in chunks] == [[0, 1], [2]] and chunks[0][1][0].mode == "RGB"
