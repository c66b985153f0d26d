"""The boolean N×C concept table, validated and stored sparse for rank-sum products."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from explainkit.errors import DataError

__all__ = ["ConceptMatrix"]


class ConceptMatrix:
    """A validated boolean concept table (rows = samples, columns = named concepts).

    Parameters
    ----------
    concepts : ndarray or scipy.sparse matrix
        (N, C) with values in {0, 1} (bool, integer or float).
    names : sequence of str
        C distinct concept names, in column order.

    Raises
    ------
    DataError
        Not 2-D, non-binary values, or names that do not match the columns.

    Notes
    -----
    The table is kept as CSC and CSR matrices of float64 ones: column access is cheap, ``Yᵀ M``
    for a dense (N, k) matrix ``M`` costs ``nnz · k`` (rank sums of every concept for a block of
    neurons in one product), and sums over the rows of a mask cost only the nonzeros of those rows.
    """

    def __init__(self, concepts: np.ndarray | sp.spmatrix | sp.sparray, names: Sequence[str]) -> None:
        if sp.issparse(concepts):
            csc = sp.csc_matrix(concepts, dtype=np.float64)
            csc.sum_duplicates()
            values = csc.data
        else:
            arr = np.asarray(concepts)
            if arr.ndim != 2:
                raise DataError(f"concepts must be a 2-D (N, C) table, got shape {arr.shape}")
            values = arr
            csc = None
        if values.dtype != bool and not np.isin(values, (0, 1)).all():
            raise DataError("concept table holds values other than 0/1")
        if csc is None:
            csc = sp.csc_matrix(np.asarray(concepts, dtype=bool), dtype=np.float64)
        csc.eliminate_zeros()
        names = tuple(str(n) for n in names)
        if len(names) != csc.shape[1]:
            raise DataError(f"{len(names)} concept names for {csc.shape[1]} concept columns")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise DataError(f"duplicate concept names: {', '.join(dup[:5])}")
        if any(not n for n in names):
            raise DataError("concept names must be non-empty")
        self.csc = csc
        self._t = csc.T.tocsr()
        self._csr = csc.tocsr()
        self.names = names
        self.counts = np.diff(csc.indptr).astype(np.int64)

    @property
    def n_samples(self) -> int:
        """N."""
        return int(self.csc.shape[0])

    @property
    def n_concepts(self) -> int:
        """C."""
        return int(self.csc.shape[1])

    def index(self, name: str) -> int:
        """Column of concept ``name`` (DataError if absent)."""
        try:
            return self.names.index(name)
        except ValueError:
            raise DataError(f"no concept named {name!r}") from None

    def column(self, c: int) -> np.ndarray:
        """(N,) bool column ``c``."""
        out = np.zeros(self.n_samples, dtype=bool)
        out[self.csc.indices[self.csc.indptr[c] : self.csc.indptr[c + 1]]] = True
        return out

    def sums(self, values: np.ndarray) -> np.ndarray:
        """``Yᵀ values``: per concept, the sum of each column of ``values`` over its samples.

        Parameters
        ----------
        values : ndarray
            (N, k) float64.

        Returns
        -------
        ndarray
            (C, k) float64 (exact for sums of half-integers below 2**52).
        """
        return np.asarray(self._t @ np.ascontiguousarray(values, dtype=np.float64))

    def masked_sums(self, mask: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per concept, the sum of ``values`` and the count over the samples in ``mask``.

        Only the rows in ``mask`` are read (or the rows outside it, subtracted from the column
        totals, when that is fewer), so small masks cost little.

        Parameters
        ----------
        mask : ndarray
            (N,) bool.
        values : ndarray
            (N,) float64 (e.g. one neuron's ranks).

        Returns
        -------
        sums, counts : ndarray
            (C,) float64 each: ``Yᵀ(values ⊙ mask)`` and ``Yᵀ mask`` (exact for half-integer values).
        """
        flip = 2 * int(np.count_nonzero(mask)) > self.n_samples
        rows = np.flatnonzero(~mask if flip else mask)
        sub = self._csr[rows]
        weights = np.repeat(values[rows], np.diff(sub.indptr))
        sums = np.bincount(sub.indices, weights=weights, minlength=self.n_concepts)
        counts = np.bincount(sub.indices, minlength=self.n_concepts).astype(np.float64)
        if flip:
            sums = self.sums(values[:, None])[:, 0] - sums
            counts = self.counts - counts
        return sums, counts

    def rows(self, indices: np.ndarray) -> ConceptMatrix:
        """The table restricted to the rows ``indices`` (in that order)."""
        return ConceptMatrix(self._csr[np.asarray(indices, dtype=np.int64)], self.names)

    def row_keys(self) -> np.ndarray:
        """(N,) int64 ids of distinct rows (equal rows share an id; ids ordered by first use)."""
        weights = np.random.default_rng(0).standard_normal(self.n_concepts)
        h = np.asarray(self.csc.tocsr() @ weights)
        _, first, inverse = np.unique(h, return_index=True, return_inverse=True)
        rank = np.empty(first.size, dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(first.size)
        return rank[inverse.ravel()]
