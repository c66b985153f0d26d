"""EvalProtoPNet part consistency and stability (Huang et al., ICCV 2023, arXiv 2212.05946).

For each prototype and each image of its class, the prototype's region is the square of half-side
``half_size`` around the first argmax of its similarity map upsampled bicubically to the input size
(clipped to the image). A part counts as activated when its keypoint lies inside that region; the
keypoint of a part given as a mask is the mask's centroid (CUB gives keypoints; our synthetic world
gives masks). Only visible parts count.

* Consistency: ``freq[p, k]`` = (own-class images where part ``k`` is in ``p``'s region) / (own-class
  images where ``k`` is visible); ``p`` is consistent when ``max_k freq[p, k] >= threshold`` (0.8).
  Model score = share of consistent prototypes, with a Wilson interval over prototypes.
* Stability: Gaussian noise ``N(0, sigma²)`` clipped to ``±clip`` is added to the model input (the
  reference uses σ 0.2 clipped at 0.25 in ImageNet-normalised space); ``p``'s stability = share of its
  own-class images whose whole part vector is unchanged. Model score = mean over prototypes, with a
  percentile bootstrap interval over images.

Prototypes without a class (channels of a plain CNN, shared prototypes) are evaluated on every image.
The reference's ``half_size`` is 36 px at 224 px input; ``half_size=None`` scales it to the input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from torch import nn

from explainkit.analyzers.metric import metric
from explainkit.prototypes.adapters import PrototypeAdapter
from explainkit.stats import bootstrap_distribution, wilson_interval

__all__ = ["PartRows", "PartScores", "clipped_noise", "evaluate_parts", "part_hits", "part_keypoints", "part_scores",
           "prototype_part_hits", "region_boxes"]

#: The reference's region half-size (px) and input side (px).
REFERENCE_HALF_SIZE, REFERENCE_INPUT = 36, 224


def part_keypoints(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints of part masks: each mask's centroid.

    Parameters
    ----------
    masks : ndarray
        (N, K, H, W) boolean part masks.

    Returns
    -------
    keypoints : ndarray
        (N, K, 2) ``(y, x)`` centroids in pixels (NaN where the part is absent).
    visible : ndarray
        (N, K) True where the mask is not empty.
    """
    masks = np.asarray(masks, bool)
    _, _, height, width = masks.shape
    count = masks.sum(axis=(2, 3))
    visible = count > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        y = (masks.sum(axis=3) * np.arange(height)).sum(axis=2) / count
        x = (masks.sum(axis=2) * np.arange(width)).sum(axis=2) / count
    return np.stack([y, x], axis=-1), visible


def region_boxes(maps: np.ndarray, input_size: tuple[int, int], half_size: float | None = None) -> np.ndarray:
    """Each map's region: the square of half-side ``half_size`` around the upsampled map's first argmax.

    Parameters
    ----------
    maps : ndarray
        (N, P, h, w) similarity maps, higher = more similar.
    input_size : tuple of int
        (H, W) model input size.
    half_size : float, optional
        Half-side in input pixels (default: 36/224 of the shorter side, as the reference at 224 px).

    Returns
    -------
    ndarray
        (N, P, 4) float ``(y0, y1, x0, x1)`` closed boxes (both ends included, as the reference's
        ``in_bbox``), ``[argmax − half_size, argmax + half_size]`` clipped to ``[0, H]`` and ``[0, W]``.
    """
    height, width = (int(s) for s in input_size)
    if half_size is None:
        half_size = REFERENCE_HALF_SIZE * min(height, width) / REFERENCE_INPUT
    maps = np.asarray(maps, np.float32)
    n, p = maps.shape[:2]
    boxes = np.empty((n, p, 4), np.float64)
    for i in range(n):
        for j in range(p):
            up = cv2.resize(maps[i, j], (width, height), interpolation=cv2.INTER_CUBIC)
            cy, cx = divmod(int(np.argmax(up)), width)
            boxes[i, j] = (max(0, cy - half_size), min(height, cy + half_size),
                           max(0, cx - half_size), min(width, cx + half_size))
    return boxes


def part_hits(boxes: np.ndarray, keypoints: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """(N, P, K) True where visible part ``k``'s keypoint lies in prototype ``p``'s region on image ``n``."""
    y, x = keypoints[:, None, :, 0], keypoints[:, None, :, 1]
    b = boxes[:, :, None, :]
    inside = (y >= b[..., 0]) & (y <= b[..., 1]) & (x >= b[..., 2]) & (x <= b[..., 3])
    return inside & visible[:, None, :]


@dataclass
class PartRows:
    """Per-image part hits accumulated over batches (mergeable).

    Attributes
    ----------
    indices, labels : ndarray
        (N,) probe indices and model class indices (-1: unknown).
    visible : ndarray
        (N, K) visible parts.
    hits, noisy : ndarray
        (N, P, K) part hits on clean inputs and on noisy inputs (``noisy`` is ``None`` without noise).
    """

    indices: np.ndarray
    labels: np.ndarray
    visible: np.ndarray
    hits: np.ndarray
    noisy: np.ndarray | None

    @classmethod
    def empty(cls, n_parts: int, n_prototypes: int) -> PartRows:
        """No rows."""
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, n_parts), bool),
                   np.zeros((0, n_prototypes, n_parts), bool), None)

    def merge(self, other: PartRows) -> PartRows:
        """Rows of both, in probe order."""
        if not len(other.indices):
            return self
        if not len(self.indices):
            return other
        order = np.argsort(np.concatenate([self.indices, other.indices]), kind="stable")
        noisy = None if self.noisy is None or other.noisy is None else np.concatenate([self.noisy, other.noisy])[order]
        return PartRows(np.concatenate([self.indices, other.indices])[order],
                        np.concatenate([self.labels, other.labels])[order],
                        np.concatenate([self.visible, other.visible])[order],
                        np.concatenate([self.hits, other.hits])[order], noisy)


@dataclass
class PartScores:
    """EvalProtoPNet scores of one model (fractions in [0, 1], higher = more interpretable).

    Attributes
    ----------
    consistency, consistency_ci : float, tuple of float
        Share of consistent prototypes among those with an own-class image; 95 % Wilson interval over them.
    stability, stability_ci : float, tuple of float
        Mean prototype stability; 95 % percentile bootstrap interval over images (``nan`` without noise).
    frequency : ndarray
        (P, K) per-part activation frequency over own-class images.
    best_part : ndarray
        (P,) index of the most frequent part.
    consistent : ndarray
        (P,) ``max_k frequency >= threshold``.
    prototype_stability : ndarray
        (P,) share of own-class images whose part vector is unchanged under noise (``nan`` without noise).
    n_images : ndarray
        (P,) own-class images each prototype was evaluated on.
    """

    consistency: float
    consistency_ci: tuple[float, float]
    stability: float
    stability_ci: tuple[float, float]
    frequency: np.ndarray
    best_part: np.ndarray
    consistent: np.ndarray
    prototype_stability: np.ndarray
    n_images: np.ndarray
    params: dict = field(default_factory=dict)

    def to_json(self, parts: Sequence[str], ids: Sequence[int] | None = None) -> dict:
        """JSON-ready summary; ``parts`` names the K parts, ``ids`` the P prototypes (default 0..P-1)."""
        def num(v: float) -> float | None:
            return None if not np.isfinite(v) else round(float(v), 6)
        return {
            "consistency": metric(self.consistency, self.consistency_ci, n=int((self.n_images > 0).sum()),
                                  unit="fraction of prototypes", higher_is_better=True,
                                  interval="Wilson 95% over prototypes"),
            "stability": metric(self.stability, self.stability_ci, n=int(self.n_images.max(initial=0)),
                                unit="mean fraction of own-class images", higher_is_better=True,
                                interval="percentile bootstrap 95% over images"),
            "params": self.params,
            "prototypes": [{"prototype": int(ids[p]) if ids is not None else p, "part": parts[int(self.best_part[p])],
                            "frequency": num(self.frequency[p, self.best_part[p]]),
                            "consistent": bool(self.consistent[p]), "stability": num(self.prototype_stability[p]),
                            "n_images": int(self.n_images[p])} for p in range(self.consistent.size)],
        }


def part_scores(hits: np.ndarray, visible: np.ndarray, own: np.ndarray, noisy_hits: np.ndarray | None = None, *,
                threshold: float = 0.8, n_resamples: int = 2000, seed: int = 0) -> PartScores:
    """Consistency and stability from part hits.

    Parameters
    ----------
    hits : ndarray
        (N, P, K) output of :func:`part_hits` on clean inputs.
    visible : ndarray
        (N, K) visible parts.
    own : ndarray
        (N, P) True where image ``n`` is of prototype ``p``'s class (all True for class-less prototypes).
    noisy_hits : ndarray, optional
        (N, P, K) hits on noisy inputs (stability is ``nan`` without them).
    threshold : float
        Frequency at or above which a prototype is consistent (reference 0.8).
    n_resamples, seed : int
        Bootstrap of the stability interval.

    Returns
    -------
    PartScores
    """
    own = np.asarray(own, bool)
    seen = np.einsum("np,nk->pk", own.astype(np.float64), visible.astype(np.float64))
    count = np.einsum("np,npk->pk", own.astype(np.float64), hits.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        frequency = np.where(seen > 0, count / np.maximum(seen, 1), 0.0)
    best = frequency.argmax(axis=1)
    consistent = frequency.max(axis=1, initial=0.0) >= threshold
    n_proto = consistent.size
    n_images = own.sum(axis=0)
    stable = np.full(n_proto, np.nan)
    stability, ci = float("nan"), (float("nan"), float("nan"))
    if noisy_hits is not None:
        same = (hits == noisy_hits).all(axis=2).astype(np.float64) * own  # (N, P)
        with np.errstate(invalid="ignore", divide="ignore"):
            stable = same.sum(axis=0) / n_images
        stability = float(np.nanmean(stable)) if np.isfinite(stable).any() else float("nan")
        ownf = own.astype(np.float64)

        def stat(idx: np.ndarray) -> np.ndarray:
            with np.errstate(invalid="ignore", divide="ignore"):
                idx = idx.astype(np.int64)
                return np.nanmean(same[idx].sum(axis=1) / ownf[idx].sum(axis=1), axis=1)
        reps = bootstrap_distribution(np.arange(own.shape[0]), stat, n_resamples=n_resamples, seed=seed)
        reps = reps[np.isfinite(reps)]
        if reps.size:
            ci = tuple(float(q) for q in np.quantile(reps, [0.025, 0.975]))
    rated = n_images > 0  # prototypes without an own-class image (e.g. unlabelled data) are left out
    return PartScores(float(consistent[rated].mean()) if rated.any() else float("nan"),
                      wilson_interval(int(consistent[rated].sum()), int(rated.sum())), stability, ci, frequency, best,
                      consistent, stable, n_images, {"threshold": threshold})


def clipped_noise(shape: Sequence[int], sigma: float, clip: float, generator: torch.Generator) -> torch.Tensor:
    """The reference's input noise: ``N(0, sigma²)`` clipped to ``[-clip, clip]``, of ``shape`` (CPU)."""
    return (torch.randn(tuple(shape), generator=generator) * sigma).clamp(-clip, clip)


def prototype_part_hits(adapter: PrototypeAdapter, model: nn.Module, x: torch.Tensor, keypoints: np.ndarray,
                        visible: np.ndarray, *, prototypes: Sequence[int] | None = None,
                        half_size: float | None = None) -> np.ndarray:
    """(B, P, K) part hits of one batch: maps → regions (:func:`region_boxes`) → :func:`part_hits`.

    ``x`` is (B, 3, H, W) model inputs; ``keypoints`` (B, K, 2) and ``visible`` (B, K) come from
    :func:`part_keypoints` at the input size; ``prototypes`` selects prototypes (default all).
    """
    with torch.no_grad():
        maps = adapter.similarity_maps(model, x, prototypes).float().cpu().numpy()
    return part_hits(region_boxes(maps, tuple(x.shape[-2:]), half_size), keypoints, visible)


def evaluate_parts(adapter: PrototypeAdapter, model: nn.Module, x: torch.Tensor, labels: Sequence[int],
                   part_masks: np.ndarray, *, half_size: float | None = None, threshold: float = 0.8,
                   sigma: float = 0.2, clip: float = 0.25, batch_size: int = 64, n_resamples: int = 2000,
                   seed: int = 0) -> PartScores:
    """EvalProtoPNet consistency and stability of every prototype of ``adapter``.

    Parameters
    ----------
    adapter : PrototypeAdapter
        Any prototype adapter (channels of a plain CNN included).
    model : torch.nn.Module
        The model.
    x : torch.Tensor
        (N, 3, H, W) preprocessed model inputs.
    labels : sequence of int
        (N,) class of each image.
    part_masks : ndarray
        (N, K, H, W) boolean part masks at the input size.
    half_size : float, optional
        Region half-side in input pixels (default 36/224 of the side).
    threshold : float
        Consistency threshold on the best part's frequency.
    sigma, clip : float
        Noise standard deviation and clipping bound, in the model's input units; ``sigma=0`` skips stability.
    batch_size : int
        Images per forward pass.
    n_resamples, seed : int
        Bootstrap resamples; seed of the noise and of the bootstrap.

    Returns
    -------
    PartScores
    """
    labels = np.asarray(labels, np.int64)
    keypoints, visible = part_keypoints(part_masks)
    gen = torch.Generator().manual_seed(seed)

    def hits(noise: bool) -> np.ndarray:
        out = []
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size]
            if noise:
                xb = xb + clipped_noise(xb.shape, sigma, clip, gen).to(xb)
            out.append(prototype_part_hits(adapter, model, xb, keypoints[start : start + batch_size],
                                           visible[start : start + batch_size], half_size=half_size))
        return np.concatenate(out)

    clean = hits(False)
    n_proto = clean.shape[1]
    classes = [adapter.prototype_class(p) for p in range(n_proto)]
    own = np.stack([np.ones_like(labels, bool) if c is None else labels == c for c in classes], axis=1)
    scores = part_scores(clean, visible, own, hits(True) if sigma > 0 else None, threshold=threshold,
                         n_resamples=n_resamples, seed=seed)
    scores.params = {"threshold": threshold, "half_size": half_size, "sigma": sigma, "clip": clip,
                     "keypoint": "part-mask centroid", "seed": seed}
    return scores
