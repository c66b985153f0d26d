"""Known-ground-truth localisation: how often each method's map finds the true source, against chance.

For every (method, label) pair with masks of the true source (a planted lesion, an object):

* **pointing game**: share of images whose map peaks within ``tolerance`` of the mask (Wilson CI);
  chance is the share of positions within ``tolerance`` of the mask (a peak placed uniformly at
  random), averaged over the images;
* **energy inside the mask**: mean share of the map's mass inside the mask (percentile bootstrap
  CI over images); chance is the mask's share of the image (a uniform map).

A method *localises* a label when the lower CI bounds of both numbers are above their chance
levels; otherwise it *fails* on that model. This is a CI comparison per pair, reported as such (no
test, so no p-value); n is the number of images with a non-empty mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

from explainkit.analyzers.metric import metric
from explainkit.cam.metrics import pointing_game
from explainkit.stats.bootstrap import bootstrap_ci
from explainkit.stats.paired import wilson_interval

__all__ = ["chance_levels", "localisation_table"]


def chance_levels(masks: Sequence[np.ndarray | None], tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the chance pointing-game hit rate and chance energy share (NaN without a mask).

    Parameters
    ----------
    masks : sequence of ndarray or None
        Boolean masks ((H, W) or (D, H, W)).
    tolerance : float
        Hit radius in pixels (voxels).

    Returns
    -------
    hit, energy : ndarray
        (B,) share of positions within ``tolerance`` of the mask; (B,) share of positions in the mask.
    """
    hit = np.full(len(masks), np.nan)
    energy = np.full(len(masks), np.nan)
    for i, m in enumerate(masks):
        if m is None or not np.asarray(m).any():
            continue
        m = np.asarray(m, bool)
        hit[i] = float((distance_transform_edt(~m) <= tolerance).mean())
        energy[i] = float(m.mean())
    return hit, energy


def localisation_table(
    maps: Mapping[str, torch.Tensor | np.ndarray],
    masks: Mapping[str, Sequence[np.ndarray | None]],
    *,
    tolerance: float | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Pointing game and energy inside the mask, with CIs and chance levels, per method and label.

    Parameters
    ----------
    maps : mapping of str to tensor or ndarray
        Method → (B, H, W) or (B, D, H, W) non-negative maps.
    masks : mapping of str to sequence
        Label → B boolean masks of the maps' spatial shape (``None`` where the image has none).
    tolerance : float, optional
        Hit radius (default: :func:`explainkit.cam.metrics.pointing_game`'s).
    n_resamples, seed : int
        Bootstrap of the energy CI.

    Returns
    -------
    list of dict
        One row per (method, label): ``method``, ``label``, ``hit_rate`` and ``energy`` (metrics with
        CI and n), ``chance_hit_rate``, ``chance_energy``, ``localises`` (bool) and ``verdict``.
    """
    rows = []
    for method, m in maps.items():
        spatial = tuple(m.shape[1:])
        tol = 15.0 * max(spatial) / 224.0 if tolerance is None else float(tolerance)
        for label, label_masks in masks.items():
            got = pointing_game(m, label_masks, tolerance=tol)
            chance_hit, chance_energy = chance_levels(label_masks, tol)
            hits = got["hit"][np.isfinite(got["hit"])]
            energy = got["energy"][np.isfinite(got["energy"])]
            n, k = int(hits.size), int(hits.sum())
            hit_ci = wilson_interval(k, n) if n else None
            energy_ci = bootstrap_ci(energy, n_resamples=n_resamples, seed=seed) if energy.size > 1 else None
            c_hit = float(np.nanmean(chance_hit)) if n else None
            c_energy = float(np.nanmean(chance_energy)) if n else None
            ok = bool(hit_ci and energy_ci and hit_ci[0] > c_hit and energy_ci[0] > c_energy)
            rows.append({
                "method": method, "label": label,
                "hit_rate": metric(k / n if n else None, hit_ci, n=n, unit="fraction of images",
                                   higher_is_better=True, ci_method="Wilson"),
                "energy": metric(float(energy.mean()) if energy.size else None, energy_ci, n=int(energy.size),
                                 unit="fraction of map mass inside the mask", higher_is_better=True,
                                 ci_method="percentile bootstrap"),
                "chance_hit_rate": c_hit, "chance_energy": c_energy, "localises": ok,
                "verdict": "localises" if ok else ("no masks" if not n else "fails"),
            })
    return rows
