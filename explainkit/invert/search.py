"""INVERT's compositional beam search, vectorised over concepts, candidates and a block of neurons.

The semantics are those of the reference implementation (``lapalap/invert`` v1.1,
``Invert.explain_representation``):

1. Literals are every concept ``c`` (column order) followed by every negation ``¬c``. Their AUROCs
   are sorted (stable) descending for ``mode="positive"``, ascending for ``"negative"``. A concept
   that is all-false or all-true gets AUROC 0 and its negation 1 (torchmetrics' value for a
   one-class target); such literals can never enter a beam (see 2) but they are candidates.
2. A formula is *valid* when its fraction ``f = n/N`` satisfies ``min_fraction ≤ f ≤ max_fraction``
   and ``0 < f < 1``. The first beam is the first ``beam`` valid literals in that order.
3. Expansion candidates are the literals re-sorted (stable) by differentiability ``2|AUROC − ½|``,
   descending, cut to the first ``limit_search`` (all 2C by default; not filtered by fraction).
4. For lengths 2..L, every beam formula φ (beam order) is extended with every candidate ℓ
   (candidate order) as ``φ ∧ ℓ`` then ``φ ∨ ℓ``; valid ones are appended after the current beam,
   and the new beam is the first ``beam`` of that list after a stable sort by AUROC. Old beam
   entries therefore compete with (and win ties against) their extensions.

Rank sums make every candidate's AUROC a few array operations: with ``S(φ∧c)`` and ``n(φ∧c)`` for
all concepts from one sparse reduction over φ's rows (``Yᵀ[r⊙φ, φ]``), the other three extensions
follow by inclusion–exclusion (``φ∧¬c = φ − φ∧c``, ``φ∨c = φ + c − φ∧c``, ``φ∨¬c = ¬c + φ∧c``).

Improvement, switchable: ``dedupe=True`` keeps only the first of several beam formulas with the
same mask (which, in the stable order, is the shortest: old beam entries precede their extensions);
the reference keeps them all (e.g. ``c``, ``c ∧ c`` and ``c ∧ ¬d`` for disjoint ``c, d``). An
extension with its parent's count has its parent's mask (AND only removes samples, OR only adds
them) and is dropped without looking at samples; other candidates are compared mask to mask only
when count and rank sum coincide.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from explainkit.errors import ConfigError
from explainkit.invert.concepts import ConceptMatrix
from explainkit.invert.formula import OPS, Formula
from explainkit.invert.ranks import auroc_from_rank_sums, differentiability_from_rank_sums

__all__ = ["BeamEntry", "SearchParams", "beam_search"]

MODES = ("positive", "negative")


@dataclass(frozen=True)
class SearchParams:
    """Parameters of the beam search (reference defaults).

    Attributes
    ----------
    length : int
        Maximum number of literals L.
    beam : int
        Beam size B.
    min_fraction, max_fraction : float
        Allowed range of the fraction of samples satisfying a formula (inclusive).
    mode : str
        ``"positive"`` (maximise AUROC) or ``"negative"`` (minimise it).
    limit_search : int or None
        Keep only this many expansion candidates (literals ranked by differentiability).
    dedupe : bool
        Drop beam formulas whose mask equals a better-ranked (hence shorter or equal) one.
    """

    length: int = 3
    beam: int = 3
    min_fraction: float = 0.0
    max_fraction: float = 0.5
    mode: str = "positive"
    limit_search: int | None = None
    dedupe: bool = False

    def validate(self) -> None:
        """Raise :class:`ConfigError` for out-of-range parameters."""
        if not isinstance(self.length, int | np.integer) or self.length < 1:
            raise ConfigError(f"length must be a positive integer, not {self.length!r}")
        if not isinstance(self.beam, int | np.integer) or self.beam < 1:
            raise ConfigError(f"beam must be a positive integer, not {self.beam!r}")
        if not (0.0 <= self.min_fraction <= self.max_fraction <= 1.0):
            raise ConfigError(
                f"need 0 <= min_fraction <= max_fraction <= 1, got {self.min_fraction} and {self.max_fraction}"
            )
        if self.mode not in MODES:
            raise ConfigError(f"mode must be 'positive' or 'negative', not {self.mode!r}")
        if self.limit_search is not None and (
            not isinstance(self.limit_search, int | np.integer) or self.limit_search < 1
        ):
            raise ConfigError(f"limit_search must be a positive integer or None, not {self.limit_search!r}")


@dataclass
class BeamEntry:
    """One formula in a beam, with its statistics on the search data.

    Attributes
    ----------
    formula : Formula
        The formula.
    rank_sum : float
        Sum of the neuron's average ranks over the samples satisfying it.
    n : int
        Number of samples satisfying it.
    auroc : float
        Exact AUROC (ties ½).
    mask : ndarray or None
        (N,) bool samples satisfying it (filled in when needed).
    parent : BeamEntry or None
        The entry it extends, until its mask is computed.
    """

    formula: Formula
    rank_sum: float
    n: int
    auroc: float
    mask: np.ndarray | None = None
    parent: BeamEntry | None = field(default=None, repr=False)


def _sort_key(auroc: np.ndarray, valid: np.ndarray, mode: str) -> np.ndarray:
    key = -auroc if mode == "positive" else auroc.copy()
    key = np.where(valid, key, np.inf)
    return key


def _valid(n: np.ndarray, n_total: int, p: SearchParams) -> np.ndarray:
    f = np.asarray(n, dtype=np.float64) / n_total
    return (f >= p.min_fraction) & (f <= p.max_fraction) & (n > 0) & (n < n_total)


class _Block:
    """Search state for a block of neurons sharing one concept table."""

    def __init__(self, ranks: np.ndarray, table: ConceptMatrix, p: SearchParams) -> None:
        self.ranks = ranks
        self.table = table
        self.p = p
        self.n_total, self.n_neurons = ranks.shape
        self.total = self.n_total * (self.n_total + 1) / 2.0
        self.n_c = table.counts.astype(np.float64)
        self.s_c = table.sums(ranks).T  # (D, C): rank sum of every concept
        self._columns: dict[int, np.ndarray] = {}

    def column(self, c: int) -> np.ndarray:
        if c not in self._columns:
            self._columns[c] = self.table.column(c)
        return self._columns[c]

    def literal(self, lit: int) -> tuple[int, bool]:
        c = self.table.n_concepts
        return lit % c, lit >= c

    def atoms(self) -> tuple[list[list[BeamEntry]], np.ndarray]:
        """First beams and expansion candidates (D, K) as literal ids (c, or C + c for ¬c)."""
        p, big_n, n_conc = self.p, self.n_total, self.table.n_concepts
        s_lit = np.concatenate([self.s_c, self.total - self.s_c], axis=1)
        n_lit = np.concatenate([self.n_c, big_n - self.n_c])
        auc = auroc_from_rank_sums(s_lit, n_lit, big_n)
        diff = differentiability_from_rank_sums(s_lit, n_lit, big_n)
        degenerate = np.concatenate([(self.n_c == 0) | (self.n_c == big_n)] * 2)
        ref_auc = np.concatenate([np.zeros(n_conc), np.ones(n_conc)])  # torchmetrics on one class: 0
        auc = np.where(degenerate, ref_auc, auc)
        diff = np.where(degenerate, 1.0, diff)
        order = np.argsort(_sort_key(auc, np.ones_like(auc, dtype=bool), p.mode), axis=1, kind="stable")
        by_diff = np.argsort(-np.take_along_axis(diff, order, axis=1), axis=1, kind="stable")
        cands = np.take_along_axis(order, by_diff, axis=1)[:, : p.limit_search]
        valid = _valid(n_lit, big_n, p)
        beams = []
        for d in range(self.n_neurons):
            entries = (BeamEntry(Formula.literal(*self.literal(lit)), float(s_lit[d, lit]), int(n_lit[lit]),
                                 float(auc[d, lit])) for lit in order[d][valid[order[d]]])
            beams.append(self._select(entries, self.p.beam))
        return beams, cands

    def _select(self, entries, k: int) -> list[BeamEntry]:
        """The first ``k`` entries (an iterable in rank order), skipping repeated masks with ``dedupe``."""
        out: list[BeamEntry] = []
        for e in entries:
            if len(out) == k:
                break
            if self.p.dedupe and any(o.n == e.n and o.rank_sum == e.rank_sum
                                     and np.array_equal(self.mask(o), self.mask(e)) for o in out):
                continue  # same mask as a better-ranked entry, which is never longer
            out.append(e)
        return out

    def expand(self, beams: list[list[BeamEntry]], cands: np.ndarray) -> list[list[BeamEntry]]:
        """One search step: extend every beam formula by AND/OR with every candidate literal."""
        p, big_n, n_conc = self.p, self.n_total, self.table.n_concepts
        width = max((len(b) for b in beams), default=0)
        if width == 0:
            return beams
        d_n, k = self.n_neurons, cands.shape[1]
        # S(φ∧c) and n(φ∧c) for every beam formula φ and concept c, reading only φ's rows.
        s_and = np.zeros((d_n, width, n_conc))
        n_and = np.zeros((d_n, width, n_conc))
        s_b = np.zeros((d_n, width))
        n_b = np.zeros((d_n, width))
        old_valid = np.zeros((d_n, width), dtype=bool)
        old_auc = np.zeros((d_n, width))
        for d, beam in enumerate(beams):
            for j, e in enumerate(beam):
                s_and[d, j], n_and[d, j] = self.table.masked_sums(self.mask(e), self.ranks[:, d])
                s_b[d, j], n_b[d, j], old_auc[d, j], old_valid[d, j] = e.rank_sum, e.n, e.auroc, True
        s_c = self.s_c[:, None, :]
        sb, nb = s_b[..., None], n_b[..., None]
        s_ops = (np.concatenate([s_and, sb - s_and], axis=2),
                 np.concatenate([sb + s_c - s_and, self.total - s_c + s_and], axis=2))
        n_ops = (np.concatenate([n_and, nb - n_and], axis=2),
                 np.concatenate([nb + self.n_c - n_and, big_n - self.n_c + n_and], axis=2))
        idx = np.broadcast_to(cands[:, None, :], (d_n, width, k))
        s_new = np.stack([np.take_along_axis(s, idx, axis=2) for s in s_ops], axis=3).reshape(d_n, -1)
        n_new = np.stack([np.take_along_axis(n, idx, axis=2) for n in n_ops], axis=3).reshape(d_n, -1)
        auc_new = auroc_from_rank_sums(s_new, n_new, big_n)
        valid_new = _valid(n_new, big_n, p) & np.repeat(old_valid, k * 2, axis=1)
        if p.dedupe:  # an extension with its parent's count has its parent's mask (which ranks before it)
            valid_new &= n_new != np.repeat(n_b, k * 2, axis=1)
        keys = np.concatenate([_sort_key(old_auc, old_valid, p.mode), _sort_key(auc_new, valid_new, p.mode)], axis=1)
        order = np.argsort(keys, axis=1, kind="stable")
        n_finite = np.isfinite(keys).sum(axis=1)  # invalid candidates sort last (key inf)
        out = []
        for d in range(d_n):
            finite = order[d, : n_finite[d]]

            def entries(d=d, finite=finite):
                for i in finite:
                    if i < width:
                        yield beams[d][i]
                        continue
                    r = i - width
                    j, kk, op = r // (2 * k), (r // 2) % k, r % 2
                    c, neg = self.literal(int(cands[d, kk]))
                    parent = beams[d][j]
                    formula = parent.formula.extend(OPS[op], c, neg)
                    yield BeamEntry(formula, float(s_new[d, r]), int(n_new[d, r]), float(auc_new[d, r]),
                                    parent=parent)

            out.append(self._select(entries(), p.beam))
        return out

    def mask(self, e: BeamEntry) -> np.ndarray:
        """The entry's (N,) mask, computed on first use from its parent's (or from scratch)."""
        if e.mask is None:
            if e.parent is not None:
                op, c, neg = e.formula.terms[-1]
                lit = ~self.column(c) if neg else self.column(c)
                e.mask = (self.mask(e.parent) & lit) if op == "and" else (self.mask(e.parent) | lit)
                e.parent = None
            else:
                e.mask = e.formula.evaluate(self.table)
        return e.mask


def beam_search(ranks: np.ndarray, table: ConceptMatrix, params: SearchParams) -> list[list[BeamEntry]]:
    """Run the search for a block of neurons.

    Parameters
    ----------
    ranks : ndarray
        (N, D) float64 average ranks of D neurons' activations (:func:`rank_block`).
    table : ConceptMatrix
        The N×C concept table, rows aligned with ``ranks``.
    params : SearchParams
        Search parameters.

    Returns
    -------
    list of list of BeamEntry
        Per neuron, the final beam (at most ``params.beam`` entries), best first; empty when no
        literal is valid.
    """
    params.validate()
    if ranks.ndim != 2 or ranks.shape[0] != table.n_samples:
        raise ValueError(f"ranks of shape {ranks.shape} do not match a table of {table.n_samples} rows")
    block = _Block(np.asarray(ranks, dtype=np.float64), table, params)
    beams, cands = block.atoms()
    for _ in range(2, params.length + 1):
        beams = block.expand(beams, cands)
    for beam in beams:
        for e in beam:
            block.mask(e)
    return beams
