"""Explanations per class region or per label on a few example images, with localisation against the truth.

Shared by the ``segmentation`` and ``multilabel`` analyzers: the example images are drawn by a
seeded hash of their ids (the same on every backend and partition); each image is explained once per
region target (a class inside its true region, :class:`explainkit.SegmentationTarget`, or a label the
model predicts, :class:`explainkit.adapters.MultiLabelTarget`), and the maps are scored against the
known masks with :func:`explainkit.cam.localisation.localisation_table` (pointing game, energy inside
the mask, chance levels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from explainkit.adapters import Target
from explainkit.analyzers.base import RunContext
from explainkit.cam import render
from explainkit.cam.api import compute
from explainkit.cam.localisation import localisation_table
from explainkit.stats.sequential import priority_order

__all__ = ["RegionMaps", "example_indices", "explain_regions", "localise", "render_examples"]


@dataclass
class RegionMaps:
    """The maps of one example image: one per explained class / label.

    Attributes
    ----------
    index : int
        Probe-set index.
    classes : list of int
        Model output index explained by each map.
    maps : dict of str to ndarray
        Method → (n, H, W) uint8 maps at input resolution (one per class).
    masks : list of ndarray or None
        (H, W) bool truth region of each class (``None`` where the probe set has none).
    view : ndarray
        (H, W, 3) uint8 image as the model sees it.
    """

    index: int
    classes: list[int]
    maps: dict[str, np.ndarray]
    masks: list[np.ndarray | None]
    view: np.ndarray


def example_indices(ctx: RunContext, n: int, salt: str) -> frozenset[int]:
    """The ``n`` example images: first by a seeded hash of the ids (independent of the partition)."""
    return frozenset(int(i) for i in priority_order(ctx.data.ids, ctx.seed, salt)[:n])


def explain_regions(ctx: RunContext, inputs: torch.Tensor, target: Target, *, methods: Sequence[str],
                    layer: str | None) -> tuple[list[int], dict[str, np.ndarray]]:
    """Maps of one image for every row of ``target``: ``(explained classes, method → (n, H, W) uint8)``.

    Parameters
    ----------
    ctx : RunContext
        The run (handle, seed, rows per pass).
    inputs : torch.Tensor
        (n, C, H, W) the image repeated once per explained class (or (1, C, H, W) for a target that
        expands to every positive label).
    target : Target
        What each row explains.
    methods : sequence of str
        CAM methods.
    layer : str or None
        Target layer (``None``: the model's default).
    """
    result = compute(ctx.handle, inputs, methods=list(methods), layer=layer, targets=target,
                     batch_size=ctx.gradient_rows, seed=ctx.seed)
    classes = [] if result.classes is None else [int(c) for c in result.classes]
    return classes, {m: render.quantize(v.detach().cpu().numpy()) for m, v in result.maps.items()}


def localise(examples: Sequence[RegionMaps], names: Sequence[str], *, n_resamples: int, seed: int
             ) -> list[dict[str, Any]]:
    """Pointing game and energy in the truth region per (method, class), over the example maps."""
    by_class: dict[int, list[tuple[RegionMaps, int]]] = {}
    for ex in examples:
        for row, c in enumerate(ex.classes):
            by_class.setdefault(c, []).append((ex, row))
    rows = []
    for c in sorted(by_class):
        pairs = by_class[c]
        maps = {m: np.stack([ex.maps[m][row] for ex, row in pairs]).astype(np.float64) / 255.0
                for m in pairs[0][0].maps}
        masks = {names[c] if c < len(names) else str(c): [ex.masks[row] for ex, row in pairs]}
        rows += localisation_table(maps, masks, n_resamples=n_resamples, seed=seed)
    return rows


def render_examples(examples: Sequence[RegionMaps], ids: Sequence[str], names: Sequence[str]
                    ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Report records and image assets (input view, one overlay per class and method) of the examples."""
    records, assets = [], {}
    for n, ex in enumerate(examples):
        key = f"ex{n}"
        assets[f"{key}_input"] = render.view_uri(ex.view)
        overlays = []
        for row, c in enumerate(ex.classes):
            for m, maps in ex.maps.items():
                asset = f"{key}_{row}_{m}"
                assets[asset] = render.overlay_uri(ex.view, maps[row])
                mask = ex.masks[row]
                overlays.append({"class": names[c] if c < len(names) else str(c), "method": m, "asset": asset,
                                 "region_share": None if mask is None else float(mask.mean())})
        records.append({"id": ids[ex.index], "input": f"{key}_input", "overlays": overlays})
    return records, assets
