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
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.functional as TF

from explainkit.cam.engine import CamRun, chunks
from explainkit.cam.imputation import impute
from explainkit.errors import ConfigError

__all__ = ["Faithfulness", "average_drop", "deletion_insertion", "faithfulness", "pointing_game", "pointing_tolerance",
           "road"]


def _perturbed_probs(run: CamRun, levels: int, build: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                     ) -> torch.Tensor:
    """(B, levels) class probabilities of ``build(rows, level_index) -> (n, C, H, W)`` copies (on the CPU)."""
    b = run.inputs.shape[0]
    parts = [run.scores(build(idx // levels, idx % levels), idx // levels, probability=True, cpu=False)
             for idx in chunks(b * levels, run.batch_size)]
    return (torch.cat(parts) if parts else torch.empty(0)).cpu().view(b, levels)


def _ranks(maps: torch.Tensor) -> torch.Tensor:
    """(B, H*W) rank of every pixel by decreasing map value (ties by position)."""
    flat = maps.flatten(1).float()
    order = torch.argsort(-flat, dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


@dataclass
class Faithfulness:
    """Deletion / insertion curves and Average Drop of M maps for each of B images.

    Attributes
    ----------
    deletion, insertion : ndarray
        (M, B) AUCs over the fraction of pixels changed.
    deletion_curve, insertion_curve : ndarray
        (M, B, steps + 1) class probabilities.
    fractions : ndarray
        (steps + 1,) exact fractions changed.
    clean : ndarray
        (B,) probability of the clean image (Average Drop's ``Y``).
    masked : ndarray
        (M, B) probability of the image multiplied by the map (``O``; NaN where not asked).
    drop, increase : ndarray
        (M, B) ``max(0, Y - O) / Y`` and ``1[O > Y]`` (NaN where not asked).
    """

    deletion: np.ndarray
    insertion: np.ndarray
    deletion_curve: np.ndarray
    insertion_curve: np.ndarray
    fractions: np.ndarray
    clean: np.ndarray
    masked: np.ndarray
    drop: np.ndarray
    increase: np.ndarray


def faithfulness(run: CamRun, maps: torch.Tensor, *, steps: int = 16, average_drop: Sequence[bool] | bool = True,
                 blur_kernel: int = 11, blur_sigma: float = 5.0) -> Faithfulness:
    """Deletion / insertion curves (and Average Drop) of several maps per image, in shared forward passes.

    Every perturbed copy of every map and image goes into one stream of forward passes of
    ``run.batch_size`` rows, so small sets of images still fill the passes. The curve ends are the
    same for every map of an image and run once: deletion starts at the clean image and ends at the
    all-zero input, insertion starts at the blurred image and ends at the clean one (which is also
    Average Drop's reference ``Y``).

    Parameters
    ----------
    run : CamRun
        A run bound to the explained classes (inputs, batch size).
    maps : torch.Tensor
        (M, B, H, W) maps at input resolution (e.g. several methods and random baselines).
    steps : int
        Number of equal fractions (curves have ``steps + 1`` points, 0 to 100 %).
    average_drop : bool or sequence of bool
        Whether to score the input multiplied by each map (one flag per map, or one for all).
    blur_kernel, blur_sigma : int, float
        Insertion's starting image (reflect-padded Gaussian blur).

    Returns
    -------
    Faithfulness
        Curves, AUCs and Average Drop / Increase in Confidence.
    """
    if steps < 1:
        raise ConfigError("deletion/insertion steps must be at least 1")
    x = run.inputs
    dev = x.device
    n_maps, b, h, w = maps.shape
    flags = [bool(average_drop)] * n_maps if isinstance(average_drop, bool) else [bool(f) for f in average_drop]
    ad_maps = torch.tensor([m for m, f in enumerate(flags) if f], dtype=torch.long)
    ranks = _ranks(maps.to(dev).reshape(n_maps * b, h, w)).to(torch.int32).view(n_maps, b, h * w)
    counts = torch.round(torch.linspace(0, h * w, steps + 1)).long().to(dev)
    blurred = TF.gaussian_blur(x, [blur_kernel, blur_kernel], [blur_sigma, blur_sigma])
    inner = steps - 1
    # The job stream: clean, blurred and zero images (B each), then deletion and insertion at the inner
    # levels of every map (M * B * inner each), then the map-multiplied images of Average Drop.
    sizes = [b, b, b, n_maps * b * inner, n_maps * b * inner, len(ad_maps) * b]
    starts = np.cumsum([0, *sizes])
    ad_stack = maps[ad_maps.to(maps.device)].to(dev, x.dtype)  # (M_ad, B, H, W)

    def build(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and source images of jobs ``[start, stop)`` (index arithmetic on the device: no host sync)."""
        parts, rows = [], []
        for kind in range(6):
            lo, hi = max(start, int(starts[kind])), min(stop, int(starts[kind + 1]))
            if lo >= hi:
                continue
            sel = torch.arange(lo - int(starts[kind]), hi - int(starts[kind]), device=dev)
            if kind < 3:
                img = sel
                parts.append(x[img] if kind == 0 else blurred[img] if kind == 1 else torch.zeros_like(x[img]))
            elif kind < 5:
                m, rest = sel // (b * inner), sel % (b * inner)
                img, lev = rest // inner, rest % inner + 1
                mask = (ranks[m, img] < counts[lev][:, None]).view(-1, 1, h, w).to(x.dtype)
                parts.append(x[img] * (1 - mask) if kind == 3 else blurred[img] * (1 - mask) + x[img] * mask)
            else:
                img = sel % b
                parts.append(x[img] * ad_stack[sel // b, img][:, None])
            rows.append(img)
        return torch.cat(parts), torch.cat(rows)

    total = int(starts[-1])
    step = max(1, int(run.batch_size))
    probs = [run.scores(*build(a, min(total, a + step)), probability=True, cpu=False) for a in range(0, total, step)]
    p = torch.cat(probs).double().cpu()
    clean, blur, zero = (p[int(starts[k]):int(starts[k + 1])] for k in range(3))
    dele = torch.empty(n_maps, b, steps + 1, dtype=torch.float64)
    ins = torch.empty_like(dele)
    dele[:, :, 0], dele[:, :, steps] = clean, zero
    ins[:, :, 0], ins[:, :, steps] = blur, clean
    if inner:
        dele[:, :, 1:steps] = p[int(starts[3]):int(starts[4])].view(n_maps, b, inner)
        ins[:, :, 1:steps] = p[int(starts[4]):int(starts[5])].view(n_maps, b, inner)
    masked = torch.full((n_maps, b), float("nan"), dtype=torch.float64)
    masked[ad_maps] = p[int(starts[5]):].view(len(ad_maps), b)
    drop = torch.clamp(clean - masked, min=0) / clean.clamp_min(1e-12)
    increase = torch.where(masked.isnan(), masked, (masked > clean).double())
    fractions = counts.cpu().double() / (h * w)
    return Faithfulness(
        deletion=torch.trapezoid(dele, fractions).numpy(), insertion=torch.trapezoid(ins, fractions).numpy(),
        deletion_curve=dele.numpy(), insertion_curve=ins.numpy(), fractions=fractions.numpy(),
        clean=clean.numpy(), masked=masked.numpy(), drop=drop.numpy(), increase=increase.numpy(),
    )


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
    f = faithfulness(run, maps[None], steps=steps, average_drop=False, blur_kernel=blur_kernel,
                     blur_sigma=blur_sigma)
    return {"deletion": f.deletion[0], "insertion": f.insertion[0], "deletion_curve": f.deletion_curve[0],
            "insertion_curve": f.insertion_curve[0], "fractions": f.fractions}


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
    f = faithfulness(run, maps[None], steps=1)
    return {"drop": f.drop[0], "increase": f.increase[0], "clean": f.clean, "masked": f.masked[0]}


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


def pointing_tolerance(spatial: Sequence[int], tolerance: float | None = None) -> float:
    """Pointing-game hit radius in pixels (voxels): ``tolerance``, else 15 px at 224 px scaled by the largest axis."""
    return 15.0 * max(int(s) for s in spatial) / 224.0 if tolerance is None else float(tolerance)


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
    tol = pointing_tolerance(spatial, tolerance)
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
