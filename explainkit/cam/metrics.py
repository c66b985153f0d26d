"""Faithfulness and localisation metrics of explanation maps, one value per image.

All perturbations act on the model input (the normalised tensor), are scored with the softmax
probability of the explained class (the target score itself for non-class targets), and run under
``torch.no_grad()`` in chunks of ``run.batch_size`` copies.

* Deletion / insertion AUC (Petsiuk et al., RISE, BMVC 2018): pixels ranked by the map; deletion
  replaces the top fraction by a substrate (zeros of the normalised input, i.e. the dataset mean
  colour), insertion starts from a Gaussian blur (11 px kernel, sigma 5) and restores the top
  fraction; AUC by the trapezoid rule over the exact fraction changed (deletion: lower is better;
  insertion: higher is better).
* Average Drop / Increase in Confidence (Chattopadhay et al., WACV 2018): the input multiplied by
  the map, ``max(0, Y - O) / Y`` and ``1[O > Y]``.
* ROAD (Rong et al., ICML 2022): remove the most (MoRF) or least (LeRF) relevant fraction ``p``
  with noisy linear imputation; MoRF lower and LeRF higher is better; combined
  ``(mean LeRF - mean MoRF) / 2`` (higher is better).
* Pointing game (Zhang et al., ECCV 2016): hit when the map's maximum lies within ``tolerance``
  pixels of the mask; energy variant (Wang et al., Score-CAM) = share of the map's mass inside it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF

from explainkit.cam.engine import CamRun, chunks
from explainkit.cam.imputation import impute
from explainkit.errors import ConfigError

__all__ = ["average_drop", "deletion_insertion", "pointing_game", "road"]


def _perturbed_probs(run: CamRun, levels: int, build: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                     ) -> torch.Tensor:
    """(B, levels) class probabilities of ``build(rows, level_index) -> (n, C, H, W)`` copies."""
    b = run.inputs.shape[0]
    out = torch.empty(b * levels)
    for idx in chunks(b * levels, run.batch_size):
        rows, lev = idx // levels, idx % levels
        out[idx] = run.scores(build(rows, lev), rows, probability=True)
    return out.view(b, levels)


def _ranks(maps: torch.Tensor) -> torch.Tensor:
    """(B, H*W) rank of every pixel by decreasing map value (ties by position)."""
    flat = maps.flatten(1).float()
    order = torch.argsort(-flat, dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


def deletion_insertion(run: CamRun, maps: torch.Tensor, *, steps: int = 16, blur_kernel: int = 11,
                       blur_sigma: float = 5.0) -> dict[str, np.ndarray]:
    """RISE deletion and insertion curves and their AUCs.

    Parameters
    ----------
    run : CamRun
        A recorded run (inputs, bound class, batch size).
    maps : torch.Tensor
        (B, H, W) maps at input resolution.
    steps : int
        Number of equal fractions (the curve has ``steps + 1`` points, 0 to 100 %).
    blur_kernel, blur_sigma : int, float
        Insertion's starting image (reflect-padded Gaussian blur).

    Returns
    -------
    dict
        ``deletion``, ``insertion`` (B,) AUCs; ``deletion_curve``, ``insertion_curve`` (B, steps+1);
        ``fractions`` (steps+1,).
    """
    if steps < 1:
        raise ConfigError("deletion/insertion steps must be at least 1")
    x = run.inputs
    h, w = x.shape[-2:]
    ranks = _ranks(maps.to(x.device))
    counts = torch.round(torch.linspace(0, h * w, steps + 1)).long()
    blurred = TF.gaussian_blur(x, [blur_kernel, blur_kernel], [blur_sigma, blur_sigma])

    def mask(rows: torch.Tensor, lev: torch.Tensor) -> torch.Tensor:
        r = rows.to(x.device)
        return (ranks[r] < counts.to(x.device)[lev.to(x.device)][:, None]).view(-1, 1, h, w).to(x.dtype)

    def deleted(rows: torch.Tensor, lev: torch.Tensor) -> torch.Tensor:
        return x[rows.to(x.device)] * (1 - mask(rows, lev))

    def inserted(rows: torch.Tensor, lev: torch.Tensor) -> torch.Tensor:
        m = mask(rows, lev)
        r = rows.to(x.device)
        return blurred[r] * (1 - m) + x[r] * m

    fractions = counts.double() / (h * w)
    dele = _perturbed_probs(run, steps + 1, deleted).double()
    ins = _perturbed_probs(run, steps + 1, inserted).double()
    return {
        "deletion": torch.trapezoid(dele, fractions).numpy(),
        "insertion": torch.trapezoid(ins, fractions).numpy(),
        "deletion_curve": dele.numpy(),
        "insertion_curve": ins.numpy(),
        "fractions": fractions.numpy(),
    }


def average_drop(run: CamRun, maps: torch.Tensor) -> dict[str, np.ndarray]:
    """Average Drop and Increase in Confidence per image (fractions, not percent).

    Parameters
    ----------
    run : CamRun
        A recorded run.
    maps : torch.Tensor
        (B, H, W) maps in [0, 1] at input resolution.

    Returns
    -------
    dict
        ``drop`` (B,) ``max(0, Y - O) / Y``; ``increase`` (B,) 0/1; ``clean`` Y and ``masked`` O.
    """
    x = run.inputs
    m = maps.to(x.device, x.dtype)[:, None]
    clean = _perturbed_probs(run, 1, lambda rows, lev: x[rows.to(x.device)])[:, 0].double()
    masked = _perturbed_probs(run, 1, lambda rows, lev: x[rows.to(x.device)] * m[rows.to(x.device)])[:, 0].double()
    drop = torch.clamp(clean - masked, min=0) / clean.clamp_min(1e-12)
    return {"drop": drop.numpy(), "increase": (masked > clean).double().numpy(),
            "clean": clean.numpy(), "masked": masked.numpy()}


def road(run: CamRun, maps: torch.Tensor, *, levels: Sequence[float] = (0.2, 0.5, 0.8), noise: float = 0.01,
         seed: int = 0, removal: str = "rank") -> dict[str, np.ndarray]:
    """ROAD: class probability after removing the most / least relevant pixels (imputed).

    Parameters
    ----------
    run : CamRun
        A recorded run.
    maps : torch.Tensor
        (B, H, W) maps at input resolution.
    levels : sequence of float
        Fractions of pixels removed, each in (0, 1).
    noise : float
        Standard deviation of the imputation noise (model-input units).
    seed : int
        Seed of the noise; the noise field depends on (seed, level, order) only, so a batch gives
        the same values as its images one by one.
    removal : {"rank", "percentile"}
        ``"rank"``: exactly ``round(p H W)`` pixels by rank (ties by position); ``"percentile"``:
        the pixels at or above NumPy's (linearly interpolated) ``100 (1 - p)``-th percentile of the
        map (MoRF) or of ``1 - map`` (LeRF), as pytorch-grad-cam.

    Returns
    -------
    dict
        ``morf``, ``lerf`` (B, L) curves; ``morf_mean`` (lower is better), ``lerf_mean`` (higher is
        better), ``combined`` = (lerf_mean - morf_mean) / 2 (higher is better), all (B,);
        ``levels`` (L,).
    """
    lv = [float(p) for p in levels]
    if not lv or any(not 0 < p < 1 for p in lv):
        raise ConfigError("ROAD levels must be fractions strictly between 0 and 1")
    if removal not in ("rank", "percentile"):
        raise ConfigError(f"removal must be 'rank' or 'percentile', not {removal!r}")
    x = run.inputs
    b, c, h, w = x.shape
    ranks = _ranks(maps).cpu().numpy()
    values = maps.detach().float().cpu().numpy().reshape(b, h * w)
    images = x.detach().cpu().double().numpy()
    curves = {}
    for order, name in ((0, "morf"), (1, "lerf")):
        filled = np.empty((b, len(lv), c, h, w), dtype=np.float32)
        for j, p in enumerate(lv):
            k = round(p * h * w)
            field = np.random.default_rng([seed, j, order]).normal(0.0, noise, size=(c, h, w)) if noise else None
            for i in range(b):
                if removal == "percentile":
                    v = values[i] if order == 0 else 1 - values[i]
                    remove = v >= np.percentile(v, round(100 * (1 - p), 9))
                else:
                    remove = ranks[i] < k if order == 0 else ranks[i] >= h * w - k
                filled[i, j] = impute(images[i], remove.reshape(h, w), field)
        source = torch.from_numpy(filled).to(x.device).flatten(0, 1)
        probs = _perturbed_probs(run, len(lv), lambda rows, lev, s=source: s[(rows * len(lv) + lev).to(x.device)])
        curves[name] = probs.double().numpy()
    morf, lerf = curves["morf"].mean(1), curves["lerf"].mean(1)
    return {"morf": curves["morf"], "lerf": curves["lerf"], "morf_mean": morf, "lerf_mean": lerf,
            "combined": (lerf - morf) / 2, "levels": np.asarray(lv)}


def pointing_game(maps: torch.Tensor | np.ndarray, masks: Sequence[np.ndarray | None], *,
                  tolerance: float | None = None) -> dict[str, np.ndarray]:
    """Pointing game hits and energy share per image (or volume).

    Parameters
    ----------
    maps : torch.Tensor or ndarray
        (B, H, W) non-negative maps, or (B, D, H, W) volume maps.
    masks : sequence of ndarray or None
        B boolean masks of the map's spatial shape; ``None`` where the image has none.
    tolerance : float, optional
        Hit radius in pixels (voxels): a hit is a maximum within this Euclidean distance of a mask
        pixel; default 15 px at 224 px, scaled by the largest spatial axis.

    Returns
    -------
    dict
        ``hit`` (B,) 1.0/0.0 (NaN without a mask) and ``energy`` (B,) share of the map's mass
        inside the mask (NaN without a mask or for an all-zero map).
    """
    arr = maps.detach().cpu().double().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps, np.float64)
    if arr.ndim not in (3, 4):
        raise ConfigError(f"maps must be (B, H, W) or (B, D, H, W), got {arr.shape}")
    b, spatial = arr.shape[0], arr.shape[1:]
    if len(masks) != b:
        raise ConfigError(f"got {len(masks)} masks for {b} maps")
    tol = 15.0 * max(spatial) / 224.0 if tolerance is None else float(tolerance)
    hit = np.full(b, np.nan)
    energy = np.full(b, np.nan)
    for i, m in enumerate(masks):
        if m is None:
            continue
        m = np.asarray(m, dtype=bool)
        if m.shape != spatial:
            raise ConfigError(f"mask of shape {m.shape} does not match the map {spatial}")
        if not m.any():
            continue
        peak = np.asarray(np.unravel_index(int(np.argmax(arr[i])), spatial))
        inside = np.argwhere(m)
        hit[i] = float(np.min(((inside - peak) ** 2).sum(axis=1)) <= tol * tol)
        total = arr[i].sum()
        if total > 0:
            energy[i] = float(arr[i][m].sum() / total)
    return {"hit": hit, "energy": energy}
