"""pytorch-grad-cam's map metrics: confidence change, Complexity, Coherency and ARCC.

* Confidence change (``CamMultImageConfidenceChange``): ``y(x * M) - y(x)`` for the target score
  ``y`` and the map ``M`` multiplying the (normalised) input; its drop ``max(0, -change)``
  (``DropInConfidence``, absolute, unlike the relative Average Drop of
  :func:`explainkit.cam.metrics.average_drop`) and ``1[change > 0]`` (``IncreaseInConfidence``).
* Complexity: mean ``|M|`` (lower is better), Coherency: ``(rho(M, M') + 1) / 2`` with ``M'`` the
  same method's map of ``x * M`` and ``rho`` Pearson's correlation (higher is better), both from
  ADCC (Poppi et al., CVPR-W 2021).
* ARCC (pytorch-grad-cam 1.5.7, after RefineCAM, arXiv 2605.14641): the harmonic mean of
  Coherency, ``1 - Complexity`` and ``clip(2 * ROAD, 0, 1)`` with ROAD the combined
  (LeRF - MoRF) / 2 score over removal fractions 80/60/40/20 % (higher is better). pytorch-grad-cam's
  docstring calls it a geometric mean; its formula is the harmonic one, which is what is computed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from explainkit.cam.api import compute
from explainkit.cam.engine import CamRun
from explainkit.cam.metrics import road

__all__ = ["arcc", "coherency", "complexity", "confidence_change"]


def confidence_change(run: CamRun, maps: torch.Tensor, *, probability: bool = False) -> dict[str, np.ndarray]:
    """Score change when the input is multiplied by the map, per image.

    Parameters
    ----------
    run : CamRun
        A run with a bound target (after ``record()``, or :meth:`CamRun.for_classes`).
    maps : torch.Tensor
        (B, H, W) maps in [0, 1] at input resolution.
    probability : bool
        Use the class probability instead of the target score.

    Returns
    -------
    dict
        ``change`` (B,) ``y(x * M) - y(x)``; ``drop`` ``max(0, -change)``; ``increase`` 0/1;
        ``clean`` and ``masked`` scores.
    """
    x = run.inputs
    m = maps.to(x.device, x.dtype)[:, None]
    rows = run.rows
    clean = run.scores(x, rows, probability=probability).double()
    masked = run.scores(x * m, rows, probability=probability).double()
    change = masked - clean
    return {"change": change.numpy(), "drop": change.neg().clamp_min(0).numpy(),
            "increase": (change > 0).double().numpy(), "clean": clean.numpy(), "masked": masked.numpy()}


def complexity(maps: torch.Tensor | np.ndarray) -> np.ndarray:
    """(B,) mean absolute value of each map (ADCC's Complexity; lower is better)."""
    arr = maps.detach().cpu().double().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps, np.float64)
    return np.abs(arr.reshape(arr.shape[0], -1)).mean(axis=1)


def _pearson(a: np.ndarray, b: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    n = a.shape[1] - 1
    cov = (a * b).sum(axis=1) / n
    return cov / (np.sqrt((a * a).sum(axis=1) / n) * np.sqrt((b * b).sum(axis=1) / n) + eps)


def coherency(run: CamRun, maps: torch.Tensor, method: str, *, params: Mapping[str, Any] | None = None
              ) -> np.ndarray:
    """(B,) ``(rho(M, M') + 1) / 2``: ``M'`` is ``method``'s map of the input multiplied by ``M``.

    Parameters
    ----------
    run : CamRun
        A run with a bound target and the method's layers.
    maps : torch.Tensor
        (B, H, W) maps of ``method`` in [0, 1].
    method : str
        The method that made the maps (run again on the masked inputs, same target and layers).
    params : mapping, optional
        Its parameters.
    """
    x = run.inputs
    again = compute(run.handle, x * maps.to(x.device, x.dtype)[:, None], methods=[method],
                    layer=list(run.layer_names) or None, targets=run.bound, params={method: dict(params or {})},
                    batch_size=run.batch_size, seed=run.seed, layout=run.layout).maps
    second = next(iter(again.values())).detach().cpu().double().numpy()
    return (_pearson(second, maps.detach().cpu().double().numpy()) + 1) / 2


def arcc(run: CamRun, maps: torch.Tensor, method: str, *, params: Mapping[str, Any] | None = None,
         levels: Sequence[float] = (0.8, 0.6, 0.4, 0.2), noise: float = 0.01, seed: int = 0,
         removal: str = "percentile") -> dict[str, np.ndarray]:
    """ARCC and its three parts per image (see the module docstring).

    Parameters
    ----------
    run : CamRun
        A run with a bound target and the method's layers (``record()`` done).
    maps : torch.Tensor
        (B, H, W) maps of ``method`` in [0, 1].
    method : str
        The method (for Coherency).
    params : mapping, optional
        The method's parameters.
    levels : sequence of float
        ROAD removal fractions (pytorch-grad-cam's percentiles 20/40/60/80 remove 80/60/40/20 %).
    noise, seed
        ROAD imputation noise sd and seed.
    removal : {"percentile", "rank"}
        ROAD's removal sets (see :func:`explainkit.cam.metrics.road`); ``"percentile"`` as
        pytorch-grad-cam.

    Returns
    -------
    dict
        ``arcc``, ``complexity``, ``coherency``, ``road`` (the combined ROAD score) — all (B,).
    """
    cx = complexity(maps)
    coh = coherency(run, maps, method, params=params)
    combined = road(run, maps, levels=levels, noise=noise, seed=seed, removal=removal)["combined"]
    r = np.clip(2 * combined, 0, 1)
    value = 3 / (1 / (coh + 1e-8) + 1 / ((1 - cx) + 1e-8) + 1 / (r + 1e-8))
    return {"arcc": value, "complexity": cx, "coherency": coh, "road": combined}
