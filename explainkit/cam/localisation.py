"""Known-ground-truth localisation: how often each method's map finds the true source, against chance.

For every (method, label) pair with masks of the true source (a planted lesion, an object):

* **pointing game**: share of images whose map peaks within ``tolerance`` of the mask, with a
  Wilson score CI (a binomial proportion: a percentile bootstrap would give the zero-width
  interval [0, 0] for 0 hits of 12, claiming a certainty twelve images cannot give); chance is the
  share of positions within ``tolerance`` of the mask (a peak placed uniformly at random), averaged
  over the images;
* **energy inside the mask**: mean share of the map's mass inside the mask (percentile bootstrap
  CI over images); chance is the mask's share of the image (a uniform map).

The verdict compares the pointing game's 95 % CI with a **reference** hit rate, the larger of the
declared ``min_hit_rate`` (default :data:`MIN_HIT_RATE`, 0.5: a localiser should point at the true
source in most images) and the chance hit rate:

* ``fails``: the whole CI lies below the reference (the method demonstrably misses the source);
* ``localises``: the whole CI lies above the reference and the energy CI lies above chance energy;
* ``inconclusive``: anything else (too few images to tell); ``no masks`` when n = 0.

``min_hit_rate=0`` makes the reference the chance level alone. This is a CI comparison per pair,
reported as such (no test, so no p-value); n is the number of images with a non-empty mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

from explainkit.analyzers.metric import metric
from explainkit.cam.metrics import pointing_game, pointing_tolerance
from explainkit.report.section import Finding
from explainkit.stats.bootstrap import bootstrap_ci
from explainkit.stats.paired import wilson_interval

__all__ = ["MIN_HIT_RATE", "RULE", "chance_levels", "failure_findings", "localisation_row", "localisation_table"]

#: Default pointing-game hit rate a method must reach to localise (see the module docstring).
MIN_HIT_RATE = 0.5
#: The verdict rule in words (reports quote it).
RULE = ("fails: the pointing game's 95% CI lies below the reference hit rate, max(min_hit_rate, chance); "
        "localises: the CI lies above the reference and the energy CI above chance energy; otherwise inconclusive")


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


def _verdict(hit_ci: tuple[float, float] | None, energy_ci: tuple[float, float] | None, reference: float,
             chance_energy: float | None) -> str:
    if hit_ci is None:
        return "no masks"
    if hit_ci[1] < reference:
        return "fails"
    if hit_ci[0] > reference and energy_ci is not None and chance_energy is not None and energy_ci[0] > chance_energy:
        return "localises"
    return "inconclusive"


def localisation_row(method: str, label: str, hits: np.ndarray, energy: np.ndarray, chance_hit: np.ndarray,
                     chance_energy: np.ndarray, *, min_hit_rate: float = MIN_HIT_RATE, n_resamples: int = 2000,
                     seed: int = 0) -> dict[str, Any]:
    """One (method, label) row of the table from per-image values.

    Parameters
    ----------
    method, label : str
        What the row is about.
    hits, energy : ndarray
        (B,) pointing-game hit (1/0) and energy share per image, NaN where the image has no mask
        (as :func:`explainkit.cam.metrics.pointing_game` returns them).
    chance_hit, chance_energy : ndarray
        (B,) chance levels per image (:func:`chance_levels`).
    min_hit_rate : float
        Least pointing-game hit rate of a localiser (the reference is ``max(min_hit_rate, chance)``).
    n_resamples, seed : int
        Bootstrap of the energy CI.

    Returns
    -------
    dict
        ``method``, ``label``, ``hit_rate`` and ``energy`` (metrics with CI and n),
        ``chance_hit_rate``, ``chance_energy``, ``reference_hit_rate``, ``localises`` (bool) and
        ``verdict`` (see the module docstring).
    """
    hits, energy = np.asarray(hits, np.float64), np.asarray(energy, np.float64)
    ok = hits[np.isfinite(hits)]
    mass = energy[np.isfinite(energy)]
    n, k = int(ok.size), int(ok.sum())
    hit_ci = wilson_interval(k, n) if n else None
    energy_ci = bootstrap_ci(mass, n_resamples=n_resamples, seed=seed) if mass.size > 1 else None
    c_hit = float(np.nanmean(chance_hit)) if n else None
    c_energy = float(np.nanmean(chance_energy)) if n else None
    reference = max(float(min_hit_rate), c_hit or 0.0)
    verdict = _verdict(hit_ci, energy_ci, reference, c_energy)
    return {
        "method": method, "label": label,
        "hit_rate": metric(k / n if n else None, hit_ci, n=n, unit="fraction of images with the mask",
                           higher_is_better=True, ci_method="Wilson"),
        "energy": metric(float(mass.mean()) if mass.size else None, energy_ci, n=int(mass.size),
                         unit="fraction of map mass inside the mask", higher_is_better=True,
                         ci_method="percentile bootstrap"),
        "chance_hit_rate": c_hit, "chance_energy": c_energy, "reference_hit_rate": reference if n else None,
        "localises": verdict == "localises", "verdict": verdict,
    }


def localisation_table(
    maps: Mapping[str, torch.Tensor | np.ndarray],
    masks: Mapping[str, Sequence[np.ndarray | None]],
    *,
    tolerance: float | None = None,
    min_hit_rate: float = MIN_HIT_RATE,
    n_resamples: int = 2000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Pointing game and energy inside the mask, with CIs, chance levels and a verdict, per method and label.

    Parameters
    ----------
    maps : mapping of str to tensor or ndarray
        Method → (B, H, W) or (B, D, H, W) non-negative maps.
    masks : mapping of str to sequence
        Label → B boolean masks of the maps' spatial shape (``None`` where the image has none).
    tolerance : float, optional
        Hit radius (default: :func:`explainkit.cam.metrics.pointing_tolerance`'s).
    min_hit_rate : float
        Least hit rate of a localiser (see the module docstring).
    n_resamples, seed : int
        Bootstrap of the energy CI.

    Returns
    -------
    list of dict
        One :func:`localisation_row` per (method, label).
    """
    rows = []
    for method, m in maps.items():
        tol = pointing_tolerance(tuple(m.shape[1:]), tolerance)
        for label, label_masks in masks.items():
            got = pointing_game(m, label_masks, tolerance=tol)
            chance_hit, chance_energy = chance_levels(label_masks, tol)
            rows.append(localisation_row(method, label, got["hit"], got["energy"], chance_hit, chance_energy,
                                         min_hit_rate=min_hit_rate, n_resamples=n_resamples, seed=seed))
    return rows


def failure_findings(rows: Sequence[Mapping[str, Any]], source: str, noun: str = "images") -> list[Finding]:
    """A warning per row whose verdict is ``fails``, naming the method, the label and the numbers.

    Parameters
    ----------
    rows : sequence of dict
        Rows of :func:`localisation_table` / :func:`localisation_row`.
    source : str
        The section (analyzer) the findings belong to.
    noun : str
        What was explained ("images", "volumes").
    """
    out = []
    for r in rows:
        if r["verdict"] != "fails":
            continue
        hit = r["hit_rate"]
        out.append(Finding(
            "warning",
            f"{r['method']} does not localise {r['label']}: its map peaks on the mask in {hit['value']:.0%} of "
            f"{hit['n']} {noun} [95% CI {hit['ci_low']:.0%}, {hit['ci_high']:.0%}], below the reference "
            f"{r['reference_hit_rate']:.0%} (max of min_hit_rate and chance {r['chance_hit_rate']:.0%}); energy in "
            f"the mask {_num(r['energy']['value'])} (chance {_num(r['chance_energy'])})",
            source, {"method": r["method"], "label": r["label"], "hit_rate": hit}))
    return out


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"
