"""Statistics of prototype explanations against SciPy and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from explainkit.prototypes.statistics import generalisation, local_tests, redundancy_groups, verdict
from explainkit.stats import benjamini_hochberg
from explainkit.stats.streaming import percentile_interval, poisson_counts
from explainkit.stats.twosample import spearman_correlation, welch_t_test


def test_welch_t_test_matches_the_textbook_formulas():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 1.0, 30), rng.normal(0.4, 2.0, 45)
    res = welch_t_test(a, b)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    t = (a.mean() - b.mean()) / np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = stats.t.ppf(0.975, df) * np.sqrt(va + vb)
    assert res.t == pytest.approx(t) and res.df == pytest.approx(df)
    assert res.p == pytest.approx(2 * stats.t.sf(abs(t), df))
    assert (res.ci_low, res.ci_high) == pytest.approx((a.mean() - b.mean() - half, a.mean() - b.mean() + half))
    pooled = np.sqrt(((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2))
    assert res.hedges_g == pytest.approx((a.mean() - b.mean()) / pooled * (1 - 3 / (4 * 75 - 9)))
    assert np.isnan(welch_t_test([1.0], [2.0, 3.0]).p)
    same = welch_t_test([2.0, 2.0, 2.0], [2.0, 2.0])
    assert same.p == 1.0 and same.difference == 0.0


def test_spearman_correlation_with_fisher_interval():
    rng = np.random.default_rng(1)
    a = rng.normal(size=40)
    b = a + rng.normal(scale=0.7, size=40)
    res = spearman_correlation(a, b)
    ref = stats.spearmanr(a, b)
    assert res.rho == pytest.approx(ref.statistic) and res.p == pytest.approx(ref.pvalue)
    se = np.sqrt((1 + res.rho**2 / 2) / 37)
    z = np.arctanh(res.rho)
    assert (res.ci_low, res.ci_high) == pytest.approx((np.tanh(z - 1.959964 * se), np.tanh(z + 1.959964 * se)),
                                                      rel=1e-5)
    assert res.ci_low < res.rho < res.ci_high
    assert np.isnan(spearman_correlation([1, 2], [2, 1]).rho)
    assert spearman_correlation([1, 2, np.nan, 4, 5], [1, 3, 2, 4, 6]).n == 4


def test_local_tests_are_one_sided_wilcoxon_with_bh_across_all_pairs():
    rng = np.random.default_rng(2)
    delta = rng.normal(0, 1, (25, 3, 2))
    delta[:, 0, 0] += 1.5  # one clear positive effect
    out = local_tests(delta)
    for p in range(3):
        for c in range(2):
            ref = stats.wilcoxon(delta[:, p, c], alternative="greater")
            assert out["p"][p, c] == pytest.approx(ref.pvalue)
    np.testing.assert_allclose(out["q"].ravel(), benjamini_hochberg(out["p"].ravel()))
    assert out["q"][0, 0] < 0.001 and out["effect_size"][0, 0] > 0.8
    assert out["n"][1, 1] == 25


def test_generalisation_of_identical_explanations():
    rng = np.random.default_rng(3)
    train = rng.gamma(2.0, 1.0, (20, 3))
    res = generalisation(train, train.copy(), ["hue", "shape", "texture"])
    for c in ("hue", "shape", "texture"):
        g = res["per_characteristic"][c]
        assert g["welch"]["difference"] == 0 and g["welch"]["p"] == pytest.approx(1.0)
        assert g["spearman"]["rho"] == pytest.approx(1.0)
        assert g["shapiro_train"]["p"] == pytest.approx(stats.shapiro(train[:, ["hue", "shape", "texture"].index(c)])
                                                        .pvalue)
    assert res["pooled"]["rho"] == pytest.approx(1.0) and res["pooled"]["n"] == 60
    shifted = generalisation(train, train + 1.0, ["hue", "shape", "texture"])
    assert all(g["welch"]["p_holm"] <= 1 for g in shifted["per_characteristic"].values())
    assert shifted["per_characteristic"]["hue"]["welch"]["difference"] == pytest.approx(-1.0)


def test_redundancy_groups_do_not_chain():
    v = np.array([[1.0, 0.0], [1.04, 0.0], [1.08, 0.0], [0.0, 1.0], [0.0, 1.0], [np.nan, 1.0], [0.0, 0.0]])
    # 0~1 and 1~2 within 5 %, but 0 and 2 differ by 7.4 %: leader clustering keeps 2 out of 0's group
    assert redundancy_groups(v, 0.05) == [[0, 1], [3, 4]]
    assert redundancy_groups(v, 0.1) == [[0, 1, 2], [3, 4]]
    assert redundancy_groups(v[:1], 0.1) == []


@pytest.mark.parametrize(("score", "low", "expected"), [
    ([2.0, 0.3, 0.1, 0.2, 0.1], [1.5, 0.1, 0.0, 0.1, 0.05], "mostly hue"),
    ([0.1, 1.0, 1.2, 0.1, 0.0], [0.05, 0.8, 0.9, 0.0, -0.1], "texture and shape"),
    ([1.0, 0.9, 0.8, 0.7, 0.0], [0.5, 0.5, 0.5, 0.5, -0.1], "hue, shape and texture"),
    ([0.5, 0.4, 0.0, 0.0, 0.0], [-0.1, -0.2, -0.1, -0.1, -0.1], "no clear characteristic"),
    ([0.5, -1.0, 0.0, 0.0, 0.0], [np.nan] * 5, "mostly hue"),
])
def test_verdicts_in_words(score, low, expected):
    names = ["hue", "shape", "texture", "contrast", "saturation"]
    assert verdict(np.array(score), np.array(low), names) == expected


def test_poisson_counts_and_percentile_interval():
    gens = [np.random.default_rng([0, i]) for i in range(3)]
    counts = poisson_counts(gens, 2000)
    assert counts.shape == (2000, 3) and counts.mean() == pytest.approx(1.0, abs=0.05)
    again = poisson_counts([np.random.default_rng([0, i]) for i in range(3)], 2000)
    np.testing.assert_array_equal(counts, again)
    reps = np.stack([np.arange(100.0), np.full(100, np.nan)], axis=1)
    lo, hi = percentile_interval(reps)
    assert lo[0] == pytest.approx(np.quantile(np.arange(100.0), 0.025)) and np.isnan(lo[1]) and np.isnan(hi[1])
