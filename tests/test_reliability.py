"""Probe-set sensitivity and concept learnability: linear probes against scikit-learn, stability bookkeeping,
weighted (bootstrap) IoU against direct sums, and the analyzer with a second probe set."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import explainkit
from explainkit.dissect.api import dissect_tally
from explainkit.errors import ConfigError
from explainkit.reliability.learnability import linear_probe
from explainkit.reliability.stability import dissect_bootstrap_labels, label_stability, probe_agreement
from explainkit.stats import wilson_interval


def test_linear_probe_matches_sklearn_cross_validation():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    y = rng.uniform(size=200) < 0.3
    x = rng.normal(size=(200, 6))
    x[:, 2] += 1.5 * y
    res = linear_probe(x, y, folds=5, seed=3)
    model = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000))
    pred = cross_val_predict(model, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=3))
    assert res.balanced_accuracy == pytest.approx(balanced_accuracy_score(y, pred))
    assert res.ci_low < res.balanced_accuracy < res.ci_high and res.ci_low > 0.6 and res.p < 1e-6
    assert res.n == 200 and res.n_positive == int(y.sum())
    noise = linear_probe(rng.normal(size=(200, 6)), y, folds=5, seed=3)
    assert noise.ci_low < 0.5 < noise.ci_high and noise.p > 0.01
    assert linear_probe(x, np.r_[np.ones(3, bool), np.zeros(197, bool)], folds=5) is None
    with pytest.raises(ConfigError):
        linear_probe(x, y, folds=1)


def test_stability_and_probe_agreement_bookkeeping():
    full = ["a", None, "c"]
    boot = [["a", None, "d"], ["a", "b", "c"], ["b", None, "d"], ["a", None, "d"]]
    s = label_stability(full, boot)
    assert [r["value"] for r in s] == [0.75, 0.75, 0.25]
    assert (s[0]["ci_low"], s[0]["ci_high"]) == pytest.approx(wilson_interval(3, 4))
    assert s[2]["alternatives"] == [["d", 0.75]]
    agree = probe_agreement(["a", "b", None, "c"], ["a", "x", "y", None])
    assert agree["value"] == 0.5 and agree["n"] == 2 and agree["only_first"] == 1 and agree["only_second"] == 1


def test_weighted_iou_equals_direct_weighted_sums():
    rng = np.random.default_rng(4)
    masks = rng.uniform(size=(20, 3, 16, 16)) < 0.3
    maps = rng.normal(size=(20, 4, 4, 4)).astype(np.float32)
    maps[:, 0] += 3 * masks[:, 0].reshape(20, 4, 4, 4, 4).mean((2, 4))
    t = dissect_tally(maps, masks, quantile=0.05)
    w = np.bincount(rng.integers(0, 20, 20), minlength=20).astype(float)
    inter = np.zeros((4, 3))
    fire = np.zeros(4)
    for img, unit, f, row in zip(t.pair_image, t.pair_unit, t.pair_fire, t.pair_inter):
        inter[unit] += w[img] * row
        fire[unit] += w[img] * f
    labels = (w[:, None] * t.label_pixels).sum(0)
    np.testing.assert_allclose(t.iou(w), inter / (fire[:, None] + labels[None] - inter))
    np.testing.assert_array_equal(t.iou(np.ones(20)), t.iou())
    full = dissect_bootstrap_labels(t, ["a", "b", "c"], np.arange(20)[None], iou_threshold=0.04)[0]
    best = t.iou().argmax(1)
    assert full == [["a", "b", "c"][b] if t.iou()[u, b] > 0.04 else None for u, b in enumerate(best)]


@pytest.fixture(scope="module")
def rel_run(demo_model_path, small_world, tmp_path_factory):
    from explainkit.datasets.synthetic import WorldSpec, write_world

    root = tmp_path_factory.mktemp("reliability") / "probe"
    write_world(WorldSpec(n_images=150, artifact="stamp", artifact_rate=0.3, artifact_other_rate=0.3, seed=7), root)
    out = tmp_path_factory.mktemp("reliability-report")
    params = {"resamples": 20, "second_probe": str(small_world), "min_balanced_accuracy": 0.9}
    report = explainkit.analyze(explainkit.load_model(demo_model_path), root, [("reliability", params)], out=out)
    return report, out


def test_stamp_labels_are_stable_decodable_and_reproduced_on_the_second_probe(rel_run):
    report, _ = rel_run
    data = report.section("reliability")["data"]
    learn = {c["concept"]: c for c in data["learnability"]["layers"][0]["concepts"]}
    assert learn["stamp"]["decodable"] and learn["stamp"]["balanced_accuracy"]["ci_low"] > 0.9
    layer = data["layers"][0]
    assert layer["methods"] == ["invert", "dissect"]
    stamp = [u for u in layer["units"] if u["invert"]["label"] == "stamp"]
    assert len(stamp) >= 10
    for u in stamp:
        r = u["invert"]
        assert r["stability"]["value"] >= 0.9 and r["stability"]["n"] == 20 and r["decodable"] is True
        assert not r["unreliable"]
    assert layer["second_probe_agreement"]["invert"]["n"] > 0


def test_invert_and_dissect_labels_side_by_side(rel_run):
    report, _ = rel_run
    layer = report.section("reliability")["data"]["layers"][0]
    counts = layer["methods_counts"]
    assert sum(counts.values()) == layer["n_units"]
    assert layer["methods_agreement"]["n"] == counts["agree"] + counts["differ"] > 0
    for u in layer["units"]:
        inv, nd = u["invert"]["label"], u["dissect"]["label"]
        if inv is not None and nd is not None:
            assert u["agreement"] == ("agree" if nd == inv else "differ")  # single-concept INVERT labels here
        else:
            assert u["agreement"] == ("dissect_only" if nd else "invert_only" if inv else "neither")
        if nd is not None:
            assert u["dissect"]["evidence"]["unit"] == "IoU" and u["dissect"]["evidence"]["q"] < 0.05
        if inv is not None:
            assert u["invert"]["evidence"]["unit"] == "AUROC (held-out)"
    both_stamp = [u for u in layer["units"] if u["dissect"]["label"] == "stamp" and u["invert"]["label"] is not None]
    assert sum(u["agreement"] == "agree" for u in both_stamp) >= 10
    assert any(f["analyzer"] == "reliability" and f["severity"] == "info" and "agree on" in f["message"]
               for f in report.findings)


def test_labels_of_undecodable_concepts_are_flagged(rel_run):
    report, _ = rel_run
    data = report.section("reliability")["data"]
    learn = {c["concept"]: c["decodable"] for c in data["learnability"]["layers"][0]["concepts"]}
    assert any(v is False for v in learn.values())  # the 0.9 floor rejects some concepts
    flagged = 0
    for u in data["layers"][0]["units"]:
        for method in ("invert", "dissect"):
            r = u[method]
            expect_bad = r["label"] is not None and (
                learn.get(r["label"]) is False or r["stability"]["value"] < 0.5)
            assert r["unreliable"] == expect_bad, (u["unit"], method, r)
            flagged += expect_bad
    warnings = [f for f in report.findings if f["analyzer"] == "reliability" and f["severity"] == "warning"]
    assert (flagged > 0) == bool(warnings)
    assert report.section("reliability")["summary"]["unreliable"] == flagged


def test_reliability_section_schema_and_html(rel_run, validated_section):
    _, out = rel_run
    validated_section(out, "reliability")
    html = (out / "report.html").read_text()
    assert "Concept learnability" in html and "second probe" in html and "Network Dissection vs INVERT" in html


def test_reliability_config_errors(demo_model_path, small_world, tmp_path):
    handle = explainkit.load_model(demo_model_path)
    probe = explainkit.ProbeSet.from_folder(small_world).subset(range(8))
    (tmp_path / "x.png").write_bytes((small_world / probe.ids[0]).read_bytes())
    for params, match in [({"resamples": 0}, "resamples"), ({"second_probe": str(tmp_path)}, "lacks concept"),
                          ({"min_stability": 2.0}, "min_stability")]:
        with pytest.raises(ConfigError, match=match):
            explainkit.analyze(handle, probe, [("reliability", params)], progress=False)
