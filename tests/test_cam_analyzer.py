"""The gradcam and captum analyzers end to end on the stamped world and the demo model."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
import torch

import explainkit
from explainkit.cam.api import compute
from explainkit.cam.localisation import localisation_table
from explainkit.errors import CapabilityError, ConfigError
from explainkit.report import schema_path

CHEAP = {"metric_images": 10, "road_images": 3, "steps": 5, "n_random": 10, "sanity_images": 6, "sanity_steps": 2,
         "n_examples": 4, "n_resamples": 200}


@pytest.fixture(scope="module")
def probe(small_world):
    return explainkit.ProbeSet.from_folder(small_world).subset(np.arange(0, 120, 2))


@pytest.fixture(scope="module")
def report(probe, demo_model_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("gradcam")
    handle = explainkit.load_model(demo_model_path)
    spec = ("gradcam", {**CHEAP, "methods": ["gradcam", "gradcampp", "eigencam", "layercam"]})
    explainkit.analyze(handle, probe, [spec], out=out, progress=False, batch_size=32)
    return out


def test_section_is_valid_and_complete(report, probe):
    doc = json.loads((report / "report.json").read_text())
    jsonschema.validate(doc, json.loads(open(schema_path()).read()))
    sec = next(s for s in doc["sections"] if s["analyzer"] == "gradcam")
    data = sec["data"]
    assert data["layer"] == "features" and data["masks"] == ["object", "stamp"] and data["artifact_masks"] == ["stamp"]
    assert [m["name"] for m in data["methods"]] == ["gradcam", "gradcampp", "eigencam", "layercam"]
    for m in data["methods"]:
        for key in ("deletion", "insertion", "faithfulness", "average_drop", "increase"):
            assert m[key]["n"] == 10 and m[key]["ci_low"] <= m[key]["value"] <= m[key]["ci_high"]
        assert m["road_combined"]["n"] == 3
        assert m["vs_random"]["n_random"] == 10 and m["vs_random"]["correction"] == "Holm over 4 methods"
        assert 0 <= m["vs_random"]["p"] <= m["vs_random"]["p_holm"] <= 1
        assert m["sanity"]["verdict"] in ("PASS", "FAIL", "INCONCLUSIVE")
        assert m["pointing"]["stamp"]["hit_rate"]["ci_method"] == "Wilson"
    per, sample = data["per_image"], data["sample_metrics"]
    assert len(per["ids"]) == len(probe) == len(per["pointing"]["stamp"]["gradcam"]) == 60
    assert len(sample["ids"]) == len(sample["metrics"]["gradcam"]["deletion"]) == 10
    assert data["sampling"]["metrics"]["n"] == 10 and data["sampling"]["road"]["n"] == 3
    assert len(data["examples"]) == 4 and sum(bool(e["artifacts"]) for e in data["examples"]) == 2
    assert sec["summary"]["methods"] == 4


def test_heatmaps_land_on_the_stamp(report, probe):
    """The demo model learned the stamp shortcut: its maps peak on the stamp whenever there is one."""
    doc = json.loads((report / "report.json").read_text())
    sec = next(s for s in doc["sections"] if s["analyzer"] == "gradcam")
    n_stamped = int(probe.concepts[:, probe.concept_index("stamp")].sum())
    for m in sec["data"]["methods"]:
        if m["name"] == "eigencam":
            continue
        hit = m["pointing"]["stamp"]["hit_rate"]
        assert hit["n"] == n_stamped and hit["value"] > 0.9, (m["name"], hit)
        assert m["pointing"]["stamp"]["energy"]["value"] > 0.25  # the stamp covers about 3 % of the image
    assert any("peaks on the artifact 'stamp'" in f["message"] for f in doc["findings"])


def test_html_shows_overlays_side_by_side(report):
    page = (report / "report.html").read_text()
    assert page.count('alt="gradcampp on ') == 4 and "data:image/jpeg;base64," in page
    assert "Sanity check: weight randomisation" in page and "vs random maps" in page


def test_localisation_table_on_images_equals_the_library(report, probe, demo_model_path):
    """2-D: the table covers the object mask (the stamp is an artifact: no verdict) and its numbers are
    the library's on maps computed directly (no runner, no shared pass)."""
    doc = json.loads((report / "report.json").read_text())
    table = next(s for s in doc["sections"] if s["analyzer"] == "gradcam")["data"]["localisation"]
    assert table["excluded"] == ["stamp"] and table["min_hit_rate"] == 0.5
    handle = explainkit.load_model(demo_model_path)
    prep = handle.require_preprocessing()
    methods = ["gradcam", "gradcampp", "eigencam", "layercam"]
    x = handle.preprocess([probe.load_image(i) for i in range(len(probe))])
    maps = compute(handle, x, methods=methods, layer="features").maps
    masks = [None if (m := probe.mask(i, "object")) is None else prep.resize_mask(m) for i in range(len(probe))]
    want = localisation_table(maps, {"object": masks}, n_resamples=table["n_resamples"], seed=table["seed"])
    assert [(r["method"], r["label"]) for r in table["rows"]] == [(m, "object") for m in methods]
    for got, exp in zip(table["rows"], want):
        assert got["hit_rate"] == exp["hit_rate"] and got["verdict"] == exp["verdict"]
        assert got["energy"]["value"] == pytest.approx(exp["energy"]["value"], abs=1e-6)
        assert got["chance_hit_rate"] == pytest.approx(exp["chance_hit_rate"], abs=1e-12)
        assert got["verdict"] in ("localises", "fails", "inconclusive")
    page = (report / "report.html").read_text()
    assert "Localisation of the true source" in page


def test_results_do_not_depend_on_batching(probe, demo_model_path):
    handle = explainkit.load_model(demo_model_path)
    sub = probe.subset(np.arange(0, 60, 4))
    spec = ("gradcam", {**CHEAP, "metric_images": 6, "methods": ["gradcam", "layercam"], "sanity": False})
    a = explainkit.analyze(handle, sub, [spec], batch_size=7, progress=False).section("gradcam")
    b = explainkit.analyze(handle, sub, [spec], batch_size=20, progress=False).section("gradcam")
    for key in ("per_image", "sample_metrics"):
        assert a["data"][key] == b["data"][key] or _close(a["data"][key], b["data"][key])
    assert [m["vs_random"]["p"] for m in a["data"]["methods"]] == pytest.approx(
        [m["vs_random"]["p"] for m in b["data"]["methods"]], rel=1e-6)


def _close(x, y):
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(_close(x[k], y[k]) for k in x)
    if isinstance(x, list):
        return len(x) == len(y) and all(_close(u, v) for u, v in zip(x, y))
    if isinstance(x, float) and isinstance(y, float):
        return abs(x - y) <= 1e-5
    return x == y


def test_captum_explains_torchscript_models(probe, demo_model_path, tmp_path):
    handle = explainkit.load_model(demo_model_path)
    scripted = explainkit.wrap(torch.jit.script(handle.module.eval()), input_size=64, mean="0.5,0.5,0.5",
                               std="0.5,0.5,0.5", class_names=list(handle.class_names))
    sub = probe.subset(np.arange(0, 60, 3))
    with pytest.raises(CapabilityError, match="gradcam"):
        explainkit.analyze(scripted, sub, ["gradcam"], progress=False)
    spec = ("captum", {**CHEAP, "methods": ["saliency", "occlusion"], "sanity_images": 4,
                       "method_params": {"occlusion": {"window": 16}}})
    rep = explainkit.analyze(scripted, sub, [spec], out=tmp_path, progress=False)
    sec = rep.section("captum")
    assert [m["name"] for m in sec["data"]["methods"]] == ["saliency", "occlusion"]
    assert all(m["grid"] == [64, 64] for m in sec["data"]["methods"])
    assert all(m["sanity"]["verdict"] in ("PASS", "FAIL", "INCONCLUSIVE") for m in sec["data"]["methods"])
    occ = sec["data"]["methods"][1]["pointing"]["stamp"]["hit_rate"]
    assert occ["value"] > 0.8
    assert "Input attributions (captum)" in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize(("params", "message"), [
    ({"n_random": 1}, "n_random must be 0"),
    ({"road_levels": (0.5, 1.0)}, "road_levels"),
    ({"methods": ["nope"]}, r"methods\[0\] must be one of 'gradcam'"),
    ({"method_params": {"gradcampp": {"bogus": 1}}, "methods": ["gradcampp"]}, "no parameter bogus"),
    ({"target": "other"}, "target must be"),
    ({"steps": 0}, "gradcam: steps must be >= 1, not 0"),
    ({"steps": 0, "target": "other"}, "target must be one of 'predicted', 'label', not 'other'; steps must be >= 1"),
    ({"methods": "gradcam"}, "methods must be a list"),
    ({"method_params": {"gradcampp": {"variant": "x"}}, "methods": ["gradcampp"]},
     "method 'gradcampp': variant must be one of 'paper', 'torchcam', not 'x'"),
    ({"layer": "features.9"}, "no layer named"),
])
def test_bad_parameters_fail_before_running(params, message, probe, demo_model_path):
    handle = explainkit.load_model(demo_model_path)
    with pytest.raises(ConfigError, match=message):
        explainkit.analyze(handle, probe, [("gradcam", params)], progress=False)
