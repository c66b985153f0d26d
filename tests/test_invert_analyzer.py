"""The ``invert`` analyzer on the synthetic stamped world with the bundled demo model.

The demo model was trained where a stamp marks most ``circle`` images, and relies on it. Which of
its channels respond to the stamp is measured here independently (a plain forward pass, spatial
mean, scikit-learn AUROC), and those channels must come out labelled ``stamp``, accepted, with a
held-out AUROC >= 0.95, and listed as artifact units pushing ``circle``.
"""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import explainkit
from explainkit.errors import ConfigError
from explainkit.report import schema_path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from explainkit.datasets.synthetic import WorldSpec, write_world

    root = tmp_path_factory.mktemp("invert") / "probe"
    write_world(WorldSpec(n_images=240, artifact="stamp", artifact_rate=0.4, artifact_other_rate=0.4, seed=5), root)
    return explainkit.ProbeSet.from_folder(root)


@pytest.fixture(scope="module")
def run(world, demo_model_path, tmp_path_factory):
    handle = explainkit.load_model(demo_model_path)
    out = tmp_path_factory.mktemp("invert-report")
    report = explainkit.analyze(handle, world, ["invert"], out=out, seed=0)
    return handle, report, out


@pytest.fixture(scope="module")
def direct(run, world):
    """Independent ground truth: pooled last-block channels and predictions by a plain forward pass."""
    handle = run[0]
    model = handle.module.eval()
    x = handle.preprocess([world.load_image(i) for i in range(len(world))])
    with torch.no_grad():
        pooled = model.features(x).mean((2, 3)).numpy()
        pred = model(x).argmax(1).numpy()
    stamp = world.concepts[:, world.concept_index("stamp")]
    auc = np.array([roc_auc_score(stamp, pooled[:, j]) for j in range(pooled.shape[1])])
    return pooled, pred, auc


def test_stamp_channels_are_labelled_stamp_and_accepted(run, direct):
    _, report, _ = run
    _, _, auc = direct
    layer = report.section("invert")["data"]["layers"][0]
    assert layer["layer"] == "features" and layer["representation"]["aggregation"] == "spatial mean per channel"
    rows = {n["neuron"]: n for n in layer["neurons"]}
    perfect = np.flatnonzero(auc == 1.0)
    assert perfect.size >= 3
    for j in perfect:
        assert rows[j]["formula"] == "stamp", (j, rows[j]["formula"])
        assert rows[j]["accepted"] and rows[j]["auroc"]["value"] >= 0.95
        assert rows[j]["auroc"]["ci_low"] >= 0.75 and rows[j]["q"] < 0.05
    labelled = [j for j, n in rows.items() if n["formula"] == "stamp" and n["accepted"]]
    assert all(auc[j] >= 0.95 for j in labelled)


def test_artifact_units_with_class_connection(run, direct, world):
    _, report, _ = run
    pooled, pred, auc = direct
    data = report.section("invert")["data"]
    assert data["artifact_concepts"] == ["stamp"]
    found = {a["neuron"]: a for a in data["artifact_neurons"]}
    weight = run[0].module.classifier.weight.detach().numpy()
    for j in np.flatnonzero(auc == 1.0):
        a = found[j]
        assert a["relation"] == "detects" and a["artifact_concepts"] == ["stamp"] and a["layer"] == "features"
        # independent: contribution toward the predicted class = w[pred, j] * pooled_j (mean-pooled + linear)
        means = {k: float(np.mean(weight[k, j] * pooled[pred == k, j])) for k in np.unique(pred)}
        top = max(means, key=means.get)
        assert a["connection"]["top_class"] == world.class_names[top] == "circle"
        assert a["connection"]["strength"] == pytest.approx(means[top], rel=1e-4)
    finding = [f for f in report.findings if f["analyzer"] == "invert"]
    assert finding and finding[0]["severity"] == "warning" and "stamp" in finding[0]["message"]
    assert set(np.flatnonzero(auc == 1.0)) <= set(finding[0]["evidence"]["detects"])


def test_report_json_and_html(run):
    _, report, out = run
    doc = json.loads((out / "report.json").read_text())
    jsonschema.validate(doc, json.loads(open(schema_path()).read()))
    section = report.section("invert")
    params = section["params"]
    assert params["length"] == 3 and params["beam"] == 3 and params["max_fraction"] == 0.5
    layer = section["data"]["layers"][0]
    assert sum(layer["histogram"]["counts"]) == sum(n["auroc"] is not None for n in layer["neurons"])
    with_images = [n for n in layer["neurons"] if n["top_images"]]
    assert len(with_images) == params["max_image_neurons"]
    assert all(len(n["top_images"]) == params["top_images"] for n in with_images)
    html = (out / "report.html").read_text()
    assert "only labels with artifact concepts" in html and 'class="ek-inv-only"' in html
    assert html.count('class="ek-inv-art"') == sum(n["artifact"] for n in layer["neurons"])
    assert "<code>stamp</code>" in html


def test_layer_choice_and_bad_parameters(world, demo_model_path):
    handle = explainkit.load_model(demo_model_path)
    small = world.subset(range(60))
    rep = explainkit.analyze(handle, small, [("invert", {"top_images": 0, "length": 1})], layer="features.2",
                             seed=1)
    data = rep.section("invert")["data"]
    assert [layer["layer"] for layer in data["layers"]] == ["features.2"]
    assert data["layers"][0]["representation"]["output_shape"] == [64, 16, 16]
    rep = explainkit.analyze(handle, small, [("invert", {"layer": ["@logits", "classifier"], "top_images": 0})],
                             seed=1)
    logits, units = rep.section("invert")["data"]["layers"]
    assert [n["name"] for n in logits["neurons"]] == list(handle.class_names)
    assert units["representation"]["kind"] == "units"
    for params, match in [({"layer": "nope"}, "no layer named"), ({"artifact_concepts": ["watermark"]}, "watermark"),
                          ({"confirm_fraction": 0.0}, "confirm_fraction"), ({"mode": "up"}, "mode"),
                          ({"pooling": "median"}, "pooling"), ({"connection": "weights"}, "connection")]:
        with pytest.raises(ConfigError, match=match):
            explainkit.analyze(handle, small, [("invert", params)])


def test_invert_style_label_matrix_gives_the_same_labels(demo_model_path, tmp_path):
    # The same world read from concepts.csv and from an INVERT-style .npy label matrix + descriptions.json.
    import shutil

    from explainkit.datasets.synthetic import WorldSpec, write_world

    csv_root = tmp_path / "csv"
    write_world(WorldSpec(n_images=60, artifact="stamp", artifact_rate=0.4, artifact_other_rate=0.4, seed=8), csv_root)
    npy_root = tmp_path / "npy"
    shutil.copytree(csv_root, npy_root)
    probe_csv = explainkit.ProbeSet.from_folder(csv_root)
    (npy_root / "concepts.csv").unlink()
    np.save(npy_root / "concepts.npy", probe_csv.concepts.astype(np.uint8))
    probe_npy = explainkit.ProbeSet.from_folder(npy_root)
    assert probe_npy.concept_names == probe_csv.concept_names and probe_npy.artifact_concepts == ("stamp",)
    handle = explainkit.load_model(demo_model_path)
    labels = []
    for probe in (probe_csv, probe_npy):
        rep = explainkit.analyze(handle, probe, [("invert", {"top_images": 0})], seed=3)
        layer = rep.section("invert")["data"]["layers"][0]
        labels.append([(n["formula"], n["auroc"]["value"] if n["auroc"] else None, n["accepted"])
                       for n in layer["neurons"]])
    assert labels[0] == labels[1]


def test_finalize_on_a_worker_that_mapped_nothing(world, demo_model_path):
    # Distributed backends map on workers and finalize on the driver, whose analyzer saw no batch:
    # the result (layout record included) must equal the serial one.
    from explainkit.analyzers.base import RunContext
    from explainkit.backends import RunPlan, map_shard
    from explainkit.run import build_analyzers, resolve_device

    handle = explainkit.load_model(demo_model_path)
    small = world.subset(range(48))
    ctx = RunContext(handle=handle, data=small, device=resolve_device("cpu"), seed=0, batch_size=16)
    worker, driver = build_analyzers([("invert", {"top_images": 1})]), build_analyzers([("invert", {"top_images": 1})])
    for a in (*worker, *driver):
        a.validate(ctx)
        a.prepare(ctx)
    states, _ = map_shard(RunPlan(handle, small, worker, None, progress=False), ctx, range(len(small)))
    serial = worker[0].finalize(ctx, states["invert"]).to_dict()
    remote = driver[0].finalize(ctx, states["invert"]).to_dict()
    assert remote == serial and remote["data"]["layers"][0]["representation"]["kind"] == "spatial"
