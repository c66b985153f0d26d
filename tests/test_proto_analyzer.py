"""The ``prototypes`` analyzer end to end: default run on the demo model, adapters, report, errors."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
import torch

import explainkit
from explainkit.cli.main import main
from explainkit.data.probe import ProbeSet
from explainkit.errors import ConfigError
from explainkit.hooks import hook_count
from explainkit.models import TinyCNN, TinyProtoPNet
from explainkit.report import schema_path


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory, demo_model_path, small_world):
    """Every default analyzer on the demo model (the channel adapter at the default layer)."""
    out = tmp_path_factory.mktemp("proto_demo")
    handle = explainkit.load_model(demo_model_path)
    report = explainkit.analyze(handle, small_world, out=out, seed=0)
    return report, out, handle


def test_prototypes_runs_by_default_on_the_demo_model(demo_report):
    report, out, handle = demo_report
    doc = json.loads((out / "report.json").read_text())
    schema = json.loads(open(schema_path()).read())
    jsonschema.validate(doc, schema)
    broken = next(s for s in doc["sections"] if s["analyzer"] == "prototypes")
    del broken["summary"]["relies_on"]  # the schema holds the prototypes section to its headline
    with pytest.raises(jsonschema.ValidationError, match="relies_on"):
        jsonschema.validate(doc, schema)
    section = report.section("prototypes")
    data, summary = section["data"], section["summary"]
    assert data["adapter"]["kind"] == "channels" and data["adapter"]["num_prototypes"] == 64
    assert data["weight"] == "clip" and data["readout"] == "fixed"
    assert data["splits"]["train"]["n_images"] + data["splits"]["test"]["n_images"] == 120
    assert min(data["splits"]["train"]["n_images"], data["splits"]["test"]["n_images"]) > 35
    values = [r["value"]["value"] for r in data["ranking"]]
    assert values == sorted(values, reverse=True)
    relies = summary["relies_on"]
    assert relies["status"] in ("ahead", "tie", "none") and relies["statement"] == summary["headline"]
    assert summary["top_characteristic"] == (relies["characteristic"] if relies["status"] == "ahead" else None)
    overall = data["decision"]["overall"]["ranking"]
    assert [r["value"]["value"] for r in overall] == sorted((r["value"]["value"] for r in overall), reverse=True)
    assert relies["status"] == "none" or relies["characteristic"] == overall[0]["characteristic"]
    assert [c["other"] for c in relies["comparisons"]] == [r["characteristic"] for r in overall[1:]]
    assert all(c["p_holm"] >= c["p"] for c in relies["comparisons"])
    assert [k["class_name"] for k in data["decision"]["per_class"]] == ["circle", "square", "triangle"]
    assert set(data["decision"]["per_class"][0]["log_prob_drop"]) == {
        "hue", "shape", "texture", "contrast", "saturation", "saturation (control)"}
    cal = data["calibration"]
    assert cal["method"] == "reinit" and cal["null_models"] == 3 and cal["decision_weights"] == "gradient × activation"
    assert cal["controls"] == [{"characteristic": "contrast", "control": "saturation", "factor": 0.45}]
    assert {r["characteristic"] for r in data["calibrated_ranking"]} == set(cal["null_profile"])
    assert len(data["prototypes"]) == 64 and len(data["shown"]) == 8 and len(data["local_examples"]) == 3
    rec = data["prototypes"][data["shown"][0]]
    assert set(rec["global_train"]) == {"hue", "shape", "texture", "contrast", "saturation"}
    g = rec["global_train"]["shape"]
    assert g["ci_low"] <= g["value"] <= g["ci_high"] and g["unit"] == "activation"
    assert rec["relative_train"]["shape"]["unit"] == "fraction of original similarity"
    assert rec["tests"]["shape"]["q"] >= rec["tests"]["shape"]["p"]
    assert rec["assets"]["patch"] in doc["assets"] or f"prototypes:{rec['assets']['patch']}" in doc["assets"]
    n_assets = sum(1 for k in doc["assets"] if k.startswith("prototypes:"))
    assert n_assets <= 8 * 7 + 3 * 6  # bounded: patch, context and 5 perturbed per shown prototype; 6 per example
    html = (out / "report.html").read_text()
    assert "Prototype meaning" in html and rec["verdict"] in html and "image omitted" not in html
    assert "What the model relies on" in html and "Raw importances (Nauta et al.)" in html
    assert set(rec["calibrated"]) == set(rec["global_train"]) and rec["decision_weight"] >= 0
    assert hook_count(handle.module) == 0


def test_the_demo_prototypes_find_the_planted_stamp(demo_report):
    """The demo model learned a stamp shortcut: its most present channels peak on the stamp."""
    report, _, _ = demo_report
    data = report.section("prototypes")["data"]
    probe = ProbeSet.from_folder(report["provenance"]["data"]["root"])
    on_stamp = 0
    for j in data["shown"]:
        assets = data["prototypes"][j]["assets"]
        mask = probe.mask(probe.ids.index(assets["image"]), "stamp")
        y0, y1, x0, x1 = assets["box"]
        on_stamp += int(mask is not None and mask[y0:y1, x0:x1].any())
    assert on_stamp >= len(data["shown"]) // 2


def test_results_do_not_depend_on_the_batch_size(demo_model_path, small_world):
    probe = ProbeSet.from_folder(small_world).subset(range(0, 120, 4))
    spec = ("prototypes", {"channels": list(range(0, 64, 8)), "local_images": 0, "max_shown": 1})
    a = explainkit.analyze(explainkit.load_model(demo_model_path), probe, [spec], seed=1, batch_size=7)
    b = explainkit.analyze(explainkit.load_model(demo_model_path), probe, [spec], seed=1, batch_size=30)
    ra, rb = (r.section("prototypes")["data"]["prototypes"] for r in (a, b))
    for x, y in zip(ra, rb):
        for c in x["global_test"]:
            assert x["global_test"][c]["value"] == pytest.approx(y["global_test"][c]["value"], rel=1e-5, abs=1e-9)
            assert x["global_test"][c]["ci_low"] == pytest.approx(y["global_test"][c]["ci_low"], rel=1e-5, abs=1e-9)
        for c, t in x["tests"].items():
            assert t["p"] == pytest.approx(y["tests"][c]["p"]) and t["n"] == y["tests"][c]["n"]
    da, db = (r.section("prototypes")["data"] for r in (a, b))
    for key in ("calibrated_ranking",):
        for x, y in zip(da[key], db[key]):
            assert x["characteristic"] == y["characteristic"]
            assert x["value"]["value"] == pytest.approx(y["value"]["value"], rel=1e-4, abs=1e-9)
    for x, y in zip(da["decision"]["overall"]["ranking"], db["decision"]["overall"]["ranking"]):
        assert x["characteristic"] == y["characteristic"]
        assert x["value"]["ci_low"] == pytest.approx(y["value"]["ci_low"], rel=1e-4, abs=1e-9)


def test_a_protopnet_is_read_through_its_prototype_tensor(small_world):
    torch.manual_seed(0)
    model = TinyProtoPNet(num_classes=3, prototypes_per_class=2)
    with torch.no_grad():
        model.prototype_layer.prototype_vectors[3] = model.prototype_layer.prototype_vectors[2]
    probe = ProbeSet.from_folder(small_world).subset(range(0, 120, 5))
    handle = explainkit.wrap(model, class_names=probe.class_names)
    report = explainkit.analyze(handle, probe, [("prototypes", {"max_shown": 2, "local_images": 1})], seed=0)
    data = report.section("prototypes")["data"]
    assert data["adapter"]["kind"] == "vectors" and data["adapter"]["layer"] == "add_on"
    assert data["weight"] == "similarity" and data["units"]["local"].startswith("log similarity")
    assert [p["class_name"] for p in data["prototypes"]] == ["circle", "circle", "square", "square", "triangle",
                                                             "triangle"]
    assert [2, 3] in data["redundancy"]["vector_groups"] and [2, 3] in data["redundancy"]["explanation_groups"]
    assert data["prototypes"][2]["global_train"] == data["prototypes"][3]["global_train"]


@pytest.mark.parametrize("params", [
    {"adapter": "kmeans", "per_class": 2, "layer": "features.2"},
    {"adapter": "exemplars", "exemplar_cells": [[0, 3, 3], [5, 1, 6]], "similarity": "cosine"},
    {"adapter": "channels", "softmax": True, "channels": [1, 2, 3], "prototypes": [0, 2]},
])
def test_ordinary_cnns_get_exemplar_kmeans_and_channel_prototypes(small_world, params):
    torch.manual_seed(0)
    probe = ProbeSet.from_folder(small_world).subset(range(0, 120, 4))  # all three classes
    handle = explainkit.wrap(TinyCNN(num_classes=3).eval(), class_names=probe.class_names, input_size=64,
                             mean=(0.5,) * 3, std=(0.5,) * 3)
    report = explainkit.analyze(handle, probe, [("prototypes", {**params, "max_shown": 1, "local_images": 1})],
                                seed=0)
    data = report.section("prototypes")["data"]
    expected = {"kmeans": 6, "exemplars": 2, "channels": 2}[params["adapter"]]
    assert len(data["prototypes"]) == expected
    for rec in data["prototypes"]:
        for c, m in rec["global_train"].items():
            assert m["value"] is None or np.isfinite(m["value"]), c
    if params["adapter"] == "kmeans":
        assert [p["class_name"] for p in data["prototypes"]][::2] == ["circle", "square", "triangle"]
        assert data["weight"] == "similarity"
    if params["adapter"] == "exemplars":
        assert data["weight"] == "softplus"
        assert data["prototypes"][0]["class_name"] == probe.class_names[probe.labels[0]]
    if params["adapter"] == "channels":
        assert [p["prototype"] for p in data["prototypes"]] == [0, 2]


class _Counted(TinyCNN):
    """A TinyCNN whose live instances can be told apart from every other module in the process."""


def test_re_initialised_copies_of_a_large_model_are_not_kept(small_world, monkeypatch):
    """Calibration compares with re-initialised copies. A model whose copies exceed ``NULL_KEEP_BYTES`` (0 here)
    has them rebuilt from their seeds batch by batch, so no copy outlives the run; a small model keeps its three.
    The section is the same either way."""
    import gc

    probe = ProbeSet.from_folder(small_world).subset(range(0, 120, 8))
    sections, alive = [], []
    for keep_bytes in (0, 2**30):
        monkeypatch.setattr("explainkit.prototypes.analyzer.NULL_KEEP_BYTES", keep_bytes)
        torch.manual_seed(0)
        handle = explainkit.wrap(_Counted(num_classes=3).eval(), class_names=probe.class_names, input_size=64,
                                 mean=(0.5,) * 3, std=(0.5,) * 3)
        analyzer = explainkit.analyzers.get_analyzer_class("prototypes")(null_models=3, max_shown=0, local_images=0)
        data = explainkit.analyze(handle, probe, [analyzer], seed=0).section("prototypes")["data"]
        assert data["calibration"]["null_models"] == 3 and len({n.seed for n in analyzer.nulls_}) == 3
        sections.append(json.dumps(data, sort_keys=True))
        del handle, data
        gc.collect()
        alive.append(sum(isinstance(o, _Counted) for o in gc.get_objects()))
        del analyzer
        gc.collect()
    assert alive == [0, 3]  # once the model is gone: no copy; the three kept copies
    assert sections[0] == sections[1]


@pytest.mark.parametrize(("params", "match"), [
    ({"adapter": "bogus"}, "adapter must be"),
    ({"characteristics": ["colour"]}, r"characteristics\[0\] must be one of 'hue'"),
    ({"train_fraction": 1.0}, "train_fraction"),
    ({"adapter": "exemplars"}, "exemplar_cells"),
    ({"prototypes": [64]}, "bad prototype indices"),
    ({"layer": "features.9"}, "no layer named"),
    ({"perturbation_params": {"hue": {"factor": 3}}}, r"\[-0.5, 0.5\]"),
    ({"calibration": "shuffle"}, "calibration must be one of"),
    ({"null_models": 1}, "null_models must be >= 2"),
])
def test_bad_parameters_are_config_errors(demo_handle, small_world, params, match):
    with pytest.raises(ConfigError, match=match):
        explainkit.analyze(demo_handle, small_world, [("prototypes", params)])


def test_cli_runs_the_analyzer_and_rejects_bad_parameters(demo_model_path, small_world, tmp_path, capsys):
    args = ["analyze", str(demo_model_path), "--data", str(small_world), "--out", str(tmp_path), "--analyzer"]
    assert main([*args, "prototypes:characteristics=hue|shape,max_shown=2,local_images=1"]) == 0
    doc = json.loads((tmp_path / "report.json").read_text())
    section = next(s for s in doc["sections"] if s["analyzer"] == "prototypes")
    assert section["data"]["characteristics"] == ["hue", "shape"]
    capsys.readouterr()
    assert main([*args, "prototypes:train_fraction=2"]) == 2
    err = capsys.readouterr().err
    assert "train_fraction" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
