"""``label_neurons``: split, held-out statistics, BH decision, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score

import explainkit
from explainkit.errors import ConfigError, DataError
from explainkit.invert import ConceptMatrix, SearchParams, beam_search
from explainkit.invert.ranks import rank_block
from explainkit.invert.significance import stratified_split
from explainkit.stats import benjamini_hochberg

NAMES = [f"k{i}" for i in range(8)]


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(3)
    n = 900
    y = rng.random((n, 8)) < 0.25
    signal = (y[:, 1] & ~y[:, 2]) * 2.5 + rng.normal(size=n)
    off = -3.0 * y[:, 4] + rng.normal(size=n)
    noise = rng.normal(size=(n, 3))
    acts = np.column_stack([signal, off, noise]).astype(np.float32)
    return acts, y


def test_held_out_statistics_are_what_they_claim(planted):
    acts, y = planted
    res = explainkit.label_neurons(acts, y, NAMES, seed=4)
    search, confirm = stratified_split(ConceptMatrix(y, NAMES).row_keys(), 0.4, 4)
    assert all(r.n_search == search.size and r.n_confirm == confirm.size for r in res)
    for r in res:
        for e in r.explanations:
            # the formula's masks, rebuilt independently from its terms
            mask = np.zeros(len(y), bool)
            for op, name, neg in e.terms:
                col = y[:, NAMES.index(name)] ^ neg
                mask = col if op is None else (mask & col if op == "and" else mask | col)
            m_s, m_c = mask[search], mask[confirm]
            a_s, a_c = acts[search, r.neuron].astype(float), acts[confirm, r.neuron].astype(float)
            assert e.auroc == pytest.approx(roc_auc_score(m_s, a_s), abs=1e-9)
            assert e.fraction == m_s.mean() and e.n_positive == m_s.sum()
            ref = stats.mannwhitneyu(a_s[~m_s], a_s[m_s], alternative="two-sided", method="asymptotic")
            assert e.p_two_sided_same_data == pytest.approx(ref.pvalue, rel=1e-7, abs=1e-300)
            assert e.confirm.auroc == pytest.approx(roc_auc_score(m_c, a_c), abs=1e-9)
            one = stats.mannwhitneyu(a_c[m_c], a_c[~m_c], alternative="greater", method="asymptotic")
            assert e.confirm.p == pytest.approx(one.pvalue, rel=1e-7, abs=1e-300)
            assert e.confirm.n_positive == m_c.sum() and e.confirm.alternative == "greater"
    q = benjamini_hochberg(np.array([r.best.confirm.p for r in res]))
    for r, qv in zip(res, q):
        assert r.q == pytest.approx(qv)
        assert r.accepted == (qv < 0.05 and r.best.confirm.ci_low >= 0.75)
        assert r.best.q == r.q and r.best.accepted == r.accepted
    assert res[0].accepted and set(res[0].best.concepts) >= {"k1", "k2"}
    assert not any(r.accepted for r in res[2:])


def test_negative_mode_finds_suppressing_concept(planted):
    acts, y = planted
    res = explainkit.label_neurons(acts[:, 1], y, NAMES, mode="negative", seed=0)
    best = res[0].best
    assert best.terms[0][1:] == ["k4", False] and best.auroc < 0.1
    assert best.confirm.alternative == "less" and best.confirm.ci_high <= 0.25
    assert res[0].accepted


def test_no_split_reproduces_the_plain_search(planted):
    acts, y = planted
    res = explainkit.label_neurons(torch.from_numpy(acts), y, NAMES, confirm_fraction=0.0, dedupe=False)
    ranks, _ = rank_block(acts)
    beams = beam_search(ranks, ConceptMatrix(y, NAMES), SearchParams())
    for r, beam in zip(res, beams):
        assert r.accepted is None and r.q is None and r.n_confirm == 0
        assert [e.formula for e in r.explanations] == [b.formula.to_string(NAMES) for b in beam]
        assert all(e.confirm is None for e in r.explanations)
    d = res[0].to_dict()
    assert d["explanations"][0]["terms"][0][0] is None and d["explanations"][0]["confirm"] is None


def test_stratified_split_is_seeded_balanced_and_disjoint():
    strata = np.repeat(np.arange(7), [50, 20, 9, 3, 1, 1, 16])
    a1, b1 = stratified_split(strata, 0.4, seed=11)
    a2, b2 = stratified_split(strata, 0.4, seed=11)
    a3, _ = stratified_split(strata, 0.4, seed=12)
    assert np.array_equal(a1, a2) and np.array_equal(b1, b2) and not np.array_equal(a1, a3)
    assert np.array_equal(np.sort(np.concatenate([a1, b1])), np.arange(strata.size))
    assert abs(b1.size - 0.4 * strata.size) <= 1
    for s in np.unique(strata):
        size = np.sum(strata == s)
        assert abs(np.sum(strata[b1] == s) - 0.4 * size) <= 1


def test_bad_inputs_raise_clear_errors(planted):
    acts, y = planted
    bad = acts.copy()
    bad[3, 1] = np.nan
    with pytest.raises(DataError, match="NaN"):
        explainkit.label_neurons(bad, y, NAMES)
    with pytest.raises(DataError, match="rows"):
        explainkit.label_neurons(acts[:10], y, NAMES)
    with pytest.raises(ConfigError, match="alpha"):
        explainkit.label_neurons(acts, y, NAMES, alpha=2)
    with pytest.raises(ConfigError, match="concept_names"):
        explainkit.label_neurons(acts, y)
    with pytest.raises(DataError, match="too few"):
        explainkit.label_neurons(acts[:3], y[:3], NAMES)
    with pytest.raises(DataError, match="neuron names"):
        explainkit.label_neurons(acts, y, NAMES, neuron_names=["a"])


def test_units_without_valid_formula_or_signal(planted):
    acts, y = planted
    # no concept covers <= 1% of samples: empty beams, counted as p = 1 in the correction
    res = explainkit.label_neurons(acts, y, NAMES, max_fraction=0.01)
    assert all(r.explanations == [] and r.best is None and r.accepted is False and r.q == 1.0 for r in res)
    flat = explainkit.label_neurons(np.zeros(len(y)), y, NAMES)[0]  # a dead unit: every AUROC is 1/2
    assert flat.best.auroc == 0.5 and flat.best.confirm.auroc == 0.5 and not flat.accepted
