"""ProbeSet: segmentation label maps and multi-hot labels (layouts, values, strictness, containment)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from explainkit.data.probe import LABEL_IGNORE, ProbeSet
from explainkit.errors import DataError


def _seg_folder(root, n=3, size=(8, 6), classes=("background", "disc", "bar"), mode="L"):
    """``n`` images of ``size`` (W, H) with label maps; returns the label maps written."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    rng = np.random.default_rng(0)
    maps = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(root / f"im{i}.png")
        lab = rng.integers(0, len(classes), (size[1], size[0])).astype(np.uint8)
        lab[0, 0] = LABEL_IGNORE
        im = Image.fromarray(lab)
        if mode == "P":
            im = im.convert("P")  # the palette image keeps the indices
            im.putpalette([v for k in range(256) for v in (k, 255 - k, 0)])
        im.save(root / "labels" / f"im{i}.png")
        maps.append(lab.astype(np.int64))
    return maps


@pytest.mark.parametrize("mode", ["L", "P"])
def test_label_maps_read_as_stored(tmp_path, mode):
    maps = _seg_folder(tmp_path / "seg", mode=mode)
    ps = ProbeSet.from_folder(tmp_path / "seg")
    assert ps.task == "segmentation" and ps.has_label_maps and not ps.has_labels
    assert ps.class_names == ("background", "disc", "bar")
    for i, want in enumerate(maps):
        got = ps.label_map(i)
        assert got.dtype == np.int64 and got.shape == (6, 8)
        np.testing.assert_array_equal(got, want)
    sub = ps.subset([2, 0])
    assert sub.has_label_maps and sub.ids == ["im2.png", "im0.png"]
    np.testing.assert_array_equal(sub.label_map(0), maps[2])
    assert ps.describe()["task"] == "segmentation"
    # the manifest depends on the label maps
    before = ps.manifest_hash()
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(tmp_path / "seg" / "labels" / "im1.png")
    assert ProbeSet.from_folder(tmp_path / "seg").manifest_hash() != before


def test_label_map_16bit(tmp_path):
    _seg_folder(tmp_path / "seg")
    lab = np.full((6, 8), 2, np.uint16)
    lab[1, 1] = LABEL_IGNORE
    Image.fromarray(lab).save(tmp_path / "seg" / "labels" / "im0.png")
    np.testing.assert_array_equal(ProbeSet.from_folder(tmp_path / "seg").label_map(0), lab.astype(np.int64))


@pytest.mark.parametrize(("damage", "match"), [
    (lambda r: Image.fromarray(np.zeros((5, 8), np.uint8)).save(r / "labels" / "im1.png"),
     r"labels/im1.png is 8x5 but its image im1.png is 8x6"),
    (lambda r: Image.fromarray(np.full((6, 8), 3, np.uint8)).save(r / "labels" / "im1.png"),
     r"labels/im1.png holds value 3 \(at 48 pixel\(s\)\); classes.txt lists 3 classes.*0..2 or 255"),
    (lambda r: Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(r / "labels" / "im1.png"),
     r"labels/im1.png is a RGB image"),
    (lambda r: (r / "labels" / "im1.png").unlink(), r"image im1.png has no label map labels/im1.png"),
    (lambda r: (r / "labels" / "im1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20), r"cannot read label map"),
    (lambda r: (r / "classes.txt").unlink(), r"label maps \(labels/\) need classes.txt"),
    (lambda r: (r / "classes.txt").write_text("a\nb\na\n"), r"classes.txt lists class\(es\) twice: a"),
    (lambda r: (r / "labels.csv").write_text("path,label\nim0.png,a\n"), r"both label maps .* and labels.csv"),
    (lambda r: (r / "sub").mkdir(), r"need the images at the top"),
])
def test_bad_label_maps(tmp_path, damage, match):
    root = tmp_path / "seg"
    _seg_folder(root)
    damage(root)
    with pytest.raises(DataError, match=match):
        ProbeSet.from_folder(root)


def test_bad_label_map_skipped(tmp_path):
    root = tmp_path / "seg"
    _seg_folder(root)
    Image.fromarray(np.full((6, 8), 7, np.uint8)).save(root / "labels" / "im1.png")
    ps = ProbeSet.from_folder(root, skip_bad=True)
    assert ps.ids == ["im0.png", "im2.png"] and len(ps.label_map_digests) == 2
    assert [b.path for b in ps.skipped] == ["im1.png"]


def test_label_map_symlinks(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(outside / "secret.png")
    root = tmp_path / "seg"
    _seg_folder(root)
    (root / "labels" / "im1.png").unlink()
    (root / "labels" / "im1.png").symlink_to(outside / "secret.png")
    with pytest.raises(DataError, match=r"labels/im1.png resolves outside the probe folder.*--follow-symlinks"):
        ProbeSet.from_folder(root)
    assert ProbeSet.from_folder(root, follow_symlinks=True).label_map(1).sum() == 0
    # the whole folder linked out
    root2 = tmp_path / "seg2"
    _seg_folder(root2)
    (outside / "labels").mkdir()
    for f in (root2 / "labels").iterdir():
        f.rename(outside / "labels" / f.name)
    (root2 / "labels").rmdir()
    (root2 / "labels").symlink_to(outside / "labels")
    with pytest.raises(DataError, match=r"^labels resolves outside the probe folder"):
        ProbeSet.from_folder(root2)


def _multi_folder(root, rows: str):
    root.mkdir(parents=True, exist_ok=True)
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (8, 8), (10, 20, 30)).save(root / name)
    (root / "labels.csv").write_text(rows)


def test_multihot_labels(tmp_path):
    _multi_folder(tmp_path / "m", "path,cat,dog,car\nb.png,0,1,1\na.png,1,0,0\nc.png,0,0,0\n")
    ps = ProbeSet.from_folder(tmp_path / "m")
    assert ps.task == "multilabel" and not ps.has_labels and not ps.has_label_maps
    assert ps.class_names == ("cat", "dog", "car") and ps.ids == ["a.png", "b.png", "c.png"]
    np.testing.assert_array_equal(ps.multilabels, [[1, 0, 0], [0, 1, 1], [0, 0, 0]])
    assert ps.multilabels.dtype == bool
    np.testing.assert_array_equal(ps.subset([1]).multilabels, [[0, 1, 1]])
    assert ps.describe()["task"] == "multilabel"
    # the single-label header still means class names
    _multi_folder(tmp_path / "s", "path,label\na.png,cat\nb.png,dog\nc.png,cat\n")
    assert ProbeSet.from_folder(tmp_path / "s").task == "classification"
    assert "task" not in ProbeSet.from_folder(tmp_path / "s").describe()


@pytest.mark.parametrize(("rows", "match"), [
    ("path,cat,dog\na.png,0,2\nb.png,1,1\n", r"labels.csv row 2 \(a.png\): non-binary value '2' in column 'dog'"),
    ("path,cat,dog\na.png,yes,0\n", r"non-binary value 'yes' in column 'cat'"),
    ("path,cat,dog\na.png,1\n", r"row 2 \(a.png\): expected 3 columns, got 2"),
    ("path,cat,cat\na.png,1,0\n", r"duplicate label column\(s\) cat"),
    ("path,cat,dog\na.png,1,0\na.png,0,1\n", r"row 3 \(a.png\): duplicate path"),
    ("path,cat,dog\n../a.png,1,0\n", r"must be relative to the probe folder"),
    ("path,cat,dog\nzz.png,1,0\n", r"\(zz.png\): image file not found"),
])
def test_bad_multihot_rows(tmp_path, rows, match):
    _multi_folder(tmp_path / "m", rows)
    with pytest.raises(DataError, match=match):
        ProbeSet.from_folder(tmp_path / "m")


def test_multihot_classes_txt_must_agree(tmp_path):
    _multi_folder(tmp_path / "m", "path,cat,dog\na.png,1,0\n")
    (tmp_path / "m" / "classes.txt").write_text("dog\ncat\n")
    with pytest.raises(DataError, match=r"classes.txt does not list the label columns"):
        ProbeSet.from_folder(tmp_path / "m")
    (tmp_path / "m" / "classes.txt").write_text("cat\ndog\n")
    assert ProbeSet.from_folder(tmp_path / "m").class_names == ("cat", "dog")
