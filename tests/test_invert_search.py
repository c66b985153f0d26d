"""The vectorised INVERT search against a slow, literal implementation written here.

The slow version follows the reference algorithm step by step with explicit loops: one
``sklearn.metrics.roc_auc_score`` per candidate formula, masks built with NumPy boolean operators,
Python's stable ``sorted``. Its AUROCs are turned into exact fractions (``2U`` is an integer) so that
its ordering is exact; the fast version must produce the same beams, formula by formula, with the
same AUROCs to 1e-9.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from explainkit.errors import ConfigError, DataError
from explainkit.invert.concepts import ConceptMatrix
from explainkit.invert.formula import Formula
from explainkit.invert.ranks import rank_block
from explainkit.invert.search import SearchParams, beam_search


def _slow_auc(a: np.ndarray, mask: np.ndarray) -> Fraction:
    """sklearn's AUROC as an exact fraction; 0 for a one-class mask (torchmetrics' value)."""
    n1 = int(mask.sum())
    n0 = mask.size - n1
    if n1 == 0 or n0 == 0:
        return Fraction(0)
    v = roc_auc_score(mask.astype(int), a)
    exact = Fraction(round(v * 2 * n1 * n0), 2 * n1 * n0)
    assert abs(float(exact) - v) < 1e-12
    return exact


def slow_invert(a, y, length, beam, min_fraction, max_fraction, mode, limit_search, dedupe=False):
    n, c = y.shape
    reverse = mode == "positive"
    memo: dict[bytes, Fraction] = {}

    def auc_of(m):
        key = m.tobytes()
        if key not in memo:
            memo[key] = _slow_auc(a, m)
        return memo[key]

    def valid(m):
        f = m.sum() / n
        return min_fraction <= f <= max_fraction and 0 < f < 1

    atoms = []
    for neg in (False, True):
        for j in range(c):
            if not neg:
                m = y[:, j].copy()
                auc = auc_of(m)
            else:
                m = ~y[:, j]
                auc = 1 - auc_of(y[:, j])
            atoms.append({"terms": ((None, j, neg),), "auc": auc, "mask": m, "len": 1})
    atoms = sorted(atoms, key=lambda e: e["auc"], reverse=reverse)

    def take(entries):
        out = []
        for e in entries:
            if len(out) == beam:
                break
            if dedupe and any(np.array_equal(o["mask"], e["mask"]) for o in out):
                continue
            out.append(e)
        return out

    current = take([e for e in atoms if valid(e["mask"])])
    cands = sorted(atoms, key=lambda e: 2 * abs(e["auc"] - Fraction(1, 2)), reverse=True)
    if limit_search is not None:
        cands = cands[:limit_search]
    for step in range(2, length + 1):
        grown = list(current)
        for phi in list(current):
            for lit in cands:
                (_, j, neg), = lit["terms"]
                for op in ("and", "or"):
                    m = (phi["mask"] & lit["mask"]) if op == "and" else (phi["mask"] | lit["mask"])
                    if valid(m):
                        grown.append({"terms": (*phi["terms"], (op, j, neg)), "auc": auc_of(m),
                                      "mask": m, "len": step})
        current = take(sorted(grown, key=lambda e: e["auc"], reverse=reverse))
    return current


def _data(seed: int, n: int = 60, c: int = 7):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 5, size=(n, 3)).astype(np.float32)  # heavy ties
    a[rng.random((n, 3)) < 0.3] = 0.0
    y = rng.random((n, c)) < rng.uniform(0.05, 0.6, size=c)
    y[:, 0] = y[:, 1]  # duplicate column
    y[:, 2] = False  # an all-false concept
    a[:, 1] += 2.0 * y[:, 3]  # a planted signal for one neuron
    return a, y


def _fast(a, y, **kw):
    ranks, _ = rank_block(a)
    names = [f"c{i}" for i in range(y.shape[1])]
    return beam_search(ranks, ConceptMatrix(y, names), SearchParams(**kw))


CASES = [
    dict(length=3, beam=3, min_fraction=0.0, max_fraction=0.5, mode="positive", limit_search=None),
    dict(length=3, beam=3, min_fraction=0.0, max_fraction=0.5, mode="negative", limit_search=None),
    dict(length=3, beam=4, min_fraction=0.1, max_fraction=0.4, mode="positive", limit_search=5),
    dict(length=2, beam=2, min_fraction=0.05, max_fraction=0.9, mode="negative", limit_search=3),
    dict(length=4, beam=2, min_fraction=0.0, max_fraction=1.0, mode="positive", limit_search=None),
]


@pytest.mark.parametrize("dedupe", [False, True])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_search_equals_slow_reference(seed, case, dedupe):
    kw = CASES[case]
    a, y = _data(seed)
    fast = _fast(a, y, dedupe=dedupe, **kw)
    for d in range(a.shape[1]):
        slow = slow_invert(a[:, d], y, dedupe=dedupe, **kw)
        got = [(e.formula.terms, e.n) for e in fast[d]]
        want = [(e["terms"], int(e["mask"].sum())) for e in slow]
        assert got == want, (d, got, want)
        for e, s in zip(fast[d], slow):
            assert e.auroc == pytest.approx(float(s["auc"]), abs=1e-9)
            assert np.array_equal(e.mask, s["mask"])
            assert e.formula.length == s["len"]
        if dedupe:
            masks = [e.mask.tobytes() for e in fast[d]]
            assert len(set(masks)) == len(masks)


def test_reference_keeps_duplicate_masks_and_dedupe_removes_them():
    # Disjoint classes: c0 and "c0 & ~c1" have the same mask; the reference keeps both.
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 25)
    y = np.eye(4, dtype=bool)[labels]
    a = (labels == 0) * 3.0 + rng.normal(size=100)
    kw = dict(length=2, beam=3, min_fraction=0.0, max_fraction=0.5, mode="positive", limit_search=None)
    ref = _fast(a[:, None], y, dedupe=False, **kw)[0]
    assert len({e.mask.tobytes() for e in ref}) < len(ref)
    assert ref[0].formula.terms == ((None, 0, False),)
    new = _fast(a[:, None], y, dedupe=True, **kw)[0]
    assert len({e.mask.tobytes() for e in new}) == len(new) == 3
    assert new[0].formula.terms == ((None, 0, False),)


def test_rank_sum_identities():
    rng = np.random.default_rng(5)
    a = rng.integers(0, 4, size=(80, 2)).astype(float)
    y = rng.random((80, 3)) < 0.4
    ranks, ties = rank_block(a)
    from scipy.stats import rankdata

    assert np.array_equal(ranks, rankdata(a, axis=0))
    for d in range(2):
        _, t = np.unique(a[:, d], return_counts=True)
        assert ties[d] == np.sum(t.astype(float) ** 3 - t)
    table = ConceptMatrix(y, ["x", "y", "z"])
    from explainkit.invert.ranks import auroc_from_rank_sums

    r = ranks[:, 0]
    big_n = 80

    def auc(m):
        return float(auroc_from_rank_sums(r[m].sum(), m.sum(), big_n))

    x, z = table.column(0), table.column(2)
    # AUROC(¬c) = 1 − AUROC(c)
    assert auc(~x) == pytest.approx(1 - auc(x), abs=1e-12)
    # inclusion–exclusion on rank sums and counts
    s_and, n_and = r[x & z].sum(), (x & z).sum()
    s_or = r[x].sum() + r[z].sum() - s_and
    assert s_or == r[x | z].sum() and (x | z).sum() == x.sum() + z.sum() - n_and
    assert r[x & ~z].sum() == r[x].sum() - s_and
    assert r[x | ~z].sum() == r[~z].sum() + s_and
    for m in (x, z, x & z, x | ~z):
        assert auc(m) == pytest.approx(roc_auc_score(m, a[:, 0]), abs=1e-12)


def test_planted_formula_is_recovered():
    # (c1 | c2) & ~c3 drives the neuron; L=3 finds exactly that mask.
    rng = np.random.default_rng(7)
    n = 2000
    y = rng.random((n, 8)) < 0.25
    truth = (y[:, 1] | y[:, 2]) & ~y[:, 3]
    a = truth * 2.0 + rng.normal(scale=0.5, size=n)
    best = _fast(a[:, None], y, length=3, beam=5, min_fraction=0.0, max_fraction=0.5, mode="positive",
                 limit_search=None, dedupe=True)[0][0]
    assert np.array_equal(best.mask, truth)
    assert {c for _, c, _ in best.formula.terms} == {1, 2, 3}
    assert best.auroc > 0.95


def test_formula_strings_and_terms():
    names = ["box", "mailbox", "a&b"]
    f = Formula.literal(0).extend("and", 1, True).extend("and", 2, True)
    assert f.to_string(names) == 'box & ~mailbox & ~"a&b"'
    g = Formula.literal(0).extend("or", 1).extend("and", 2, True)
    assert g.to_string(names) == '(box | mailbox) & ~"a&b"'
    assert g.to_terms(names) == [[None, "box", False], ["or", "mailbox", False], ["and", "a&b", True]]
    assert g.length == 3 and g.concepts() == (0, 1, 2)


def test_bad_parameters_and_tables_raise_clear_errors():
    a, y = _data(0)
    with pytest.raises(ConfigError, match="mode"):
        _fast(a, y, mode="up")
    with pytest.raises(ConfigError, match="min_fraction"):
        _fast(a, y, min_fraction=0.6, max_fraction=0.5)
    with pytest.raises(ConfigError, match="limit_search"):
        _fast(a, y, limit_search=0)
    with pytest.raises(DataError, match="0/1"):
        ConceptMatrix(np.full((3, 2), 2), ["a", "b"])
    with pytest.raises(DataError, match="duplicate"):
        ConceptMatrix(np.zeros((3, 2), bool), ["a", "a"])
    with pytest.raises(DataError, match="names"):
        ConceptMatrix(np.zeros((3, 2), bool), ["a"])
