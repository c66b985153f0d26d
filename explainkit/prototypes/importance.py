"""Local and global importance of image characteristics for prototypes (Nauta et al. 2021).

Local importance of characteristic ``c`` for prototype ``p`` on image ``x``::

    delta_c(x, p) = s_p(x)[l*] - s_p(perturb_c(x))[l*],   l* = argmax over locations of s_p(x)

read at the location that matched best in the *original* image (``readout="fixed"``, the final
reference; ``"max"`` re-maximises over the perturbed map, as the first-generation notebooks did).
Positive: removing the characteristic lowers the similarity, so the prototype relies on it. Units
are the adapter's similarity units (ProtoPNet: log-similarity). The relative view divides by the
original similarity and is reported separately, never mixed with raw units.

Global importance over a split of images is the similarity-weighted mean::

    global_c(p) = sum_x w(s_p(x)) delta_c(x, p) / sum_x w(s_p(x))

with ``w(s) = s`` (``similarity``: the reference; valid for similarities that are never negative)
or, for similarities that can be <= 0, a documented non-negative weight: ``clip`` = max(s, 0)
(identical to the reference for post-ReLU activations), ``softplus`` = log(1 + e^s) (positive and
increasing for any real similarity: cosine, projection, ProtoPNet's ``-d``), or ``uniform`` = 1
(the plain mean). ``auto`` takes the adapter's ``default_weight``: ``similarity`` for ``log``,
``exp`` and softmax channels, ``clip`` for raw channel activations, ``softplus`` for ``linear``,
``cosine`` and ``projection``. :class:`SplitAccumulator` streams
these sums with O(P·C) memory, plus a Poisson bootstrap (O(R·P·C)) for confidence intervals and a
bounded, seeded sample of local deltas for the per-prototype tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import nn

from explainkit.adapters import select_logits
from explainkit.errors import ConfigError
from explainkit.loading.handle import ModelHandle
from explainkit.prototypes.adapters import PrototypeAdapter
from explainkit.prototypes.decision import DecisionScores, decision_scores, resolve_targets
from explainkit.prototypes.perturb import Perturbation

__all__ = [
    "WEIGHTS",
    "LazyViews",
    "LocalSample",
    "LocalScores",
    "SplitAccumulator",
    "best_matches",
    "local_importance",
    "perturbed_views",
    "read_matches",
    "relative_drop",
    "resolve_weight",
    "score_views",
    "scores_from_maps",
    "similarity_weight",
    "view_images",
]

#: Weighting rules of the global mean (see the module docstring).
WEIGHTS = ("auto", "similarity", "clip", "softplus", "uniform")


def resolve_weight(rule: str, adapter: PrototypeAdapter) -> str:
    """The weight rule to use: ``auto`` becomes the adapter's ``default_weight``; validates ``rule``."""
    if rule not in WEIGHTS:
        raise ConfigError(f"unknown weight {rule!r}; choose from {', '.join(WEIGHTS)}")
    return adapter.default_weight if rule == "auto" else rule


def similarity_weight(s: np.ndarray, rule: str) -> np.ndarray:
    """Non-negative weight of each original similarity ``s`` (any shape) under a resolved ``rule``."""
    s = np.asarray(s, dtype=np.float64)
    if rule == "similarity":
        if np.any(s < 0):
            raise ConfigError("weight='similarity' needs similarities >= 0; use weight='clip' or 'softplus'")
        return s
    if rule == "clip":
        return np.maximum(s, 0.0)
    if rule == "softplus":
        return np.logaddexp(0.0, s)
    if rule == "uniform":
        return np.ones_like(s)
    raise ConfigError(f"unknown weight {rule!r}")


@dataclass
class LocalScores:
    """Local importances of one batch.

    Attributes
    ----------
    similarity : ndarray
        (B, P) original similarity at the best-matching location.
    location : ndarray
        (B, P) flat index ``row * w + column`` of that location in the (h, w) map.
    delta : ndarray
        (B, P, C) original minus perturbed similarity at that location, per characteristic.
    grid : tuple of int
        (h, w) of the similarity maps.
    decision : DecisionScores or None
        Decision changes (when asked for).
    contribution : ndarray or None
        (B, P) each prototype's contribution to the target logit (when the adapter has one).
    valid : ndarray or None
        (B, P) whether the prototype was read on the image (``None``: everywhere). Restricting
        prototypes to regions (:mod:`explainkit.prototypes.regions`) leaves an image out of a
        prototype's global scores when the prototype's region is absent from it (its similarity
        and deltas are then 0 and its weight 0).
    """

    similarity: np.ndarray
    location: np.ndarray
    delta: np.ndarray
    grid: tuple[int, int]
    decision: DecisionScores | None = None
    contribution: np.ndarray | None = None
    valid: np.ndarray | None = None

    def subset(self, mask: np.ndarray) -> LocalScores:
        """The scores of the images selected by the (B,) boolean ``mask``."""
        return LocalScores(self.similarity[mask], self.location[mask], self.delta[mask], self.grid,
                           None if self.decision is None else self.decision.subset(mask),
                           None if self.contribution is None else self.contribution[mask],
                           None if self.valid is None else self.valid[mask])


def relative_drop(delta: np.ndarray, similarity: np.ndarray) -> np.ndarray:
    """Relative view of local importances: ``delta / similarity`` (NaN where the similarity is <= 0).

    Parameters
    ----------
    delta : ndarray
        (..., C) local importances.
    similarity : ndarray
        (...) original similarities.

    Returns
    -------
    ndarray
        (..., C) fraction of the original similarity lost (same sign convention as ``delta``).
    """
    s = np.asarray(similarity, np.float64)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(s > 0, np.asarray(delta, np.float64) / np.where(s > 0, s, 1.0), np.nan)


def view_images(images: Sequence[Image.Image], perturbations: Sequence[Perturbation]) -> list[Image.Image]:
    """The originals followed by every perturbed copy, at source resolution.

    Parameters
    ----------
    images : sequence of PIL.Image.Image
        B original images at source resolution.
    perturbations : sequence of Perturbation
        The C perturbations.

    Returns
    -------
    list of PIL.Image.Image
        B (1 + C) images: the B originals, then B images per perturbation.
    """
    return list(images) + [p(im) for p in perturbations for im in images]


def perturbed_views(images: Sequence[Image.Image], perturbations: Sequence[Perturbation],
                    preprocess: Callable[[Sequence[Image.Image]], torch.Tensor]) -> torch.Tensor:
    """Model inputs of the originals followed by every perturbed copy.

    Parameters
    ----------
    images : sequence of PIL.Image.Image
        B original images at source resolution.
    perturbations : sequence of Perturbation
        The C perturbations, applied at source resolution before ``preprocess``.
    preprocess : callable
        Images → (N, 3, H, W) model inputs.

    Returns
    -------
    torch.Tensor
        (B (1 + C), 3, H, W): the B originals, then B images per perturbation.
    """
    return preprocess(view_images(images, perturbations))


@dataclass
class LazyViews:
    """The views of :func:`view_images`, preprocessed only when a slice of them is read.

    Behaves like the (B (1 + C), 3, H, W) tensor of :func:`perturbed_views` for ``len`` and slicing,
    but holds the images (8-bit, at source resolution) rather than their float inputs: at 224² the
    float inputs of 32 images under 7 views take 135 MB, while a pass reads only a chunk of them.
    Each read preprocesses again (about 1 ms per 224² view, against some 100 ms for its forward pass
    through ResNet-50), so scoring the model and three copies costs four preprocessings per view.

    Attributes
    ----------
    images : list of PIL.Image.Image
        The views, originals first.
    preprocess : callable
        Images → (N, 3, H, W) model inputs (per image, so a slice's inputs equal the slice of all inputs).
    device : torch.device or str
        Where the inputs are put.
    """

    images: list[Image.Image]
    preprocess: Callable[[Sequence[Image.Image]], torch.Tensor]
    device: torch.device | str = "cpu"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, rows: slice) -> torch.Tensor:
        """(n, 3, H, W) model inputs of the views ``rows``."""
        return self.preprocess(self.images[rows]).to(self.device)


def _check_readout(readout: str) -> None:
    if readout not in ("fixed", "max"):
        raise ConfigError(f"readout must be 'fixed' or 'max', not {readout!r}")


def scores_from_maps(maps: torch.Tensor, n_images: int, readout: str = "fixed") -> LocalScores:
    """Local importances from the similarity maps of :func:`perturbed_views`.

    Parameters
    ----------
    maps : torch.Tensor
        (B·(1 + C), P, h, w) similarity maps, originals first.
    n_images : int
        B.
    readout : str
        ``"fixed"`` (the original best location) or ``"max"`` (best location of the perturbed map).

    Returns
    -------
    LocalScores
        Similarities, locations and (B, P, C) deltas.
    """
    _check_readout(readout)
    b = n_images
    c = maps.shape[0] // b - 1
    s0, loc = best_matches(maps[:b])
    sc = read_matches(maps[b:], loc.repeat(c, 1), readout).reshape(c, b, -1)
    delta = (s0[None] - sc).permute(1, 2, 0)  # (B, P, C)
    grid = (int(maps.shape[2]), int(maps.shape[3]))
    return LocalScores(s0.cpu().numpy(), loc.cpu().numpy(), delta.cpu().numpy(), grid)


def best_matches(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each map's largest similarity and its flat location (the first on ties).

    Parameters
    ----------
    maps : torch.Tensor
        (N, P, h, w) similarity maps.

    Returns
    -------
    similarity : torch.Tensor
        (N, P) float32 best similarity.
    location : torch.Tensor
        (N, P) flat index ``row * w + column``.
    """
    return maps.flatten(2).float().max(dim=2)


def read_matches(maps: torch.Tensor, location: torch.Tensor, readout: str) -> torch.Tensor:
    """Similarities of perturbed maps read as ``readout`` says.

    Parameters
    ----------
    maps : torch.Tensor
        (N, P, h, w) similarity maps of perturbed views.
    location : torch.Tensor
        (N, P) flat best location on each view's original (used by ``"fixed"``).
    readout : str
        ``"fixed"``: the map at ``location``; ``"max"``: the map's maximum.

    Returns
    -------
    torch.Tensor
        (N, P) float32 similarities.
    """
    flat = maps.flatten(2).float()
    if readout == "fixed":
        return flat.gather(2, location[:, :, None].to(flat.device)).squeeze(2)
    return flat.amax(dim=2)


def local_importance(
    adapter: PrototypeAdapter,
    model: ModelHandle | nn.Module,
    images: Sequence[Image.Image],
    perturbations: Sequence[Perturbation],
    preprocess: Callable[[Sequence[Image.Image]], torch.Tensor],
    *,
    prototypes: Sequence[int] | None = None,
    readout: str = "fixed",
    device: torch.device | str = "cpu",
    max_batch: int | None = None,
    decision: bool = False,
    labels: np.ndarray | None = None,
) -> LocalScores:
    """Local importances of a batch: the originals and all perturbed copies go through the model together.

    Parameters
    ----------
    adapter : PrototypeAdapter
        Gives the similarity maps.
    model : ModelHandle or torch.nn.Module
        The model (in eval mode).
    images : sequence of PIL.Image.Image
        B original images at source resolution.
    perturbations : sequence of Perturbation
        The C characteristics, applied at source resolution before ``preprocess``.
    preprocess : callable
        Images → (N, 3, H, W) model inputs (the model's own preprocessing).
    prototypes, readout, device, max_batch, decision, labels
        See :func:`score_views`.

    Returns
    -------
    LocalScores
        Similarities, locations and (B, P, C) deltas (and decision changes when asked for).
    """
    x = perturbed_views(images, perturbations, preprocess)
    return score_views(adapter, model, x.to(device), len(images), prototypes=prototypes, readout=readout,
                       max_batch=max_batch, decision=decision, labels=labels)


def score_views(
    adapter: PrototypeAdapter,
    model: ModelHandle | nn.Module,
    x: torch.Tensor | LazyViews,
    n_images: int,
    *,
    prototypes: Sequence[int] | None = None,
    readout: str = "fixed",
    max_batch: int | None = None,
    decision: bool = False,
    labels: np.ndarray | torch.Tensor | None = None,
) -> LocalScores:
    """Local importances (and decision changes) of prepared views (:func:`perturbed_views`).

    The views go through the model ``max_batch`` at a time, originals first; each chunk's maps are
    read (:func:`read_matches`) and dropped at once, so memory holds one chunk's maps and the
    (B, P) best matches, never the maps of every view. The result equals :func:`scores_from_maps`
    of all maps.

    Parameters
    ----------
    adapter : PrototypeAdapter
        Gives the similarity maps.
    model : ModelHandle or torch.nn.Module
        The model (in eval mode).
    x : torch.Tensor or LazyViews
        (B (1 + C), 3, H, W) originals then perturbed copies, on the model's device.
    n_images : int
        B.
    prototypes : sequence of int, optional
        Only these prototypes (default all).
    readout : str
        ``"fixed"`` (the original best location) or ``"max"`` (best location of the perturbed map).
    max_batch : int, optional
        At most this many inputs per forward pass (default all at once).
    decision : bool
        Also run the model to its output: the target's log-probability and logit changes
        (:mod:`explainkit.prototypes.decision`) and the prototypes' contributions to the target.
    labels : array, optional
        (B,) target classes in the model's output order (-1: the predicted class).

    Returns
    -------
    LocalScores
        Similarities, locations and (B, P, C) deltas.
    """
    _check_readout(readout)
    b = n_images
    step = max_batch or len(x)
    logits: list[torch.Tensor] = []
    s0 = loc = sc = None
    grid = (0, 0)
    with torch.no_grad():
        for i in range(0, len(x), step):  # originals come first, so a copy's original is read before the copy
            rows = slice(i, min(len(x), i + step))
            if decision:
                maps, output = adapter.similarity_and_output(model, x[rows], prototypes)
                logits.append(select_logits(output).float())
            else:
                maps = adapter.similarity_maps(model, x[rows], prototypes)
            if s0 is None:
                grid = (int(maps.shape[2]), int(maps.shape[3]))
                s0 = torch.empty(b, maps.shape[1], device=maps.device)
                loc = torch.empty(b, maps.shape[1], dtype=torch.long, device=maps.device)
                sc = torch.empty(len(x) - b, maps.shape[1], device=maps.device)
            k = max(0, min(rows.stop, b) - rows.start)  # originals in this chunk
            if k:
                s0[rows.start : rows.start + k], loc[rows.start : rows.start + k] = best_matches(maps[:k])
            if rows.stop > b:
                first = max(rows.start, b)
                image = torch.arange(first - b, rows.stop - b, device=loc.device) % b
                sc[first - b : rows.stop - b] = read_matches(maps[first - rows.start :], loc[image], readout)
            del maps  # before the next chunk's forward allocates its own
    assert s0 is not None and loc is not None and sc is not None, "no views to score"
    delta = (s0[None] - sc.reshape(-1, *s0.shape)).permute(1, 2, 0)  # (B, P, C)
    scores = LocalScores(s0.cpu().numpy(), loc.cpu().numpy(), delta.cpu().numpy(), grid)
    if decision:
        z = torch.cat(logits)
        targets = resolve_targets(z[:b], labels)
        scores.decision = decision_scores(z, targets, b)
        s0_dev = s0.to(z.device)
        parts = []
        for i in range(0, b, step):  # in chunks too: a gradient pass over every original at once would not be
            part = adapter.contributions(model, x[i : min(b, i + step)], targets[i : i + step], s0_dev[i : i + step],
                                         prototypes)
            if part is None:  # the adapter has no link to the decision
                break
            parts.append(part.detach().cpu())
        scores.contribution = torch.cat(parts).numpy().astype(np.float64) if parts else None
    return scores


@dataclass
class LocalSample:
    """A bounded, seeded sample of per-image local scores (bottom-k by a per-image priority).

    Keeping the ``capacity`` images with the smallest priorities (ties by index) is a uniform
    random sample when priorities are i.i.d. uniform, and merging two samples keeps the same set
    whatever the batch order, so the sample does not depend on how the data was partitioned.

    Attributes
    ----------
    capacity : int
        Most images kept.
    priority : ndarray
        (n,) priorities (images forced in have priority -1).
    index : ndarray
        (n,) probe-set indices.
    similarity, location : ndarray
        (n, P) original similarity and best location.
    delta : ndarray
        (n, P, C) local importances.
    """

    capacity: int
    priority: np.ndarray = field(default_factory=lambda: np.zeros(0))
    index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    similarity: np.ndarray | None = None
    location: np.ndarray | None = None
    delta: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.index.size)

    def merge(self, other: LocalSample) -> LocalSample:
        """The bottom-``capacity`` union of two samples."""
        if other.similarity is None:
            return self
        if self.similarity is None:
            return other
        prio = np.concatenate([self.priority, other.priority])
        idx = np.concatenate([self.index, other.index])
        keep = np.lexsort((idx, prio))[: self.capacity]
        keep = keep[np.argsort(idx[keep], kind="stable")]  # store in index order
        return LocalSample(
            self.capacity, prio[keep], idx[keep],
            np.concatenate([self.similarity, other.similarity])[keep],
            np.concatenate([self.location, other.location])[keep],
            np.concatenate([self.delta, other.delta])[keep],
        )


@dataclass
class SplitAccumulator:
    """Streaming sums for the global importance of one split (mergeable: sums, maxima, samples).

    Attributes
    ----------
    n : int
        Images seen.
    sum_w : ndarray
        (P,) sum of weights.
    sum_ws : ndarray
        (P,) sum of weight × original similarity (denominator of the relative view).
    sum_wd : ndarray
        (P, C) sum of weight × local importance.
    sum_wabs : ndarray
        (P, C) sum of weight × absolute local importance (the null level of re-initialised copies).
    sum_contrib : ndarray
        (P,) sum of the positive part of each prototype's contribution to the target logit (0
        when the adapter has no link to the decision).
    boot_w, boot_wd : ndarray
        (R, P) and (R, P, C) the same sums with Poisson(1) bootstrap counts per image.
    best_similarity, best_index, best_location : ndarray
        (P,) the top-activating image of each prototype (index -1 before any image).
    sample : LocalSample
        Local scores of a bounded image sample.
    """

    n: int
    sum_w: np.ndarray
    sum_ws: np.ndarray
    sum_wd: np.ndarray
    sum_wabs: np.ndarray
    sum_contrib: np.ndarray
    boot_w: np.ndarray
    boot_wd: np.ndarray
    best_similarity: np.ndarray
    best_index: np.ndarray
    best_location: np.ndarray
    sample: LocalSample

    @classmethod
    def empty(cls, n_prototypes: int, n_characteristics: int, n_resamples: int, sample_size: int) -> SplitAccumulator:
        """All-zero sums for P prototypes, C characteristics and R bootstrap resamples."""
        p, c, r = n_prototypes, n_characteristics, n_resamples
        return cls(0, np.zeros(p), np.zeros(p), np.zeros((p, c)), np.zeros((p, c)), np.zeros(p), np.zeros((r, p)),
                   np.zeros((r, p, c)),
                   np.full(p, -np.inf), np.full(p, -1, np.int64), np.zeros(p, np.int64), LocalSample(sample_size))

    def add(self, scores: LocalScores, indices: np.ndarray, weight_rule: str, boot_counts: np.ndarray,
            priorities: np.ndarray) -> SplitAccumulator:
        """A new accumulator with one batch added.

        Parameters
        ----------
        scores : LocalScores
            The batch's local scores (B images).
        indices : ndarray
            (B,) probe-set indices.
        weight_rule : str
            A resolved rule (:func:`resolve_weight`).
        boot_counts : ndarray
            (R, B) Poisson(1) counts of each image in each bootstrap resample.
        priorities : ndarray
            (B,) sample priorities in [0, 1) (-1 forces an image into the sample).

        Returns
        -------
        SplitAccumulator
            The updated state.
        """
        w = similarity_weight(scores.similarity, weight_rule)  # (B, P)
        if scores.valid is not None:
            w = w * scores.valid
        d = scores.delta.astype(np.float64)  # (B, P, C)
        wd = w[..., None] * d
        counts = boot_counts.astype(np.float64)
        contrib = np.zeros(w.shape[1]) if scores.contribution is None else np.maximum(scores.contribution, 0).sum(0)
        batch = SplitAccumulator(
            len(indices), w.sum(0), (w * scores.similarity).sum(0), wd.sum(0), (w[..., None] * np.abs(d)).sum(0),
            contrib, counts @ w, np.einsum("rb,bpc->rpc", counts, wd),
            *_best(scores, indices), LocalSample(self.sample.capacity),
        )
        keep = np.lexsort((indices, priorities))[: self.sample.capacity]
        keep = keep[np.argsort(np.asarray(indices)[keep], kind="stable")]  # samples are stored in index order
        batch.sample = LocalSample(self.sample.capacity, priorities[keep], np.asarray(indices)[keep],
                                   scores.similarity[keep].astype(np.float32), scores.location[keep].astype(np.int32),
                                   scores.delta[keep].astype(np.float32))
        return self.merge(batch)

    def merge(self, other: SplitAccumulator) -> SplitAccumulator:
        """Sum two accumulators (associative and commutative)."""
        best = _better(other.best_similarity, other.best_index, self.best_similarity, self.best_index)
        return SplitAccumulator(
            self.n + other.n, self.sum_w + other.sum_w, self.sum_ws + other.sum_ws, self.sum_wd + other.sum_wd,
            self.sum_wabs + other.sum_wabs, self.sum_contrib + other.sum_contrib,
            self.boot_w + other.boot_w, self.boot_wd + other.boot_wd,
            np.where(best, other.best_similarity, self.best_similarity),
            np.where(best, other.best_index, self.best_index),
            np.where(best, other.best_location, self.best_location),
            self.sample.merge(other.sample),
        )


def _better(s_a: np.ndarray, i_a: np.ndarray, s_b: np.ndarray, i_b: np.ndarray) -> np.ndarray:
    """Whether (s_a, i_a) beats (s_b, i_b): higher similarity, then lower index (-1 never wins)."""
    valid = i_a >= 0
    return valid & ((i_b < 0) | (s_a > s_b) | ((s_a == s_b) & (i_a < i_b)))


def _best(scores: LocalScores, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per prototype the batch image with the highest similarity (ties: the lowest index; -1 if never valid)."""
    order = np.argsort(indices, kind="stable")
    valid = np.ones(scores.similarity.shape, bool) if scores.valid is None else scores.valid
    sims = np.where(valid, scores.similarity, -np.inf)[order]
    arg = sims.argmax(axis=0)  # first maximum = lowest index
    cols = np.arange(sims.shape[1])
    index = np.where(valid[order][arg, cols], np.asarray(indices, np.int64)[order][arg], -1)
    return sims[arg, cols].astype(np.float64), index, scores.location[order][arg, cols].astype(np.int64)
