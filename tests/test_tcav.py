"""TCAV through captum: concept sets from the table, CAVs and scores equal to captum's own pipeline and to a
direct gradient computation, the paper's t-test with Holm, and the analyzer on the stamp-reliant demo model."""

from __future__ import annotations

import pickle
import tempfile

import numpy as np
import pytest
import torch
from captum.concept import TCAV
from captum.concept._utils.common import concepts_to_str
from scipy import stats

import explainkit
from explainkit.errors import ConfigError, DataError
from explainkit.hooks import eval_mode
from explainkit.stats import holm
from explainkit.tcav.analyzer import _PREFIX, _Logits
from explainkit.tcav.cav import CachedTCAV, SeededLinearClassifier, activation_table, concept_sets
from explainkit.tcav.scores import TcavCounts, tcav_tests


def test_concept_sets_use_positives_against_negatives():
    rng = np.random.default_rng(0)
    table = rng.uniform(size=(60, 3)) < np.array([0.5, 0.1, 0.97])
    sets, skipped = concept_sets(table, ["a", "b", "c"], max_images=8, runs=4, min_images=5,
                                 rng=np.random.default_rng(1))
    assert sets.concepts == ["a"] and skipped == ["b", "c"] and sets.runs == 4
    assert table[sets.positives[0], 0].all() and sets.positives[0].size == 8
    assert all(not table[n, 0].any() and n.size == 8 for n in sets.negatives[0])
    assert len({tuple(n) for n in sets.negatives[0]}) == 4  # fresh negatives per run
    assert sets.random_reference.size == 8 and len(sets.random_runs) == 4
    with pytest.raises(DataError, match="no concept"):
        concept_sets(table[:, 1:2], ["b"], min_images=10, rng=np.random.default_rng(0))


def test_tcav_tests_are_students_t_with_holm():
    rng = np.random.default_rng(2)
    runs, n = 6, np.array([40, 30])
    positive = rng.integers(0, 31, size=(1, 2, 2 * runs + runs))
    positive[0, 0, :runs] = rng.integers(30, 41, runs)  # class 0 points along concept "x"
    tests = tcav_tests(TcavCounts(positive, n), ["l"], ["k0", "k1"], ["x", "y"], runs)
    assert [(t.class_name, t.concept) for t in tests] == [("k0", "x"), ("k0", "y"), ("k1", "x"), ("k1", "y")]
    ps = []
    for t, (k, c) in zip(tests, [(0, 0), (0, 1), (1, 0), (1, 1)]):
        share = positive[0, k] / n[k]
        a, b = share[c * runs : (c + 1) * runs], share[2 * runs :]
        ref = stats.ttest_ind(a, b)
        ci = ref.confidence_interval(0.95)
        assert t.t == pytest.approx(ref.statistic) and t.p == pytest.approx(ref.pvalue)
        assert (t.ci_low, t.ci_high) == pytest.approx((ci.low, ci.high))
        assert t.score == pytest.approx(a.mean()) and t.null_score == pytest.approx(b.mean())
        ps.append(ref.pvalue)
    np.testing.assert_allclose([t.p_holm for t in tests], holm(np.array(ps)))
    assert tests[0].significant and tests[0].difference > 0.3
    same = tcav_tests(TcavCounts(np.full((1, 1, 2), 3), np.array([3])), ["l"], ["k"], ["x"], 1)[0]
    assert same.p == 1.0 and same.difference == 0.0  # identical constant scores: no evidence
    merged = TcavCounts(positive, n).merge(TcavCounts(positive, n))
    assert (merged.positive == 2 * positive).all() and (merged.n == 2 * n).all()


@pytest.fixture(scope="module")
def demo(small_world, demo_model_path):
    handle = explainkit.load_model(demo_model_path)
    probe = explainkit.ProbeSet.from_folder(small_world)
    return handle, probe


def test_cavs_and_scores_equal_captums_pipeline_and_direct_gradients(demo):
    handle, probe = demo
    table = probe.concepts[:, [probe.concept_index("stamp")]]
    sets, _ = concept_sets(table, ["stamp"], max_images=8, runs=1, min_images=5, rng=np.random.default_rng(0))

    def load(indices):
        return handle.preprocess([probe.load_image(int(i)) for i in indices])

    model = _Logits(handle)
    layer = _PREFIX + "features.3"
    results = []
    for precomputed in (True, False):
        pairs, null = sets.experimental_sets(load, 4)
        exp = pairs + null
        with tempfile.TemporaryDirectory() as store, eval_mode(handle.module):
            cls = CachedTCAV if precomputed else TCAV
            tcav = cls(model, [layer], classifier=SeededLinearClassifier(seed=0), save_path=store)
            if precomputed:
                tcav.use_activations(*activation_table(model, {layer: model.get_submodule(layer)},
                                                       sets.all_indices(), load, 7))
            tcav.compute_cavs(exp)
            x = load(np.flatnonzero(probe.labels == 0)[:6])
            scores = tcav.interpret(x, exp, target=0)
        weights = [tcav.cavs[concepts_to_str(s)][layer].stats["weights"] for s in exp]
        results.append((weights, [float(scores[concepts_to_str(s)][layer]["sign_count"][0]) for s in exp]))
    (w_ours, s_ours), (w_captum, s_captum) = results
    for a, b in zip(w_ours, w_captum):
        torch.testing.assert_close(a, b)
    assert s_ours == s_captum
    # direct: share of class-0 images whose class-0 gradient at the layer has a positive dot product with the CAV
    act = {}
    hook = handle.module.features[3].register_forward_hook(lambda m, i, o: act.setdefault("a", o))
    try:
        with eval_mode(handle.module):
            logits = handle.module(x.requires_grad_(True))
            grad = torch.autograd.grad(logits[:, 0].sum(), act["a"])[0].reshape(len(x), -1)
    finally:
        hook.remove()
    for w, s in zip(w_ours, s_ours):
        # rows follow the sorted concept ids: row 0 is the set's first concept, −w of the SGD model
        assert s == pytest.approx(float((grad @ w[0] > 0).float().mean()))


@pytest.fixture(scope="module")
def tcav_run(demo, tmp_path_factory):
    handle, probe = demo
    out = tmp_path_factory.mktemp("tcav-report")
    # the paper's t-test is weak with few runs (random-vs-random scores are bimodal here): 16 runs
    params = {"layer": "features.2", "concepts": ["stamp"], "classes": ["circle", "square"], "runs": 16,
              "max_images": 12}
    return explainkit.analyze(handle, probe.subset(range(0, 120, 2)), [("tcav", params)], out=out), out


def test_demo_class_circle_is_sensitive_to_the_stamp(tcav_run):
    report, _ = tcav_run
    data = report.section("tcav")["data"]
    rows = {r["class"]: r for r in data["tests"]}
    assert set(rows) == {"circle", "square"}
    circle = rows["circle"]
    assert circle["significant"] and circle["artifact"]
    assert circle["score"]["value"] > 0.8 > circle["random_score"]
    assert circle["difference"]["ci_low"] > 0 and circle["difference"]["p_holm"] < 0.05
    assert len(circle["scores"]) == len(circle["random_scores"]) == 16
    assert all(r["significant"] for r in data["significant"])
    assert data["concepts"][0]["cav_accuracy"]["features.2"] > 0.9
    warning = [f for f in report.findings if f["analyzer"] == "tcav" and f["severity"] == "warning"]
    assert warning and "circle" in warning[0]["message"] and "stamp" in warning[0]["message"]


def test_tcav_section_schema_html_and_pickling(tcav_run, demo, validated_section):
    _, out = tcav_run
    validated_section(out, "tcav")
    assert "Significant TCAV scores" in (out / "report.html").read_text()
    handle, probe = demo
    a = explainkit.analyzers.get_analyzer("tcav", layer="features.3", concepts=["stamp"], runs=2, max_images=6)
    a.prepare(explainkit.analyzers.RunContext(handle=handle, data=probe, device=torch.device("cpu")))
    clone = pickle.loads(pickle.dumps(a))  # Ray ships checked analyzers; workers rebuild captum's object
    assert not hasattr(clone, "tcav_") and clone.sets_.concepts == ["stamp"]
    clone.prepare(explainkit.analyzers.RunContext(handle=handle, data=probe, device=torch.device("cpu")))
    for key, layers in a.tcav_.cavs.items():  # the worker uses the driver's CAVs, bit for bit
        for layer, cav in layers.items():
            assert torch.equal(clone.tcav_.cavs[key][layer].stats["weights"], cav.stats["weights"])


def test_tcav_config_errors(demo):
    handle, probe = demo
    small = probe.subset(range(12))
    for params, match in [({"concepts": ["nope"]}, "unknown concept"), ({"classes": ["dog"]}, "unknown class"),
                          ({"runs": 1}, "runs"), ({"min_images": 50}, "no concept")]:
        with pytest.raises((ConfigError, DataError), match=match):
            explainkit.analyze(handle, small, [("tcav", params)], progress=False)
