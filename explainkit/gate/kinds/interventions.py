"""Paired interventions shared by ``insertion`` and ``removal``: batched forwards and per-image effects.

For image ``x``, a treatment (the artifact pasted, or removed) and a control of the same shape at
the same places, with ``f_t`` the target class's logit, softmax probability or "predicted as t"
indicator (``logit_shift``, ``prob_shift``, ``flip_rate``)::

    raw_i     = sign * (mean_r f_t(treated_r) - f_t(x))
    control_i = sign * (mean_r f_t(control_r) - f_t(x))
    effect_i  = raw_i - control_i

Placements are averaged within the image before any statistics (the image is the independent
unit). ``sign`` is +1 for insertion (reliance raises the target score) and -1 for removal
(reliance means the score drops when the artifact is taken away).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from explainkit.adapters.targets import select_logits
from explainkit.analyzers.metric import metric
from explainkit.errors import ConfigError, ExplainkitError, RuntimeAnalysisError
from explainkit.gate.kinds.base import CheckContext, CheckKind, Measurement, paired_measurement
from explainkit.options import Option
from explainkit.report.images import thumbnail, to_data_uri
from explainkit.stats import bootstrap_ci

__all__ = ["DEFAULT_TAU", "EFFECTS", "EFFECT_OPTION", "InterventionKind", "PairedValues", "Variants",
           "forward_logits", "paired_result", "run_paired", "target_scores", "to_pil"]

#: Effect name → unit of the target score difference.
EFFECTS = {"logit_shift": "logit", "prob_shift": "probability", "flip_rate": "fraction of images"}
#: Materiality thresholds when the policy gives no ``tau``.
DEFAULT_TAU = {"logit_shift": 1.0, "prob_shift": 0.05, "flip_rate": 0.05}
#: The ``effect`` policy key of the intervention kinds.
EFFECT_OPTION = Option("choice", "logit_shift", tuple(EFFECTS),
                       help="logit_shift: the target logit; prob_shift: its softmax probability; flip_rate: the "
                            "fraction of images predicted as the target")

#: ``variants(images, indices, ids) -> (treated, control)``: images (b, 3, H, W) in [0, 1] on the
#: device; treated (b, Rt, 3, H, W) and control (b, Rc, 3, H, W).
Variants = Callable[[torch.Tensor, np.ndarray, list[str]], tuple[torch.Tensor, torch.Tensor]]


class InterventionKind(CheckKind):
    """Base of the paired intervention kinds: their ``effect`` key sets the default ``tau``."""

    @classmethod
    def default_tau(cls, options: Mapping[str, Any]) -> float:
        """1 logit, 5 percentage points of probability, or 5 % of images flipped (:data:`DEFAULT_TAU`)."""
        return DEFAULT_TAU[options["effect"]]


def target_scores(logits: torch.Tensor, target: int, effect: str) -> torch.Tensor:
    """The per-image score ``f_t`` an effect compares.

    Parameters
    ----------
    logits : torch.Tensor
        (N, K) logits.
    target : int
        Target class index.
    effect : str
        ``logit_shift`` (the logit), ``prob_shift`` (softmax probability) or ``flip_rate``
        (1 when the prediction is the target class, else 0).

    Returns
    -------
    torch.Tensor
        (N,) float64 on the CPU.
    """
    logits = logits.detach().double().cpu()
    if not 0 <= target < logits.shape[1]:
        raise ConfigError(f"target_class index {target} is out of range: the model has {logits.shape[1]} outputs")
    if effect == "logit_shift":
        return logits[:, target]
    if effect == "prob_shift":
        return torch.softmax(logits, 1)[:, target]
    if effect == "flip_rate":
        return (logits.argmax(1) == target).double()
    raise ValueError(f"unknown effect {effect!r}")


def forward_logits(cc: CheckContext, unit: torch.Tensor) -> torch.Tensor:
    """Logits of images in [0, 1] (normalised here), under ``torch.no_grad`` in chunks of the batch size.

    Parameters
    ----------
    cc : CheckContext
        Handle, batch size.
    unit : torch.Tensor
        (N, 3, H, W) images in [0, 1] on the run's device.

    Returns
    -------
    torch.Tensor
        (N, K) logits on the CPU.

    Raises
    ------
    RuntimeAnalysisError
        The model failed or produced non-finite outputs.
    """
    handle = cc.run.handle
    prep = handle.require_preprocessing()
    out = []
    for start in range(0, unit.shape[0], cc.run.batch_size):
        chunk = prep.normalize(unit[start : start + cc.run.batch_size])
        try:
            with torch.no_grad():
                logits = select_logits(handle.forward(chunk))
        except ExplainkitError:
            raise
        except Exception as exc:
            raise RuntimeAnalysisError(f"check {cc.spec.id!r}: the model failed on {len(chunk)} images: {exc}") \
                from exc
        out.append(logits.detach().cpu())
    logits = torch.cat(out)
    if not torch.isfinite(logits).all():
        raise RuntimeAnalysisError(f"check {cc.spec.id!r}: the model produced non-finite outputs (NaN/inf)")
    return logits


@dataclass
class PairedValues:
    """Per-image results of a paired intervention, in processing order.

    Attributes
    ----------
    indices : ndarray
        (n,) probe indices.
    ids : list of str
        (n,) sample ids.
    clean : ndarray
        (n,) ``f_t(x)``.
    raw, control, effect : ndarray
        (n,) see the module docstring.
    """

    indices: np.ndarray
    ids: list[str]
    clean: np.ndarray
    raw: np.ndarray
    control: np.ndarray
    effect: np.ndarray


def run_paired(cc: CheckContext, indices: np.ndarray, variants: Variants, *, effect: str, target: int,
               rows_per_image: int, sign: float = 1.0, desc: str = "check") -> tuple[PairedValues, bool]:
    """Run clean, treated and control images through the model, batch by batch, within the budget.

    Parameters
    ----------
    cc : CheckContext
        The check.
    indices : ndarray
        Probe indices in processing order.
    variants : callable
        See :data:`Variants`.
    effect : str
        One of :data:`EFFECTS`.
    target : int
        Target class index.
    rows_per_image : int
        ``1 + Rt + Rc``: images per forward row budget (keeps each forward within the batch size).
    sign : float
        +1 (insertion) or -1 (removal).
    desc : str
        Progress-bar label.

    Returns
    -------
    values : PairedValues
        Per-image results.
    truncated : bool
        Whether the time budget stopped the run before every index was processed.
    """
    handle = cc.run.handle
    prep = handle.require_preprocessing()
    device = cc.run.device
    per_batch = max(1, cc.run.batch_size // rows_per_image)
    done_idx: list[np.ndarray] = []
    clean_s, raw_s, ctrl_s = [], [], []
    n_batches = -(-len(indices) // per_batch)
    for chunk, images in tqdm(cc.batches(indices, per_batch), total=n_batches, file=sys.stderr, desc=desc,
                              unit="batch", leave=False, disable=None if cc.progress is None else not cc.progress):
        unit = prep.to_unit_tensor(images).to(device)
        ids = [cc.run.data.ids[int(i)] for i in chunk]
        treated, control = variants(unit, chunk, ids)
        b, rt, rc = unit.shape[0], treated.shape[1], control.shape[1]
        stacked = torch.cat([unit, treated.reshape(b * rt, *unit.shape[1:]), control.reshape(b * rc, *unit.shape[1:])])
        scores = target_scores(forward_logits(cc, stacked), target, effect).numpy()
        f0 = scores[:b]
        ft = scores[b : b + b * rt].reshape(b, rt).mean(1)
        fc = scores[b + b * rt :].reshape(b, rc).mean(1)
        done_idx.append(np.asarray(chunk))
        clean_s.append(f0)
        raw_s.append(sign * (ft - f0))
        ctrl_s.append(sign * (fc - f0))
    idx = np.concatenate(done_idx) if done_idx else np.zeros(0, np.int64)
    raw = np.concatenate(raw_s) if raw_s else np.zeros(0)
    ctrl = np.concatenate(ctrl_s) if ctrl_s else np.zeros(0)
    values = PairedValues(indices=idx, ids=[cc.run.data.ids[int(i)] for i in idx],
                          clean=np.concatenate(clean_s) if clean_s else np.zeros(0), raw=raw, control=ctrl,
                          effect=raw - ctrl)
    return values, len(idx) < len(indices)


def to_pil(image: torch.Tensor):
    """A (3, H, W) tensor in [0, 1] as an RGB PIL image."""
    from PIL import Image

    arr = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, "RGB")


def _examples(cc: CheckContext, values: PairedValues, variants: Variants, labels: tuple[str, str],
              effect: str, target: int, k: int = 3) -> tuple[list[dict], dict[str, str]]:
    """Clean / treated / control thumbnails of the ``k`` images with the largest effect."""
    if values.effect.size == 0:
        return [], {}
    order = np.argsort(-values.effect, kind="stable")[:k]
    idx = values.indices[order]
    prep = cc.run.handle.require_preprocessing()
    unit = prep.to_unit_tensor(cc.run.load_images(idx)).to(cc.run.device)
    treated, control = variants(unit, idx, [cc.run.data.ids[int(i)] for i in idx])
    panels = torch.stack([unit, treated[:, 0], control[:, 0]], 1)
    scores = target_scores(forward_logits(cc, panels.reshape(-1, *unit.shape[1:])), target, effect)
    scores = scores.reshape(len(idx), 3).numpy()
    examples, assets = [], {}
    for j, (i, o) in enumerate(zip(idx, order)):
        row = {"id": cc.run.data.ids[int(i)], "effect": float(values.effect[o]), "panels": []}
        for p, name in enumerate(("clean", *labels)):
            key = f"{cc.spec.id}/{j}/{name.replace(' ', '_')}"
            assets[key] = to_data_uri(thumbnail(to_pil(panels[j, p]), 128))
            row["panels"].append({"asset": key, "label": name, "score": float(scores[j, p])})
        examples.append(row)
    return examples, assets


def paired_result(cc: CheckContext, values: PairedValues, truncated: bool, n_planned: int, *, effect: str,
                  target: int, variants: Variants, labels: tuple[str, str]) -> Measurement:
    """Statistics, per-image values and example images of a paired intervention.

    Parameters
    ----------
    cc : CheckContext
        The check.
    values : PairedValues
        From :func:`run_paired`.
    truncated : bool
        Whether the budget cut the sample.
    n_planned : int
        Images the check meant to use.
    effect : str
        The effect name.
    target : int
        Target class index.
    variants : callable
        Rebuilds the example images.
    labels : tuple of str
        Names of the treated and control panels (e.g. ``("with artifact", "control")``).

    Returns
    -------
    Measurement
        The control-corrected effect (tested), plus ``raw_effect`` and ``control_effect`` metrics.
    """
    unit = EFFECTS[effect]
    m = paired_measurement(cc, values.effect, unit=unit, n_planned=n_planned, truncated=truncated)
    for name, arr in (("raw_effect", values.raw), ("control_effect", values.control)):
        ci = bootstrap_ci(arr, confidence=cc.defaults.ci, n_resamples=cc.defaults.n_resamples,
                          seed=cc.seed("bootstrap", name)) if arr.size else None
        m.metrics[name] = metric(float(arr.mean()) if arr.size else None, ci, n=int(arr.size), unit=unit,
                                 higher_is_better=False)
    m.metrics["clean_score"] = metric(float(values.clean.mean()) if values.clean.size else None,
                                      n=int(values.clean.size), unit=unit.replace("fraction of images",
                                                                                   "fraction predicted as target"))
    counts, edges = np.histogram(values.effect, bins=20) if values.effect.size else (np.zeros(0), np.zeros(1))
    m.details.update({
        "effect_name": effect,
        "histogram": {"counts": counts.tolist(), "edges": edges.tolist()},
        "per_image": {"ids": values.ids, "effect": values.effect.tolist(), "raw": values.raw.tolist(),
                      "control": values.control.tolist(), "clean": values.clean.tolist()},
    })
    m.examples, m.assets = _examples(cc, values, variants, labels, effect, target)
    return m
