"""``label_neurons``: INVERT labels for every neuron of a layer, with held-out significance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from explainkit.errors import ConfigError, DataError
from explainkit.invert.concepts import ConceptMatrix
from explainkit.invert.ranks import rank_block
from explainkit.invert.search import BeamEntry, SearchParams, beam_search
from explainkit.invert.significance import (
    Confirmation,
    accept,
    bh_q_values,
    confirm,
    same_data_test,
    stratified_split,
    validate_decision,
)
from explainkit.report.jsonify import jsonable
from explainkit.stats import RankedScores

__all__ = ["Explanation", "NeuronResult", "label_neurons"]


@dataclass
class Explanation:
    """One formula of a neuron's final beam.

    Attributes
    ----------
    formula : str
        Readable form, e.g. ``box & ~mailbox``.
    terms : list of list
        Left-deep machine form ``[[None, name, negated], [op, name, negated], …]``, op ``and``/``or``.
    concepts : list of str
        Concepts the formula uses.
    auroc : float
        Exact AUROC on the search split (what the search maximised; optimistic).
    differentiability : float
        ``2 |auroc − ½|``.
    fraction : float
        Share of search-split samples satisfying the formula.
    n_positive : int
        Their number.
    length : int
        Number of literals (the search step that produced it).
    p_two_sided_same_data, log10_p_two_sided_same_data, z_same_data : float
        The reference's two-sided Mann–Whitney test on the search split (selection-biased; for
        comparison only).
    confirm : Confirmation or None
        Held-out AUROC, DeLong CI and one-sided test (``None`` without a confirm split).
    q : float or None
        Benjamini–Hochberg q over the layer's neurons (best explanation only).
    accepted : bool or None
        ``q < alpha`` and CI beyond the AUROC floor (best explanation only).
    """

    formula: str
    terms: list[list]
    concepts: list[str]
    auroc: float
    differentiability: float
    fraction: float
    n_positive: int
    length: int
    p_two_sided_same_data: float
    log10_p_two_sided_same_data: float
    z_same_data: float
    confirm: Confirmation | None = None
    q: float | None = None
    accepted: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite numbers become ``None``)."""
        return jsonable(self.__dict__)


@dataclass
class NeuronResult:
    """A neuron's labels: the final beam, best first, and the decision on the best one.

    Attributes
    ----------
    neuron : int
        Column of the activation matrix.
    name : str
        Neuron name (its index unless names were given).
    explanations : list of Explanation
        The final beam, best first (empty when no formula satisfies the fraction limits).
    n_search, n_confirm : int
        Sizes of the two splits.
    q : float or None
        Benjamini–Hochberg q of the best explanation's held-out p-value.
    accepted : bool or None
        Whether the best explanation is accepted (``None`` without a confirm split).
    """

    neuron: int
    name: str
    explanations: list[Explanation] = field(default_factory=list)
    n_search: int = 0
    n_confirm: int = 0
    q: float | None = None
    accepted: bool | None = None

    @property
    def best(self) -> Explanation | None:
        """The best explanation (or ``None``)."""
        return self.explanations[0] if self.explanations else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return jsonable(self.__dict__)


def _activations(activations: Any) -> np.ndarray:
    if hasattr(activations, "detach"):
        activations = activations.detach().cpu().numpy()
    a = np.asarray(activations)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise DataError(f"activations must be (N,) or (N, D) with N, D > 0, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise DataError(f"activations must be real numbers, got dtype {a.dtype}")
    if not np.isfinite(a).all():
        bad = np.flatnonzero(~np.isfinite(a).all(axis=0))
        raise DataError(f"activations contain NaN or inf (neurons {', '.join(map(str, bad[:5]))})")
    return a


def label_neurons(
    activations: np.ndarray,
    concepts: np.ndarray | sp.spmatrix | ConceptMatrix,
    concept_names: Sequence[str] | None = None,
    *,
    length: int = 3,
    beam: int = 3,
    min_fraction: float = 0.0,
    max_fraction: float = 0.5,
    mode: str = "positive",
    limit_search: int | None = None,
    dedupe: bool = True,
    confirm_fraction: float = 0.4,
    split: tuple[np.ndarray, np.ndarray] | None = None,
    strata: np.ndarray | None = None,
    alpha: float = 0.05,
    auroc_floor: float = 0.75,
    confidence: float = 0.95,
    seed: int = 0,
    neuron_names: Sequence[str] | None = None,
    block_size: int = 64,
) -> list[NeuronResult]:
    """Label neurons with compositional concept formulas (INVERT) and test the labels.

    Parameters
    ----------
    activations : ndarray or torch.Tensor
        (N,) one neuron or (N, D) a layer: one scalar per sample and neuron (e.g. spatially
        pooled channels).
    concepts : ndarray, scipy.sparse matrix or ConceptMatrix
        (N, C) boolean concept table, rows aligned with ``activations``.
    concept_names : sequence of str
        C names in column order (not needed with a ConceptMatrix).
    length, beam : int
        Maximum formula length L and beam size B (reference defaults 3, 3).
    min_fraction, max_fraction : float
        Allowed share of samples satisfying a formula (inclusive; also 0 < share < 1).
    mode : {"positive", "negative"}
        Maximise AUROC (concepts that switch the neuron on) or minimise it (switch it off).
    limit_search : int, optional
        Expansion candidates: the ``limit_search`` literals with the largest 2·|AUROC − ½|.
    dedupe : bool
        Keep only the first (shortest) of beam formulas with identical masks; ``False``
        reproduces the reference, which keeps e.g. both ``c`` and ``c & ~d`` for disjoint c, d.
    confirm_fraction : float
        Share of samples held out for confirmation (seeded, stratified). 0 searches on all
        samples as the reference does, and then nothing is accepted or rejected.
    split : tuple of ndarray, optional
        Explicit ``(search_indices, confirm_indices)``; overrides ``confirm_fraction``.
    strata : ndarray, optional
        (N,) integer strata for the split; default: distinct concept-table rows.
    alpha : float
        False discovery rate for the Benjamini–Hochberg correction over the neurons.
    auroc_floor : float
        A label is accepted only if its held-out CI lies beyond this AUROC.
    confidence : float
        Level of the DeLong CIs.
    seed : int
        Seed of the split.
    neuron_names : sequence of str, optional
        D names (default: the column indices).
    block_size : int
        Neurons searched together (memory ≈ N · block_size · 6 · 8 bytes per step).

    Returns
    -------
    list of NeuronResult
        One per neuron, in column order.

    Raises
    ------
    DataError
        Misshapen or non-finite activations, a bad concept table, too few samples to split.
    ConfigError
        Out-of-range parameters.
    """
    params = SearchParams(length, beam, min_fraction, max_fraction, mode, limit_search, dedupe)
    params.validate()
    validate_decision(alpha, auroc_floor, confidence, confirm_fraction)
    if block_size < 1:
        raise ConfigError(f"block_size must be positive, not {block_size}")
    a = _activations(activations)
    if isinstance(concepts, ConceptMatrix):
        table = concepts
    else:
        if concept_names is None:
            raise ConfigError("concept_names are required with a plain concept table")
        table = ConceptMatrix(concepts, concept_names)
    n, d = a.shape
    if table.n_samples != n:
        raise DataError(f"concept table has {table.n_samples} rows for {n} activation rows")
    names = [str(i) for i in range(d)] if neuron_names is None else [str(x) for x in neuron_names]
    if len(names) != d:
        raise DataError(f"{len(names)} neuron names for {d} neurons")
    if split is not None:
        search_idx, confirm_idx = (np.asarray(s, dtype=np.int64) for s in split)
    elif confirm_fraction > 0:
        keys = table.row_keys() if strata is None else np.asarray(strata)
        if keys.shape != (n,):
            raise DataError(f"strata must have shape ({n},), got {keys.shape}")
        search_idx, confirm_idx = stratified_split(keys, confirm_fraction, seed)
    else:
        search_idx, confirm_idx = np.arange(n), np.zeros(0, dtype=np.int64)
    held_out = confirm_idx.size > 0
    search_table = table if search_idx.size == n and not held_out else table.rows(search_idx)
    confirm_table = table.rows(confirm_idx) if held_out else None
    results: list[NeuronResult] = []
    for start in range(0, d, block_size):
        stop = min(start + block_size, d)
        ranks, ties = rank_block(a[search_idx, start:stop])
        for j, entries in enumerate(beam_search(ranks, search_table, params)):
            col = start + j
            ranked = RankedScores(a[confirm_idx, col]) if held_out else None
            expl = [_explanation(e, search_table, confirm_table, ranked, float(ties[j]), mode, confidence)
                    for e in entries]
            results.append(NeuronResult(col, names[col], expl, int(search_idx.size), int(confirm_idx.size)))
    if held_out:
        _decide(results, mode, alpha, auroc_floor)
    return results


def _explanation(e: BeamEntry, search_table: ConceptMatrix, confirm_table: ConceptMatrix | None,
                 ranked: RankedScores | None, ties: float, mode: str, confidence: float) -> Explanation:
    n_total = search_table.n_samples
    names = search_table.names
    test = same_data_test(e.rank_sum, e.n, n_total, ties)
    conf = None
    if ranked is not None and confirm_table is not None:
        conf = confirm(ranked, e.formula.evaluate(confirm_table), mode, confidence)
    return Explanation(
        formula=e.formula.to_string(names), terms=e.formula.to_terms(names),
        concepts=[names[c] for c in e.formula.concepts()], auroc=e.auroc,
        differentiability=2.0 * abs(e.auroc - 0.5), fraction=e.n / n_total, n_positive=e.n,
        length=e.formula.length, p_two_sided_same_data=test.p, log10_p_two_sided_same_data=test.log10_p,
        z_same_data=test.z, confirm=conf,
    )


def _decide(results: list[NeuronResult], mode: str, alpha: float, auroc_floor: float) -> None:
    p = np.array([r.best.confirm.p if r.best is not None and r.best.confirm is not None else np.nan
                  for r in results])
    q = bh_q_values(p)
    for r, qv in zip(results, q):
        r.q = float(qv)
        r.accepted = bool(r.best is not None and r.best.confirm is not None
                          and accept(qv, r.best.confirm, mode, alpha, auroc_floor))
        if r.best is not None:
            r.best.q, r.best.accepted = r.q, r.accepted
