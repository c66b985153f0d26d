"""CAMs over a folder of volumes as a report: slice views and, with masks, a localisation table.

:func:`explain_volumes` runs the volume methods (:data:`explainkit.cam.api.VOLUME_KINDS`) of a Conv3d
model over a :class:`explainkit.data.volumes.VolumeSet`, and builds a report whose section
``cam_volumes`` holds, per example volume, each method's map over three orthogonal slices through the
map's peak, and, for every mask folder (the true sources: planted lesions, annotations), the pointing
game and the energy inside the mask per method with CIs and chance levels
(:func:`explainkit.cam.localisation.localisation_table`); a method that fails to localise a label
on the model is a warning finding.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from explainkit.cam.api import VOLUME_KINDS, compute
from explainkit.cam.engine import as_handle
from explainkit.cam.localisation import MIN_HIT_RATE, RULE, failure_findings, localisation_table
from explainkit.cam.methods import get_method, list_methods
from explainkit.cam.render import example_assets, quantize
from explainkit.data.volumes import VolumeSet
from explainkit.errors import ConfigError, DataError
from explainkit.loading.handle import ModelHandle
from explainkit.report.build import build_report
from explainkit.report.report import Report
from explainkit.report.section import Section

__all__ = ["SECTION", "VOLUME_DEFAULT_METHODS", "explain_volumes"]

#: The section's analyzer name (and template ``sections/cam_volumes.html.j2``).
SECTION = "cam_volumes"
#: Methods run when none are named: the default one-pass methods that run on volumes.
VOLUME_DEFAULT_METHODS = tuple(m for k in ("gradient", "activation") for m in list_methods(k, default=True))


def explain_volumes(
    model: nn.Module | ModelHandle,
    volumes: VolumeSet | str | Path,
    *,
    methods: Sequence[str] = VOLUME_DEFAULT_METHODS,
    layer: str | Sequence[str] | None = None,
    targets: Any = None,
    examples: int = 4,
    tolerance: float | None = None,
    min_hit_rate: float = MIN_HIT_RATE,
    batch_size: int = 8,
    seed: int = 0,
    n_resamples: int = 2000,
    out: str | Path | None = None,
) -> Report:
    """Explain every volume of a folder and report slice views and localisation against its masks.

    Parameters
    ----------
    model : torch.nn.Module or ModelHandle
        A model taking (B, C, D, H, W) volumes.
    volumes : VolumeSet or path
        The volume folder (see :mod:`explainkit.data.volumes`).
    methods : sequence of str
        Volume methods (gradient, activation and perturbation kinds).
    layer, targets
        As :func:`explainkit.cam.compute` (``None``: the last spatial layer; the predicted class); a
        sequence of one target per volume (in id order) is split across the batches.
    examples : int
        Volumes shown as slice views (the first ones in id order, preferring volumes with masks).
    tolerance : float, optional
        Pointing-game radius in voxels (default: 15 px at 224 px scaled to the largest axis).
    min_hit_rate : float
        Least pointing-game hit rate of a localiser (the verdict rule of
        :mod:`explainkit.cam.localisation`).
    batch_size, seed : int
        Volumes per model pass; seed of every draw (bootstrap, noise).
    n_resamples : int
        Bootstrap resamples of the energy CIs.
    out : str or Path, optional
        Folder to save ``report.json`` and ``report.html`` to.

    Returns
    -------
    Report
        The report (one section, ``cam_volumes``).

    Raises
    ------
    ConfigError
        Image-only methods, bad parameters.
    DataError
        Unreadable volumes or masks, volumes of different shapes.
    """
    start = time.perf_counter()
    data = volumes if isinstance(volumes, VolumeSet) else VolumeSet.from_folder(volumes)
    names = [get_method(m).name for m in methods]
    image_only = [n for n in names if get_method(n).kind not in VOLUME_KINDS]
    if image_only:
        raise ConfigError(f"method(s) {', '.join(image_only)} do not run on volumes")
    if examples < 0 or batch_size < 1:
        raise ConfigError("examples must be >= 0 and batch_size >= 1")
    handle = as_handle(model)
    maps: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    classes: list[torch.Tensor] = []
    layers: list[str] = []
    shape: tuple[int, ...] | None = None
    for lo in range(0, len(data), batch_size):
        idx = list(range(lo, min(len(data), lo + batch_size)))
        batch = data.stack(idx)
        if shape is not None and batch.shape[1:] != shape:
            raise DataError(f"volumes of different shapes: {data.ids[idx[0]]} is {batch.shape[1:]}, "
                            f"{data.ids[0]} is {shape}")
        shape = batch.shape[1:]
        res = compute(handle, torch.from_numpy(batch), methods=names, layer=layer,
                      targets=_rows(targets, idx, len(data)), batch_size=batch_size, seed=seed)
        layers = res.layers
        for n in names:
            maps[n].append(res.maps[n].cpu())
        if res.classes is not None:
            classes.append(res.classes.cpu())
    full = {n: torch.cat(v) for n, v in maps.items()}
    spatial = tuple(full[names[0]].shape[1:])
    masks = {name: [data.mask(i, name, spatial) for i in range(len(data))] for name in data.mask_names()}
    table = localisation_table(full, masks, tolerance=tolerance, min_hit_rate=min_hit_rate, n_resamples=n_resamples,
                               seed=seed)
    section = _section(data, full, masks, table, layers, torch.cat(classes) if classes else None, examples,
                       params={"methods": names, "layer": layer, "examples": examples, "tolerance": tolerance,
                               "min_hit_rate": min_hit_rate})
    report = build_report(kind="analysis", sections=[section], handle=handle, data=data, seed=seed,
                          device=handle.device(), batch_size=batch_size,
                          config={"methods": names, "layer": layer},
                          timings={"explain_volumes": time.perf_counter() - start})
    if out is not None:
        report.save(out)
    return report


def _rows(targets: Any, idx: list[int], total: int) -> Any:
    """The targets of one chunk: one-per-volume sequences are sliced, anything else passes through."""
    if not isinstance(targets, list | tuple | np.ndarray | torch.Tensor) or (
            isinstance(targets, np.ndarray | torch.Tensor) and targets.ndim == 0):
        return targets
    if len(targets) == total:
        return [targets[i] for i in idx]
    if len(targets) == 1:
        return targets
    raise ConfigError(f"got {len(targets)} targets for {total} volumes; give one, or one per volume")


def _section(data: VolumeSet, maps: dict[str, torch.Tensor], masks: dict[str, list[np.ndarray | None]],
             table: list[dict[str, Any]], layers: list[str], classes: torch.Tensor | None, examples: int,
             params: dict[str, Any]) -> Section:
    with_mask = [i for i in range(len(data)) if any(ms[i] is not None for ms in masks.values())]
    chosen = (with_mask + [i for i in range(len(data)) if i not in with_mask])[:examples]
    names = data.class_names or ()
    assets: dict[str, str] = {}
    shown = []
    for n, i in enumerate(chosen):
        fields, images = example_assets(f"ex{n}", data.load(i)[0], {m: quantize(v[i].numpy()) for m, v in maps.items()})
        assets.update(images)
        cls = None if classes is None else int(classes[i])
        shown.append({"id": data.ids[i], "explained_class": names[cls] if cls is not None and cls < len(names)
                      else cls, "label": names[int(data.labels[i])] if data.labels[i] >= 0 and names else None,
                      "masks": [name for name, ms in masks.items() if ms[i] is not None], "views": fields["views"]})
    failing = [r for r in table if r["verdict"] == "fails"]
    findings = failure_findings(table, SECTION, "volumes")
    summary = {"volumes": len(data), "methods": len(maps),
               "fail_to_localise": ", ".join(sorted({f"{r['method']} ({r['label']})" for r in failing})) or "none"}
    body = {"layers": layers, "shape": list(next(iter(maps.values())).shape[1:]), "localisation": table,
            "examples": shown, "planes": ["axial", "coronal", "sagittal"],
            "notes": "Slices pass through the map's peak voxel (axial: fixed depth, coronal: fixed height, "
                     "sagittal: fixed width). Localisation: pointing game (Wilson CI) and mean energy inside "
                     "the mask (bootstrap CI over volumes); chance is a uniformly random peak / a uniform map. "
                     f"Verdict: {RULE}."}
    return Section(SECTION, "Class-activation maps on volumes", params, summary, body, findings, assets)
