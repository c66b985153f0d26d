"""``explainkit analyze`` on volumes, end to end through the command line (issue 13, items 5 and 6).

The synthetic lesion world (:mod:`explainkit.datasets.volumes`) with its hand-set lesion detector is
written as a folder of ``.npy`` volumes with ``labels.csv`` and lesion masks, the detector as a
safetensors file; the command line must recognise the model as volumetric, run the analyzers that
read volumes (performance, gradcam with the 3-D methods), leave out the image-only ones with a
stated reason, and put the localisation table and slice views in the gradcam section.

The table is checked against a second computation path: the maps computed directly with
:func:`explainkit.cam.compute` (no runner, no shared pass) and
:func:`explainkit.cam.localisation.localisation_table` on them. The known failure must be flagged:
EigenCAM is class-agnostic and follows the slab (0 of 12 lesions in the previous measurement).
"""

from __future__ import annotations

import json
import warnings

import jsonschema
import numpy as np
import pytest
import torch

from explainkit.analyzers import get_analyzer_class, list_analyzers
from explainkit.cam import compute
from explainkit.cam.localisation import localisation_table
from explainkit.cli.main import main
from explainkit.data.open import open_probe
from explainkit.data.volumes import VolumeSet, read_volume, read_volume_shape
from explainkit.datasets.volumes import VolumeWorldSpec, generate_volume_world, lesion_detector, write_volume_world
from explainkit.loading.save import save_model
from explainkit.report import schema_path

SPEC = VolumeWorldSpec(n=24)  # 12 lesion volumes, as in the previous measurement
ARCH = "explainkit.datasets.volumes:lesion_detector"
METHODS = ["gradcam", "hirescam", "eigencam"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze_volumes")
    data = write_volume_world(SPEC, root / "data")
    model = save_model(lesion_detector(SPEC), root / "lesion.safetensors", arch=ARCH,
                       class_names=["healthy", "lesion"])
    (root / "cfg.toml").write_text(f"[analyzer.gradcam]\nmethods = {json.dumps(METHODS)}\nn_resamples = 500\n"
                                   "sanity_images = 6\n[analyzer.performance]\nn_resamples = 200\n")
    out = root / "out"
    code = main(["analyze", str(model), "--data", str(data), "--arch", ARCH, "--config", str(root / "cfg.toml"),
                 "--out", str(out), "--fail-on", "warning", "--no-progress"])
    return code, data, out, json.loads((out / "report.json").read_text())


def _gradcam(doc):
    return next(s for s in doc["sections"] if s["analyzer"] == "gradcam")


def test_volume_model_runs_the_volume_analyzers_and_skips_the_rest(run):
    code, _, out, doc = run
    assert code == 1  # --fail-on warning: EigenCAM's failure to localise is a warning
    jsonschema.validate(doc, json.loads(open(schema_path()).read()))
    assert [s["analyzer"] for s in doc["sections"]] == ["gradcam", "performance"]
    skipped = {f["analyzer"]: f["message"] for f in doc["findings"] if f["severity"] == "info"}
    image_only = [n for n in list_analyzers() if get_analyzer_class(n).run_by_default
                  and "volumes" not in get_analyzer_class(n).inputs]
    assert {"captum", "invert", "prototypes"} <= set(image_only)
    assert skipped == {n: f"{n} skipped: it reads images, and these probe data are volumes" for n in image_only}
    model = doc["provenance"]["model"]
    assert model["preprocessing"]["kind"] == "volume" and model["preprocessing"]["input_size"] == [16, 16, 16]
    assert model["load_notes"]["input"]["evidence"]["decided"] == "volumes"
    assert doc["provenance"]["data"]["n_volumes"] == SPEC.n
    perf = next(s for s in doc["sections"] if s["analyzer"] == "performance")
    assert perf["data"]["accuracy"]["value"] == 1.0 and perf["data"]["accuracy"]["n"] == SPEC.n
    g = _gradcam(doc)
    assert g["data"]["not_measured"] and g["summary"]["metric_images"] == 0
    assert all(m["faithfulness"]["n"] == 0 for m in g["data"]["methods"])
    assert {m["name"]: m["sanity"]["verdict"] for m in g["data"]["methods"]}["eigencam"] == "FAIL"
    html = (out / "report.html").read_text()
    assert "Traceback" not in html and "Localisation of the true source" in html
    example = g["data"]["examples"][0]
    assert [(v["method"], v["plane"]) for v in example["views"]] == [
        (m, p) for m in METHODS for p in ("axial", "coronal", "sagittal")]
    assert html.count(f'alt="gradcam axial slice of {example["id"]}"') == 1


def test_localisation_table_equals_the_library_on_directly_computed_maps(run):
    _, data, _, doc = run
    table = _gradcam(doc)["data"]["localisation"]
    volumes = VolumeSet.from_folder(data)
    x = torch.from_numpy(volumes.stack())
    direct = compute(lesion_detector(SPEC), x, methods=METHODS, layer=_gradcam(doc)["data"]["layer"])
    masks = {"lesion": [volumes.mask(i, "lesion") for i in range(len(volumes))]}
    expected = localisation_table(direct.maps, masks, min_hit_rate=table["min_hit_rate"],
                                  n_resamples=table["n_resamples"], seed=table["seed"])
    assert [(r["method"], r["label"]) for r in table["rows"]] == [(m, "lesion") for m in METHODS]
    for got, want in zip(table["rows"], expected):
        assert got["verdict"] == want["verdict"], got["method"]
        assert got["hit_rate"] == want["hit_rate"]  # the same hits: the Wilson CI is exact
        for key in ("value", "ci_low", "ci_high"):
            assert got["energy"][key] == pytest.approx(want["energy"][key], abs=1e-6)
        assert got["energy"]["n"] == want["energy"]["n"] == 12
        assert got["chance_hit_rate"] == pytest.approx(want["chance_hit_rate"], abs=1e-12)
        assert got["chance_energy"] == pytest.approx(want["chance_energy"], abs=1e-12)


def test_the_known_failure_is_flagged(run):
    _, _, _, doc = run
    g = _gradcam(doc)
    rows = {r["method"]: r for r in g["data"]["localisation"]["rows"]}
    eigen = rows["eigencam"]
    assert eigen["hit_rate"]["value"] == 0.0 and eigen["hit_rate"]["n"] == 12 and eigen["verdict"] == "fails"
    assert eigen["hit_rate"]["ci_high"] < eigen["reference_hit_rate"] == 0.5
    assert rows["gradcam"]["verdict"] == rows["hirescam"]["verdict"] == "localises"
    assert g["summary"]["fail_to_localise"] == "eigencam (lesion)"
    warnings = [f["message"] for f in doc["findings"] if f["severity"] == "warning" and "localise" in f["message"]]
    assert len(warnings) == 1 and warnings[0].startswith("eigencam does not localise lesion: its map peaks on the "
                                                         "mask in 0% of 12 volumes")


def test_volumes_of_one_run_must_have_one_shape(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    np.save(folder / "a.npy", np.zeros((4, 4, 4), np.float32))
    np.save(folder / "b.npy", np.zeros((2, 4, 4, 4), np.float32))
    with pytest.raises(Exception, match=r"b\.npy is \(2, 4, 4, 4\).*a\.npy is \(1, 4, 4, 4\)"):
        VolumeSet.from_folder(folder).sample_shape()


def test_header_shapes_match_the_read_volumes(tmp_path):
    """read_volume_shape (headers only, checked before the first pass) agrees with read_volume for every layout."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.normal(size=(3, 4, 5)).astype(np.float32))
    np.save(tmp_path / "b.npy", rng.normal(size=(2, 3, 4, 5)).astype(np.float32))
    files = ["a.npy", "b.npy"]
    nib = pytest.importorskip("nibabel")
    nib.save(nib.Nifti1Image(rng.normal(size=(5, 4, 3)).astype(np.float32), np.eye(4)), str(tmp_path / "c.nii.gz"))
    nib.save(nib.Nifti1Image(rng.normal(size=(5, 4, 3, 2)).astype(np.float32), np.eye(4)), str(tmp_path / "d.nii"))
    files += ["c.nii.gz", "d.nii"]
    for name in files:
        assert read_volume_shape(tmp_path / name) == read_volume(tmp_path / name).shape, name


def test_nifti_volumes_through_analyze(tmp_path):
    """A NIfTI volume folder is recognised by open_probe and runs (performance) through the command line."""
    nib = pytest.importorskip("nibabel")
    data = tmp_path / "nii"
    volumes, _, _ = generate_volume_world(VolumeWorldSpec(n=4, size=12))
    data.mkdir()
    for i, vol in enumerate(volumes):  # (1, D, H, W) -> NIfTI voxel axes (i, j, k) = (W, H, D)
        nib.save(nib.Nifti1Image(vol[0].transpose(2, 1, 0), np.eye(4)), str(data / f"v{i}.nii.gz"))
    (data / "labels.csv").write_text("path,label\n" + "".join(f"v{i}.nii.gz,{('healthy', 'lesion')[i % 2]}\n"
                                                            for i in range(4)))
    assert isinstance(open_probe(data), VolumeSet)
    assert np.array_equal(VolumeSet.from_folder(data).stack(), volumes)
    model = save_model(lesion_detector(), tmp_path / "m.safetensors", arch=ARCH, class_names=["healthy", "lesion"])
    out = tmp_path / "out"
    assert main(["analyze", str(model), "--data", str(data), "--arch", ARCH, "--analyzer",
                 "performance:n_resamples=100", "--out", str(out), "--no-progress"]) == 0
    doc = json.loads((out / "report.json").read_text())
    assert doc["provenance"]["data"]["n_volumes"] == 4 and doc["sections"][0]["data"]["accuracy"]["n"] == 4


def test_input_kind_evidence_from_layers():
    """3-D layers mean volumes, 2-D layers images, both or none decide nothing (the first forward pass does)."""
    from torch import nn

    from explainkit.adapters.input_kind import input_evidence
    from explainkit.models import TinyCNN

    vol = input_evidence(lesion_detector())
    assert (vol.kind, vol.volume_layers, vol.first_channels) == ("volumes", ("0", "2"), 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
        scripted = torch.jit.script(lesion_detector())
    assert input_evidence(scripted).kind == "volumes"  # TorchScript: by the original class name
    assert input_evidence(TinyCNN(3)).kind == "images"
    assert input_evidence(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv3d(2, 2, 1))).kind is None
    assert input_evidence(nn.Sequential(nn.Flatten(), nn.Linear(8, 2))).kind is None
