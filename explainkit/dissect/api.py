"""``dissect``: Network Dissection of one layer from arrays (unit maps and concept masks)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from explainkit.dissect.labels import UnitLabel, label_units, validate_labelling
from explainkit.dissect.quantile import top_k_size
from explainkit.dissect.tally import DissectState, Tally, tally
from explainkit.errors import DataError

__all__ = ["dissect", "dissect_tally"]


def dissect_tally(maps: np.ndarray | torch.Tensor, masks: np.ndarray, *, quantile: float = 0.005,
                  batch_size: int = 64) -> Tally:
    """Tally a layer's unit maps against concept masks (the streaming state, fed batch by batch).

    Parameters
    ----------
    maps : ndarray or torch.Tensor
        (N, D, h, w) unit activation maps.
    masks : ndarray
        (N, C, H, W) bool concept masks (H, W ≥ h, w: maps are upsampled to the masks).
    quantile : float
        Top share q of activations that fires a unit (0.005 in the reference).
    batch_size : int
        Images per streamed batch.

    Returns
    -------
    Tally
        Per-image counts (see :class:`~explainkit.dissect.tally.Tally`).
    """
    maps = torch.as_tensor(maps)
    masks = np.asarray(masks, dtype=bool)
    if maps.ndim != 4 or masks.ndim != 4 or maps.shape[0] != masks.shape[0] or maps.shape[0] == 0:
        raise DataError(f"maps must be (N, D, h, w) and masks (N, C, H, W) with the same N > 0; got "
                        f"{tuple(maps.shape)} and {masks.shape}")
    if not torch.isfinite(maps).all():
        raise DataError("unit maps contain NaN or inf")
    n, _, h, w = maps.shape
    k = top_k_size(n * h * w, quantile)
    state = DissectState(k)
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(n, start + batch_size))
        state = state.merge(DissectState.from_batch(idx, maps[idx], masks[idx], k))
    return tally(state, quantile)


def dissect(maps: np.ndarray | torch.Tensor, masks: np.ndarray, concept_names: Sequence[str], *,
            quantile: float = 0.005, iou_threshold: float = 0.04, alpha: float = 0.05, confidence: float = 0.95,
            unit_names: Sequence[str] | None = None, batch_size: int = 64) -> list[UnitLabel]:
    """Label every unit of a layer with Network Dissection (Bau et al., CVPR 2017).

    For each unit: the threshold ``T_u`` is the ``1 − quantile`` quantile of its activations over
    all images and positions; each map is upsampled bilinearly to the mask resolution and
    binarised at ``T_u``; the IoU with every concept is Σ|M∩L| / Σ|M∪L| over the probe set; the
    label is the concept of largest IoU when that IoU exceeds ``iou_threshold``.

    Parameters
    ----------
    maps : ndarray or torch.Tensor
        (N, D, h, w) unit activation maps.
    masks : ndarray
        (N, C, H, W) bool concept masks.
    concept_names : sequence of str
        C concept names.
    quantile : float
        Top share of activations (reference 0.005).
    iou_threshold : float
        Smallest IoU that makes a label (reference 0.04).
    alpha : float
        False discovery rate of the label test over the units.
    confidence : float
        Level of the IoU confidence intervals.
    unit_names : sequence of str, optional
        D names.
    batch_size : int
        Images per streamed batch.

    Returns
    -------
    list of UnitLabel
        One per unit.
    """
    validate_labelling(quantile, iou_threshold, alpha, confidence)
    counts = dissect_tally(maps, masks, quantile=quantile, batch_size=batch_size)
    return label_units(counts, concept_names, iou_threshold=iou_threshold, alpha=alpha, confidence=confidence,
                       unit_names=unit_names)
