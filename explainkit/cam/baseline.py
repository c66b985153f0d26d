"""Random maps with a method's spatial structure, and the "better than random" test.

A random map is uniform noise on the method's native grid (the target layer's h x w for CAMs, the
input grid for pixel attributions), resized bilinearly to the input exactly as the CAM is: it has
the same smoothness and resolution, so a win over it is not just a win of a smooth map over
pixel noise. Each image gets its own maps, drawn from a generator keyed by the image, so results do
not depend on batching.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from explainkit.analyzers.metric import metric
from explainkit.cam.postprocess import minmax, resize
from explainkit.stats import bootstrap_ci, wilcoxon_signed_rank

__all__ = ["better_than_random", "random_maps"]


def random_maps(keys: Sequence[int], grid: tuple[int, int], size: tuple[int, int], n: int, seed: int = 0
                ) -> torch.Tensor:
    """``n`` random maps per image.

    Parameters
    ----------
    keys : sequence of int
        One stable key per image (e.g. its probe-set index).
    grid : tuple of int
        (h, w) native resolution.
    size : tuple of int
        (H, W) output size.
    n : int
        Maps per image.
    seed : int
        Seed.

    Returns
    -------
    torch.Tensor
        (n, B, H, W) maps in [0, 1].
    """
    draws = np.stack([np.random.default_rng([seed, int(k), 7919]).random((n, *grid)) for k in keys], axis=1)
    flat = torch.from_numpy(draws).float().flatten(0, 1)
    return minmax(resize(flat, size)).view(n, len(keys), *size)


def better_than_random(method: np.ndarray, random: np.ndarray, *, higher_is_better: bool = True,
                       n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """One-sided Wilcoxon signed-rank test of a method against random maps, per image.

    Parameters
    ----------
    method : ndarray
        (N,) the method's score per image.
    random : ndarray
        (N, R) the scores of R random maps per image (their mean is the per-image baseline).
    higher_is_better : bool
        Direction of the score.
    n_resamples : int
        Bootstrap resamples for the CI of the mean advantage.
    seed : int
        Bootstrap seed.

    Returns
    -------
    dict
        ``advantage`` (mean method − random in the better direction, with a 95 % CI), ``p``
        (one-sided), ``effect_size`` (matched-pairs rank-biserial), ``win_rate`` (share of images
        where the method beats its random mean), ``win_rate_maps`` (share of image × random-map
        pairs won), ``n``, ``n_random``.
    """
    method = np.asarray(method, dtype=np.float64)
    random = np.asarray(random, dtype=np.float64)
    sign = 1.0 if higher_is_better else -1.0
    diff = sign * (method - random.mean(axis=1))
    ok = np.isfinite(diff)
    test = wilcoxon_signed_rank(diff[ok], alternative="greater")
    ci = bootstrap_ci(diff[ok], n_resamples=n_resamples, seed=seed) if ok.sum() > 1 else None
    pairs = sign * (method[ok, None] - random[ok])
    return {
        "advantage": metric(float(diff[ok].mean()) if ok.any() else None, ci, n=int(ok.sum()),
                            unit="score difference (method - random)", higher_is_better=True),
        "p": test.p,
        "effect_size": test.effect_size,
        "win_rate": test.win_rate,
        "win_rate_maps": float(np.mean(pairs > 0)) if pairs.size else None,
        "n": test.n,
        "n_random": int(random.shape[1]),
        "test": "one-sided Wilcoxon signed-rank (zero differences dropped)",
        "effect": "matched-pairs rank-biserial correlation",
    }
