"""Shared statistics against independent computations (scipy, closed forms)."""

import numpy as np
import pytest
from scipy import stats

from explainkit.stats import (
    adjust_pvalues,
    benjamini_hochberg,
    bootstrap_ci,
    bootstrap_diff_ci,
    holm,
    wilcoxon_signed_rank,
    wilson_interval,
)


def _holm_loop(p):
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adj, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return adj


def test_holm_matches_loop_and_keeps_nan():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.2, 25)
    assert np.allclose(holm(p), _holm_loop(list(p)))
    with_nan = np.array([0.01, np.nan, 0.04])
    out = holm(with_nan)
    assert np.isnan(out[1]) and np.allclose(out[[0, 2]], holm([0.01, 0.04]))


@pytest.mark.parametrize("method", ["bh", "by"])
def test_bh_by_match_scipy(method):
    p = np.random.default_rng(1).uniform(0, 1, 40) ** 3
    assert np.allclose(benjamini_hochberg(p, dependent=method == "by"), stats.false_discovery_control(p, method=method))
    assert np.allclose(adjust_pvalues(p, method), stats.false_discovery_control(p, method=method))
    with pytest.raises(ValueError):
        adjust_pvalues(p, "bonf")


def test_bootstrap_percentile_matches_scipy():
    x = np.random.default_rng(2).normal(1.0, 2.0, 200)
    lo, hi = bootstrap_ci(x, n_resamples=4000, seed=3)
    ref = stats.bootstrap((x,), np.mean, n_resamples=4000, method="percentile", random_state=3).confidence_interval
    assert abs(lo - ref.low) < 0.06 and abs(hi - ref.high) < 0.06
    assert bootstrap_ci(np.ones(5)) == (1.0, 1.0)
    assert all(np.isnan(bootstrap_ci(np.array([]))))
    assert bootstrap_ci(x, seed=9) == bootstrap_ci(x, seed=9)


def test_bootstrap_diff_covers_truth():
    rng = np.random.default_rng(4)
    hits = 0
    for _ in range(100):
        a, b = rng.normal(0.5, 1, 60), rng.normal(0.0, 1, 80)
        lo, hi = bootstrap_diff_ci(a, b, n_resamples=500, seed=int(rng.integers(1e9)))
        hits += lo <= 0.5 <= hi
    assert hits >= 88  # nominal 95 %


def test_wilcoxon_matches_scipy_and_effect_sizes():
    d = np.random.default_rng(5).normal(0.3, 1, 50)
    res = wilcoxon_signed_rank(d, "greater")
    assert np.isclose(res.p, stats.wilcoxon(d, alternative="greater").pvalue)
    ranks = stats.rankdata(np.abs(d))
    assert np.isclose(res.statistic, ranks[d > 0].sum())
    assert np.isclose(res.effect_size, (ranks[d > 0].sum() - ranks[d < 0].sum()) / ranks.sum())
    assert np.isclose(res.cohens_dz, d.mean() / d.std(ddof=1)) and np.isclose(res.win_rate, (d > 0).mean())
    zeros = wilcoxon_signed_rank(np.zeros(4))
    assert zeros.p == 1.0 and zeros.effect_size == 0.0
    assert wilcoxon_signed_rank(np.array([np.nan])).n == 0


def test_wilson_interval_closed_form():
    lo, hi = wilson_interval(8, 10)
    assert np.isclose(lo, 0.4901625, atol=1e-6) and np.isclose(hi, 0.9433178, atol=1e-6)
    assert all(np.isnan(wilson_interval(0, 0)))
