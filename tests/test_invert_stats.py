"""Shared rank statistics (explainkit.stats.auroc) against SciPy, scikit-learn and explicit pair counts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from explainkit.stats import RankedScores, auroc, delong_ci, mann_whitney, tie_sum


def _tied_data(seed: int, n: int = 90):
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 6, size=n).astype(float)
    m = rng.random(n) < 0.35
    s[m] += rng.integers(0, 2, size=m.sum())
    return s, m


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
def test_mann_whitney_matches_scipy_asymptotic(seed, alternative):
    s, m = _tied_data(seed)
    got = mann_whitney(s, m, alternative)
    ref = stats.mannwhitneyu(s[m], s[~m], alternative=alternative, method="asymptotic")
    assert got.u == ref.statistic
    assert got.p == pytest.approx(ref.pvalue, rel=1e-9)
    assert got.log10_p == pytest.approx(np.log10(ref.pvalue), rel=1e-9)


def test_log10_p_does_not_underflow():
    rng = np.random.default_rng(0)
    s = np.concatenate([rng.normal(10, 1, 3000), rng.normal(0, 1, 3000)])
    m = np.arange(6000) < 3000
    res = mann_whitney(s, m, "greater")
    assert stats.mannwhitneyu(s[m], s[~m], alternative="greater", method="asymptotic").pvalue == 0.0
    assert res.p == 0.0 and np.isfinite(res.log10_p) and res.log10_p < -300
    # continuity-corrected normal tail, written out independently (no ties here)
    n1 = n0 = 3000
    z = (res.u - n1 * n0 / 2 - 0.5) / np.sqrt(n1 * n0 * (n1 + n0 + 1) / 12)
    assert res.z == pytest.approx(z, rel=1e-12)
    assert res.log10_p == pytest.approx(stats.norm.logsf(z) / np.log(10), rel=1e-9)


def _delong_by_pairs(s, m):
    """DeLong with explicit pairwise kernels psi(x, y) = 1, ½, 0."""
    x, y = s[m], s[~m]
    psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    auc = psi.mean()
    var = v10.var(ddof=1) / x.size + v01.var(ddof=1) / y.size
    return auc, np.sqrt(var)


@pytest.mark.parametrize("seed", range(4))
def test_delong_matches_pairwise_computation_and_sklearn(seed):
    s, m = _tied_data(seed)
    auc, se = _delong_by_pairs(s, m)
    got = delong_ci(s, m, 0.95)
    assert got.auroc == pytest.approx(auc, abs=1e-12)
    assert got.auroc == pytest.approx(roc_auc_score(m, s), abs=1e-12)
    assert got.se == pytest.approx(se, rel=1e-10)
    half = stats.norm.ppf(0.975) * se
    assert got.ci_low == pytest.approx(max(0.0, auc - half), abs=1e-12)
    assert got.ci_high == pytest.approx(min(1.0, auc + half), abs=1e-12)
    assert auroc(s, m) == pytest.approx(auc, abs=1e-12)


def test_ranked_scores_reuse_and_edge_cases():
    s, m = _tied_data(9)
    r = RankedScores(s)
    for mask in (m, ~m, s > 2):
        assert r.auroc(mask) == pytest.approx(roc_auc_score(mask, s), abs=1e-12)
    assert np.isnan(r.auroc(np.zeros(s.size, bool)))
    assert np.isnan(r.mann_whitney(np.ones(s.size, bool)).p)
    one = np.zeros(s.size, bool)
    one[0] = True
    assert np.isnan(r.delong(one).se)  # a single positive: no variance estimate
    _, t = np.unique(s, return_counts=True)
    assert r.ties == tie_sum(s) == np.sum(t.astype(float) ** 3 - t)
    flat = RankedScores(np.ones(10))
    assert flat.mann_whitney(np.arange(10) < 4).p == 1.0
