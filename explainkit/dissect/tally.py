"""Network Dissection's tallies, computed from a mergeable per-layer state.

The reference (Bau et al. 2017; NetDissect-Lite) makes two passes over stored feature maps: a
quantile pass for each unit's threshold ``T_u``, then a tally pass that upsamples every map whose
maximum exceeds ``T_u`` to the mask resolution (bilinear), binarises it at ``T_u`` and counts, for
every concept, the pixels of the unit mask, of the concept mask and of both.

Here one pass suffices and the state merges exactly across shards (:class:`DissectState`):

* each unit keeps its K largest values (:mod:`~explainkit.dissect.quantile`), which fixes ``T_u``
  exactly at the end;
* each unit keeps the maps of the images whose maximum exceeds its current K-th largest value τ.
  τ only grows as data arrives and ``T_u ≥`` the final τ, so a map dropped at any point has its
  maximum ``≤ T_u`` and is one the reference skips too (``feature_map.max() > threshold``). The
  kept set after the last merge is the same whatever the partition or merge order;
* each image keeps its concept-mask pixel counts (for the union term), and the images with a kept
  map keep their concept masks, bit-packed (only masks that are neither empty nor the whole image:
  the others follow from the counts), dropped with their last map.

:func:`tally` needs no further access to the data and returns per-image counts, from which the IoU of
every unit and concept, and its confidence interval, follow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from explainkit.dissect.quantile import merge_top, quantile_threshold, top_values
from explainkit.errors import DataError

__all__ = ["DissectState", "Tally", "tally", "upsample"]


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of (P, h, w) maps to (P, H, W), half-pixel centres, edges clamped.

    This is what the reference's ``scipy.misc.imresize(map, size, mode="F")`` (PIL bilinear)
    computes when enlarging (equal to float32 rounding; tested against PIL).
    """
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


@dataclass
class DissectState:
    """The mergeable Network Dissection state of one layer.

    Attributes
    ----------
    k : int
        Largest values kept per unit (:func:`~explainkit.dissect.quantile.top_k_size` of the probe set).
    top : ndarray or None
        (D, k) float32, each unit's largest values, descending (``-inf`` padding).
    images : ndarray
        (n,) int64 probe indices seen, ascending.
    label_pixels : ndarray
        (n, C) int64 concept-mask pixels per image.
    pair_image, pair_unit : ndarray
        (P,) int64: the (image, unit) maps kept, sorted by unit then image.
    pair_map : ndarray
        (P, h, w) float32 the kept maps.
    pair_peak : ndarray
        (P,) float32 their maxima.
    mask_key : ndarray
        (m, 2) int64 (image, concept) of the stored concept masks: only images with a kept map, and
        only masks that are neither empty nor the whole image (those follow from ``label_pixels``).
    mask_bits : ndarray
        (m, ⌈H·W/8⌉) uint8 the stored masks, bit-packed.
    mask_size : tuple of int
        (H, W) of the masks.
    """

    k: int
    top: np.ndarray | None = None
    images: np.ndarray | None = None
    label_pixels: np.ndarray | None = None
    pair_image: np.ndarray | None = None
    pair_unit: np.ndarray | None = None
    pair_map: np.ndarray | None = None
    pair_peak: np.ndarray | None = None
    mask_key: np.ndarray | None = None
    mask_bits: np.ndarray | None = None
    mask_size: tuple[int, int] = (0, 0)

    @property
    def empty(self) -> bool:
        """Whether no batch has been added."""
        return self.top is None

    @property
    def map_size(self) -> tuple[int, int]:
        """(h, w) of the unit maps."""
        return tuple(self.pair_map.shape[1:])  # type: ignore[union-attr,return-value]

    @property
    def n_positions(self) -> int:
        """Values per unit seen: images × map positions."""
        h, w = self.map_size
        return int(self.images.size) * h * w  # type: ignore[union-attr]

    @classmethod
    def from_batch(cls, indices: np.ndarray, maps: torch.Tensor, masks: np.ndarray, k: int) -> DissectState:
        """The state of one batch.

        Parameters
        ----------
        indices : ndarray
            (B,) probe indices.
        maps : torch.Tensor
            (B, D, h, w) unit maps.
        masks : ndarray
            (B, C, H, W) bool concept masks at the resolution the maps are upsampled to.
        k : int
            Largest values to keep per unit.

        Returns
        -------
        DissectState
            The batch's state.
        """
        b, d, h, w = maps.shape
        indices = np.asarray(indices, np.int64)
        maps = maps.detach().float().cpu()
        top = top_values(maps.permute(1, 0, 2, 3).reshape(d, b * h * w), k)
        peak = maps.amax(dim=(2, 3)).numpy()
        bi, ui = np.nonzero(peak > top[:, -1][None, :])
        flat = np.asarray(masks, bool).reshape(b, masks.shape[1], -1)
        pixels = flat.sum(-1).astype(np.int64)
        rows, cols = np.nonzero((pixels > 0) & (pixels < flat.shape[-1]) & np.isin(np.arange(b), bi)[:, None])
        state = cls(k, top, indices, pixels, indices[bi], ui.astype(np.int64), maps.numpy()[bi, ui], peak[bi, ui],
                    np.stack([indices[rows], cols.astype(np.int64)], 1), np.packbits(flat[rows, cols], axis=-1),
                    (int(masks.shape[2]), int(masks.shape[3])))
        return state._sorted()

    def _sorted(self) -> DissectState:
        order = np.lexsort((self.pair_image, self.pair_unit))
        rows = np.argsort(self.images, kind="stable")
        keep = np.isin(self.mask_key[:, 0], self.pair_image)
        key, bits = self.mask_key[keep], self.mask_bits[keep]
        masks = np.lexsort((key[:, 1], key[:, 0]))
        return DissectState(self.k, self.top, self.images[rows], self.label_pixels[rows], self.pair_image[order],
                            self.pair_unit[order], self.pair_map[order], self.pair_peak[order], key[masks],
                            bits[masks], self.mask_size)

    def merge(self, other: DissectState) -> DissectState:
        """Union of two states over disjoint images (associative and commutative)."""
        if self.empty:
            return other
        if other.empty:
            return self
        if (self.k != other.k or self.top.shape != other.top.shape or self.map_size != other.map_size
                or self.mask_size != other.mask_size):
            raise DataError("cannot merge Network Dissection states of different layers or probe sets")
        if np.intersect1d(self.images, other.images).size:
            raise DataError("Network Dissection states overlap; shards must be disjoint")
        top = merge_top(self.top, other.top)
        tau = top[:, -1]
        unit = np.concatenate([self.pair_unit, other.pair_unit])
        peak = np.concatenate([self.pair_peak, other.pair_peak])
        keep = peak > tau[unit]
        merged = DissectState(
            self.k, top, np.concatenate([self.images, other.images]),
            np.concatenate([self.label_pixels, other.label_pixels]),
            np.concatenate([self.pair_image, other.pair_image])[keep], unit[keep],
            np.concatenate([self.pair_map, other.pair_map])[keep], peak[keep],
            np.concatenate([self.mask_key, other.mask_key]), np.concatenate([self.mask_bits, other.mask_bits]),
            self.mask_size,
        )
        return merged._sorted()

    def image_masks(self, images: np.ndarray) -> np.ndarray:
        """(len(images), C, H·W) bool concept masks of images (ascending) that have a kept map (stored bits)."""
        n_pixels = self.mask_size[0] * self.mask_size[1]
        rows = np.searchsorted(self.images, images)
        out = (self.label_pixels[rows] == n_pixels)[:, :, None].repeat(n_pixels, axis=2)
        sel = np.flatnonzero(np.isin(self.mask_key[:, 0], images))
        key = self.mask_key[sel]
        out[np.searchsorted(images, key[:, 0]), key[:, 1]] = np.unpackbits(
            self.mask_bits[sel], axis=1, count=n_pixels).astype(bool)
        return out


@dataclass
class Tally:
    """Per-image counts behind every unit's IoU (only the images where a unit fires are listed).

    Attributes
    ----------
    thresholds : ndarray
        (D,) the units' activation thresholds ``T_u``.
    quantile : float
        The top share q that defined them.
    images : ndarray
        (n,) probe indices of all images.
    label_pixels : ndarray
        (n, C) concept-mask pixels per image.
    pair_image, pair_unit : ndarray
        (P,) the (image, unit) pairs whose map exceeds the threshold somewhere.
    pair_fire : ndarray
        (P,) pixels of the binarised unit mask.
    pair_inter : ndarray
        (P, C) pixels of unit mask ∩ concept mask.
    pixels_per_image : int
        H × W of the masks.
    """

    thresholds: np.ndarray
    quantile: float
    images: np.ndarray
    label_pixels: np.ndarray
    pair_image: np.ndarray
    pair_unit: np.ndarray
    pair_fire: np.ndarray
    pair_inter: np.ndarray
    pixels_per_image: int

    @property
    def n_units(self) -> int:
        """D."""
        return int(self.thresholds.size)

    def _pair_weights(self, weights: np.ndarray | None) -> np.ndarray | None:
        if weights is None:
            return None
        return np.asarray(weights, np.float64)[np.searchsorted(self.images, self.pair_image)]

    def unit_pixels(self, weights: np.ndarray | None = None) -> np.ndarray:
        """(D,) pixels of each unit's mask over the probe set (images weighted by ``weights``)."""
        w = self._pair_weights(weights)
        fire = self.pair_fire if w is None else self.pair_fire * w
        return np.bincount(self.pair_unit, weights=fire, minlength=self.n_units)

    def intersections(self, weights: np.ndarray | None = None) -> np.ndarray:
        """(D, C) pixels of unit mask ∩ concept mask over the probe set (images weighted by ``weights``)."""
        w = self._pair_weights(weights)
        out = np.zeros((self.n_units, self.label_pixels.shape[1]))
        np.add.at(out, self.pair_unit, self.pair_inter if w is None else self.pair_inter * w[:, None])
        return out

    def iou(self, weights: np.ndarray | None = None) -> np.ndarray:
        """(D, C) IoU = Σ|M∩L| / (Σ|M| + Σ|L| − Σ|M∩L|) over images (0 when the union is empty).

        The sums run over all images before the division, as in the reference (a dataset-wide IoU,
        not a mean of per-image IoUs); every image is annotated for every concept, so the union uses
        all of the unit's pixels.

        Parameters
        ----------
        weights : ndarray, optional
            (n,) image weights (bootstrap counts), aligned with :attr:`images`; thresholds stay fixed.

        Returns
        -------
        ndarray
            (D, C) IoU.
        """
        inter = self.intersections(weights)
        labels = self.label_pixels if weights is None else self.label_pixels * np.asarray(weights)[:, None]
        union = self.unit_pixels(weights)[:, None] + labels.sum(0)[None, :] - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)

    def iou_se(self, units: np.ndarray, concepts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """IoU and its delta-method standard error for (unit, concept) pairs, images as the unit.

        The IoU is a ratio of sums over images, R = ΣI_i / ΣU_i (U_i the per-image union); its
        linearisation gives Var(R) ≈ n / (n − 1) · Σ(I_i − R·U_i)² / (ΣU_i)².

        Parameters
        ----------
        units, concepts : ndarray
            (m,) unit and concept indices.

        Returns
        -------
        iou, se : ndarray
            (m,) estimates and standard errors (NaN when the union is empty).
        """
        n = self.images.size
        lab = self.label_pixels.astype(np.float64)
        row = np.searchsorted(self.images, self.pair_image)
        iou = np.full(units.size, np.nan)
        se = np.full(units.size, np.nan)
        for j, (u, c) in enumerate(zip(units, concepts)):
            sel = self.pair_unit == u
            inter = self.pair_inter[sel, c].astype(np.float64)
            fire = self.pair_fire[sel].astype(np.float64)
            lab_u = lab[row[sel], c]
            union = fire + lab_u - inter
            total_union = union.sum() + lab[:, c].sum() - lab_u.sum()
            if total_union <= 0 or n < 2:
                continue
            r = inter.sum() / total_union
            resid = np.sum((inter - r * union) ** 2) + r * r * (np.sum(lab[:, c] ** 2) - np.sum(lab_u**2))
            iou[j] = r
            se[j] = np.sqrt(n / (n - 1) * resid) / total_union
        return iou, se


def tally(state: DissectState, quantile: float, *, chunk: int = 32) -> Tally:
    """Thresholds, binarised unit masks and their overlaps with every concept mask.

    Parameters
    ----------
    state : DissectState
        The merged state of one layer.
    quantile : float
        Top share q (0.005 in the reference).
    chunk : int
        Images whose masks are unpacked at once.

    Returns
    -------
    Tally
        The per-image counts.
    """
    if state.empty:
        raise DataError("no images were mapped")
    thresholds = quantile_threshold(state.top, state.n_positions, quantile)
    fires = state.pair_peak > thresholds[state.pair_unit]
    images, units, maps = state.pair_image[fires], state.pair_unit[fires], state.pair_map[fires]
    fire = np.zeros(images.size, np.int64)
    inter = np.zeros((images.size, state.label_pixels.shape[1]), np.int64)
    distinct = np.unique(images)
    for start in range(0, distinct.size, chunk):
        block = distinct[start : start + chunk]
        masks = torch.from_numpy(state.image_masks(block)).float()
        rows = np.flatnonzero(np.isin(images, block))
        up = upsample(torch.from_numpy(maps[rows]), state.mask_size)
        unit_mask = (up > torch.from_numpy(thresholds[units[rows]])[:, None, None]).reshape(rows.size, -1)
        fire[rows] = unit_mask.sum(1).numpy()
        which = np.searchsorted(block, images[rows])
        for b in range(block.size):
            sel = np.flatnonzero(which == b)
            inter[rows[sel]] = torch.round(unit_mask[sel].float() @ masks[b].T).long().numpy()
    return Tally(thresholds, quantile, state.images, state.label_pixels, images, units, fire, inter,
                 int(state.mask_size[0] * state.mask_size[1]))
