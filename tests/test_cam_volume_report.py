"""Volume probe data (.npy, NIfTI), 3-D localisation metrics and the volume report with slice views.

Known ground truth: the synthetic volume world plants one lesion per ``lesion`` volume beside a
bright slab, and :func:`lesion_detector` has hand-set weights whose lesion logit reads only a matched
filter of the lesion. Class-specific maps must find the lesion; EigenCAM (class-agnostic) follows the
slab, and the report must say so.
"""

from __future__ import annotations

import base64
import io
import json
import os

import jsonschema
import numpy as np
import pytest
import torch
from PIL import Image

from explainkit.cam import compute
from explainkit.cam.localisation import chance_levels, localisation_table
from explainkit.cam.metrics import pointing_game
from explainkit.cam.volumes import explain_volumes
from explainkit.data import volumes as vd
from explainkit.data.volumes import VolumeSet, read_volume, read_volume_mask
from explainkit.datasets.volumes import VolumeWorldSpec, generate_volume_world, lesion_detector, write_volume_world
from explainkit.errors import ConfigError, DataError
from explainkit.report import schema_path

SPEC = VolumeWorldSpec(n=12)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_volume_world(SPEC, tmp_path_factory.mktemp("volumes"))


def test_npy_volumes_are_read_safely(tmp_path):
    a = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    np.save(tmp_path / "a.npy", a)
    got = read_volume(tmp_path / "a.npy")
    assert got.shape == (1, 2, 3, 4) and got.dtype == np.float32 and np.array_equal(got[0], a)
    np.save(tmp_path / "c.npy", np.ones((2, 2, 3, 4)))
    assert read_volume(tmp_path / "c.npy").shape == (2, 2, 3, 4)
    np.save(tmp_path / "obj.npy", np.array([{"x": 1}] * 8, dtype=object).reshape(2, 2, 2), allow_pickle=True)
    bad = {"obj.npy": "cannot read", "flat.npy": "3-D", "nan.npy": "NaN", "cplx.npy": "real-valued"}
    np.save(tmp_path / "flat.npy", np.ones((4, 4)))
    np.save(tmp_path / "nan.npy", np.full((2, 2, 2), np.nan))
    np.save(tmp_path / "cplx.npy", np.ones((2, 2, 2), np.complex64))
    for name, msg in bad.items():
        with pytest.raises(DataError, match=msg):
            read_volume(tmp_path / name)
    with pytest.raises(DataError, match="must be one of"):
        read_volume(tmp_path / "a.png")


def test_voxel_limit_is_checked_from_the_header(tmp_path, monkeypatch):
    np.save(tmp_path / "big.npy", np.zeros((4, 4, 4), np.float32))
    monkeypatch.setattr(vd, "MAX_VOXELS", 63)
    with pytest.raises(DataError, match="more than 63"):
        read_volume(tmp_path / "big.npy")


def test_nifti_axes_and_scaling(tmp_path):
    nib = pytest.importorskip("nibabel")
    data = np.random.default_rng(0).integers(0, 100, (4, 5, 6)).astype(np.int16)  # (i, j, k)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_slope_inter(0.5, 1.0)
    nib.save(img, str(tmp_path / "v.nii.gz"))
    got = read_volume(tmp_path / "v.nii.gz")
    assert got.shape == (1, 6, 5, 4)  # (C, D=k, H=j, W=i)
    i, j, k = 3, 1, 5
    assert got[0, k, j, i] == pytest.approx(0.5 * data[i, j, k] + 1.0)


def test_volume_folder_labels_masks_and_symlinks(world, tmp_path):
    data = VolumeSet.from_folder(world)
    volumes, labels, masks = generate_volume_world(SPEC)
    assert len(data) == SPEC.n and data.class_names == ("healthy", "lesion")
    assert np.array_equal(data.labels, labels) and np.array_equal(data.stack(), volumes)
    assert data.mask_names() == ["lesion"]
    assert data.mask(0, "lesion", volumes.shape[2:]) is None
    assert np.array_equal(data.mask(1, "lesion", volumes.shape[2:]), masks[1])
    with pytest.raises(DataError, match="does not match"):
        read_volume_mask(world / "masks" / "lesion" / data.ids[1], (3, 3, 3))
    outside = tmp_path / "outside.npy"
    np.save(outside, np.ones((2, 2, 2)))
    folder = tmp_path / "f"
    folder.mkdir()
    os.symlink(outside, folder / "x.npy")
    with pytest.raises(DataError, match="outside the probe folder"):
        VolumeSet.from_folder(folder)


def test_pointing_game_and_chance_in_3d_closed_form():
    maps = np.zeros((2, 5, 5, 5))
    maps[0, 2, 2, 3] = 3.0  # peak one voxel from the mask voxel
    maps[0, 0, 0, 0] = 1.0
    maps[1, 4, 4, 4] = 1.0  # peak far away
    mask = np.zeros((5, 5, 5), bool)
    mask[2, 2, 2] = True
    got = pointing_game(maps, [mask, mask], tolerance=1.0)
    assert got["hit"].tolist() == [1.0, 0.0]
    assert got["energy"].tolist() == [0.0, 0.0]
    hit, energy = chance_levels([mask, None], tolerance=1.0)
    assert hit[0] == pytest.approx(7 / 125) and energy[0] == pytest.approx(1 / 125) and np.isnan(hit[1])


def test_class_maps_find_the_planted_lesion_and_eigencam_does_not():
    volumes, labels, masks = generate_volume_world(VolumeWorldSpec(n=24))
    net = lesion_detector()
    with torch.no_grad():
        assert torch.equal(net(torch.from_numpy(volumes)).argmax(1), torch.from_numpy(labels))
    idx = np.nonzero(labels)[0]
    res = compute(net, torch.from_numpy(volumes[idx]), methods=["gradcam", "hirescam", "eigencam"], layer="1",
                  targets=1)
    rows = {r["method"]: r for r in localisation_table(res.maps, {"lesion": [masks[i] for i in idx]},
                                                        tolerance=2, n_resamples=500)}
    assert rows["gradcam"]["localises"] and rows["hirescam"]["localises"]
    assert rows["gradcam"]["hit_rate"]["value"] == 1.0 and rows["gradcam"]["hit_rate"]["n"] == 12
    assert rows["eigencam"]["verdict"] == "fails" and rows["eigencam"]["hit_rate"]["value"] == 0.0
    assert rows["eigencam"]["energy"]["value"] < rows["eigencam"]["chance_energy"]


def test_volume_report_has_slice_views_and_names_failing_methods(world, tmp_path):
    report = explain_volumes(lesion_detector(SPEC), world, methods=["gradcam", "eigencam"], layer="1", targets=1,
                             examples=1, n_resamples=200, out=tmp_path / "out")
    section = report.section("cam_volumes")
    verdicts = {(r["method"], r["label"]): r["verdict"] for r in section["data"]["localisation"]}
    assert verdicts == {("gradcam", "lesion"): "localises", ("eigencam", "lesion"): "fails"}
    assert section["summary"]["fail_to_localise"] == "eigencam (lesion)"
    assert [f["message"].split(" ")[0] for f in report.findings] == ["eigencam"]
    views = section["data"]["examples"][0]["views"]
    assert [(v["method"], v["plane"]) for v in views] == [
        (m, p) for m in ("gradcam", "eigencam") for p in ("axial", "coronal", "sagittal")]
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    jsonschema.validate(doc, json.loads(open(schema_path()).read()))
    assert doc["provenance"]["data"]["n_volumes"] == SPEC.n
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count('alt="gradcam axial slice of vol_0001.npy"') == 1 and "does not localise" in html
    uri = report.to_dict()["assets"][f"cam_volumes:{views[0]['asset']}"]
    img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert img.size == (128, 128)


def test_volume_report_splits_per_volume_targets_and_refuses_bad_ones(world, tmp_path):
    data = VolumeSet.from_folder(world)
    per_volume = [1] * len(data)
    one = explain_volumes(lesion_detector(SPEC), data, methods=["gradcam"], layer="1", targets=per_volume,
                          examples=0, batch_size=5, n_resamples=100)
    same = explain_volumes(lesion_detector(SPEC), data, methods=["gradcam"], layer="1", targets=1,
                           examples=0, batch_size=12, n_resamples=100)
    assert one.section("cam_volumes")["data"]["localisation"] == same.section("cam_volumes")["data"]["localisation"]
    with pytest.raises(ConfigError, match="3 targets for 12 volumes"):
        explain_volumes(lesion_detector(SPEC), data, methods=["gradcam"], layer="1", targets=[1, 1, 1])
    with pytest.raises(ConfigError, match="do not run on volumes"):
        explain_volumes(lesion_detector(SPEC), data, methods=["saliency"])
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    np.save(mixed / "a.npy", np.zeros((4, 4, 4), np.float32))
    np.save(mixed / "b.npy", np.zeros((4, 4, 6), np.float32))
    with pytest.raises(DataError, match="different shapes"):
        explain_volumes(lesion_detector(SPEC), mixed, methods=["gradcam"], layer="1", batch_size=1)
