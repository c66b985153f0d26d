"""Candidate slices: sets of probe images that may share a cue the model relies on.

Four sources, each a function from per-image arrays to :class:`Slice` objects. Everything that
is *chosen* from the data (cluster centres, INVERT labels, activation thresholds) is fitted on the
discovery split only; membership of the confirmation images is then a fixed function of each
image, so the confirmation test never sees a choice made on its own images.

* :func:`concept_slices` (source ``concept``): the images a concept column marks. Concepts that
  coincide with the label (within every class almost all or almost none of the images carry them)
  are left out: they cannot be compared within a class.
* :func:`cluster_slices` (``cluster``): per class, k-means clusters of the embeddings (z-scored,
  PCA) with the predicted probabilities appended, so that the centres follow the model's errors
  (the error-aware mixture idea of Domino, Eyuboglu et al. 2022; the Spotlight's search for
  high-loss regions of the embedding, d'Eon et al. 2022). Centres are fitted on discovery images;
  every image of the class is then assigned to the nearest centre *in embedding coordinates
  only*: a slice is defined by image content, never by the outputs it is tested on (assigning by
  the probabilities too would make "members get more of class t" true by construction).
* :func:`attribution_slices` (``attribution``): per class, the images whose Grad-CAM map puts
  more of its mass outside the object mask than the area outside the object (a fixed rule, no
  threshold fitted).
* :func:`unit_slices` (``invert``): units that INVERT labels, on the discovery split, with a
  formula involving an artifact concept; members are the images on which the unit fires above the
  discovery-split quantile matching the formula's share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from explainkit.invert.api import label_neurons

__all__ = ["GRID_CELLS", "Slice", "attribution_slices", "cluster_slices", "coincides_with_label", "concept_slices",
           "unit_slices"]

#: Names of the 3×3 grid cells of :func:`attribution_slices` locations, row by row.
GRID_CELLS = ("top-left", "top", "top-right", "left", "centre", "right", "bottom-left", "bottom", "bottom-right")


@dataclass
class Slice:
    """A candidate set of images.

    Attributes
    ----------
    key : str
        Stable identifier, e.g. ``concept:stamp`` or ``cluster:square/2``.
    cue : str
        Readable name (concept name, or a generated description).
    source : str
        ``concept``, ``cluster``, ``attribution`` or ``invert``.
    member : ndarray
        (N,) bool: the images in the slice (both splits).
    eligible : ndarray
        (N,) bool: the images that enter the comparison (members and their reference images).
    evidence : dict
        Source-specific JSON (cluster index, unit label, location, ...).
    """

    key: str
    cue: str
    source: str
    member: np.ndarray
    eligible: np.ndarray
    evidence: dict[str, Any] = field(default_factory=dict)


def coincides_with_label(column: np.ndarray, labels: np.ndarray, tolerance: float) -> bool:
    """Whether a concept is (almost) a function of the class: in every class at most ``tolerance`` differ.

    Parameters
    ----------
    column : ndarray
        (N,) bool concept column.
    labels : ndarray
        (N,) class index.
    tolerance : float
        Largest share of a class's images that may disagree with the class's majority.

    Returns
    -------
    bool
        True when no class has both enough carriers and non-carriers to compare.
    """
    for y in np.unique(labels):
        share = float(column[labels == y].mean())
        if min(share, 1.0 - share) > tolerance:
            return False
    return True


def concept_slices(concepts: np.ndarray, names: Sequence[str], labels: np.ndarray, *, tolerance: float
                   ) -> tuple[list[Slice], list[dict[str, str]]]:
    """One slice per concept column, except those coinciding with the label.

    Parameters
    ----------
    concepts : ndarray
        (N, C) bool concept table.
    names : sequence of str
        C concept names.
    labels : ndarray
        (N,) class index.
    tolerance : float
        See :func:`coincides_with_label`.

    Returns
    -------
    slices : list of Slice
        Members: the images marked with the concept; every image is eligible.
    excluded : list of dict
        ``{"concept", "reason"}`` for the concepts left out.
    """
    slices, excluded = [], []
    everyone = np.ones(len(labels), bool)
    for j, name in enumerate(names):
        col = concepts[:, j].astype(bool)
        if not col.any():
            excluded.append({"concept": name, "reason": "no image carries it"})
        elif coincides_with_label(col, labels, tolerance):
            excluded.append({"concept": name, "reason": f"coincides with the label (within every class at most "
                                                        f"{tolerance:.0%} of the images differ)"})
        else:
            slices.append(Slice(f"concept:{name}", name, "concept", col, everyone, {"concept": name}))
    return slices, excluded


def _standardised_pca(emb: np.ndarray, fit_rows: np.ndarray, n_components: int, seed: int) -> np.ndarray:
    """Z-score (on ``fit_rows``), PCA fitted on ``fit_rows``, scaled to unit total variance: (N, k)."""
    from sklearn.decomposition import PCA

    fit = emb[fit_rows].astype(np.float64)
    mean, sd = fit.mean(0), fit.std(0)
    keep = sd > 1e-8 * max(1.0, float(np.abs(fit).max(initial=0.0)))
    if not keep.any():
        return np.zeros((emb.shape[0], 1))
    z = (emb[:, keep] - mean[keep]) / sd[keep]
    k = max(1, min(n_components, int(keep.sum()), int(fit_rows.sum()) - 1))
    pca = PCA(n_components=k, random_state=seed).fit(z[fit_rows])
    total = float(pca.explained_variance_.sum())
    return pca.transform(z) / np.sqrt(total if total > 0 else 1.0)


def cluster_slices(emb: np.ndarray, probs: np.ndarray, labels: np.ndarray, discovery: np.ndarray,
                   class_names: Sequence[str], *, clusters: int, n_components: int, error_weight: float,
                   min_size: int, seed: int) -> list[Slice]:
    """Per-class k-means slices of the embeddings, fitted on the discovery split.

    Parameters
    ----------
    emb : ndarray
        (N, D) embeddings (pooled penultimate features).
    probs : ndarray
        (N, K) predicted probabilities.
    labels : ndarray
        (N,) class index.
    discovery : ndarray
        (N,) bool: the discovery split.
    class_names : sequence of str
        K names.
    clusters : int
        Clusters per class (fewer when a class has fewer than ``clusters * min_size`` discovery images).
    n_components : int
        PCA components kept.
    error_weight : float
        Weight of the appended probabilities (0: embeddings only).
    min_size : int
        Clusters with fewer discovery members are dropped.
    seed : int
        Seed of PCA and k-means.

    Returns
    -------
    list of Slice
        Members: the class's images nearest to a centre (embedding coordinates); eligible: the
        class's images.
    """
    from sklearn.cluster import KMeans

    z = _standardised_pca(emb, discovery, n_components, seed)
    x = np.concatenate([z, error_weight * probs], 1) if error_weight > 0 else z
    out = []
    for y in np.unique(labels):
        own = labels == y
        fit_rows = own & discovery
        k = min(clusters, int(fit_rows.sum()) // max(1, min_size))
        if k < 2:
            continue
        centres = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(x[fit_rows]).cluster_centers_[:, : z.shape[1]]
        assign = np.full(len(labels), -1)
        assign[own] = ((z[own][:, None, :] - centres[None]) ** 2).sum(2).argmin(1)
        name = class_names[y] if y < len(class_names) else str(y)
        for c in range(k):
            member = assign == c
            if int((member & discovery).sum()) < min_size:
                continue
            out.append(Slice(f"cluster:{name}/{c}", f"{name} cluster {c}", "cluster", member, own.copy(),
                             {"class": name, "cluster": c, "clusters_in_class": k}))
    return out


def attribution_slices(outside: np.ndarray, grid: np.ndarray, labels: np.ndarray, discovery: np.ndarray,
                       class_names: Sequence[str]) -> list[Slice]:
    """Per class, the images whose explanation map sits outside the object more than its area.

    Parameters
    ----------
    outside : ndarray
        (N,) map mass outside the object minus the area outside it (NaN: no object mask).
    grid : ndarray
        (N, 9) share of the outside mass in each cell of a 3×3 grid (NaN rows: no mask).
    labels : ndarray
        (N,) class index.
    discovery : ndarray
        (N,) bool: the discovery split (for the location only).
    class_names : sequence of str
        Class names.

    Returns
    -------
    list of Slice
        Members: images of the class with ``outside > 0``; eligible: images of the class with a mask.
    """
    has = np.isfinite(outside)
    out = []
    for y in np.unique(labels[has]):
        eligible = has & (labels == y)
        member = eligible & (outside > 0)
        if not member.any() or member.sum() == eligible.sum():
            continue
        disc = member & discovery
        ref = eligible & ~member & discovery
        where = None
        if disc.any() and ref.any():
            where = GRID_CELLS[int(np.argmax(grid[disc].mean(0) - grid[ref].mean(0)))]
        name = class_names[y] if y < len(class_names) else str(y)
        cue = f"{name}: attribution outside the object" + (f" ({where})" if where else "")
        out.append(Slice(f"attribution:{name}", cue, "attribution", member, eligible,
                         {"class": name, "location": where, "rule": "Grad-CAM mass outside the object mask > area "
                                                                     "outside the mask"}))
    return out


def unit_slices(acts: np.ndarray, concepts: np.ndarray, concept_names: Sequence[str], artifacts: Sequence[str],
                discovery: np.ndarray, *, layer: str, alpha: float, seed: int) -> tuple[list[Slice], list[dict]]:
    """Slices of the units INVERT labels with artifact concepts, all choices made on the discovery split.

    INVERT (:func:`explainkit.invert.label_neurons`) searches and confirms labels on a split of
    the discovery images; a unit whose accepted best formula uses an artifact concept positively
    becomes a slice: the images where its activation exceeds the discovery-split quantile that
    leaves the formula's share of images above it.

    Parameters
    ----------
    acts : ndarray
        (N, D) unit activations (the embedding layer, pooled).
    concepts : ndarray
        (N, C) bool concept table.
    concept_names : sequence of str
        C names.
    artifacts : sequence of str
        Artifact concepts.
    discovery : ndarray
        (N,) bool.
    layer : str
        Layer name (for the record).
    alpha : float
        INVERT's false discovery rate over the units.
    seed : int
        Seed of INVERT's search/confirm split inside the discovery images.

    Returns
    -------
    slices : list of Slice
        One per artifact unit (every image eligible).
    units : list of dict
        The artifact units with their INVERT label (formula, held-out AUROC, q).
    """
    rows = np.flatnonzero(discovery)
    results = label_neurons(acts[rows], concepts[rows].astype(bool), list(concept_names), alpha=alpha, seed=seed)
    everyone = np.ones(acts.shape[0], bool)
    slices, units = [], []
    for r in results:
        best = r.best
        if not r.accepted or best is None:
            continue
        hits = [c for _, c, negated in best.terms if c in artifacts and not negated]
        if not hits:
            continue
        threshold = float(np.quantile(acts[rows, r.neuron], 1.0 - best.fraction))
        info = {"layer": layer, "unit": r.neuron, "formula": best.formula, "artifact_concepts": hits,
                "auroc_held_out": best.confirm.auroc if best.confirm else None, "q": r.q, "threshold": threshold,
                "fraction": best.fraction}
        units.append(info)
        slices.append(Slice(f"invert:{layer}/{r.neuron}", f"unit {r.neuron} of {layer}: {best.formula}", "invert",
                            acts[:, r.neuron] > threshold, everyone, info))
    return slices, units
