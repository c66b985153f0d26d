"""Streaming a probe set into Network Dissection states: per batch, and for a whole probe set.

One batch's unit maps go into each layer's :class:`~explainkit.dissect.tally.DissectState`, the
concept masks' pixel counts are recorded, and (optionally) the maps' spatial means are kept for
INVERT. Analyzers call :func:`map_batch` from ``map`` with the maps of the runner's shared pass;
:func:`stream_probe` runs the same over a whole (second) probe set with passes of its own;
:func:`label_layer` tallies and labels one layer of a merged state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from explainkit.adapters.activations import Pooler, batch_activations
from explainkit.analyzers.base import RecordState
from explainkit.data.probe import ProbeSet
from explainkit.dissect.labels import UnitLabel, label_units
from explainkit.dissect.masks import MaskReader
from explainkit.dissect.quantile import top_k_size
from explainkit.dissect.tally import DissectState, Tally, tally
from explainkit.hooks import eval_mode
from explainkit.loading.handle import ModelHandle

__all__ = ["DissectRunState", "label_layer", "map_batch", "stream_probe"]


@dataclass
class DissectRunState:
    """One :class:`DissectState` per layer plus pooled activations (``act:<layer>`` columns) for INVERT."""

    layers: dict[str, DissectState] = field(default_factory=dict)
    pooled: RecordState = field(default_factory=RecordState)

    def merge(self, other: DissectRunState) -> DissectRunState:
        """Layer-wise merge (associative and commutative)."""
        names = list(dict.fromkeys([*self.layers, *other.layers]))
        layers = {n: self.layers[n].merge(other.layers[n]) if n in self.layers and n in other.layers
                  else self.layers.get(n) or other.layers[n] for n in names}
        return DissectRunState(layers, self.pooled.merge(other.pooled))


def map_batch(maps: Mapping[str, np.ndarray], indices: np.ndarray, image_sizes: Sequence[tuple[int, int]],
              reader: MaskReader, n_images: int, quantile: float, *, pooled: bool = True) -> DissectRunState:
    """The state of one batch from its unit maps.

    Parameters
    ----------
    maps : mapping of str to ndarray
        Layer → (B, D, h, w) float32 unit maps (:func:`~explainkit.adapters.activations.pool_outputs`
        with ``spatial=True``).
    indices : ndarray
        (B,) probe indices.
    image_sizes : sequence of tuple of int
        (width, height) of each source image.
    reader : MaskReader
        Concept masks of the probe set.
    n_images : int
        Images in the whole probe set (sizes the exact quantile state).
    quantile : float
        Top share of activations that fires a unit.
    pooled : bool
        Also keep the maps' spatial means (for INVERT).

    Returns
    -------
    DissectRunState
        Mergeable state.
    """
    masks = reader(indices, image_sizes)
    layers = {}
    for name, m in maps.items():
        k = top_k_size(n_images * m.shape[2] * m.shape[3], quantile)
        layers[name] = DissectState.from_batch(indices, torch.from_numpy(m), masks, k)
    cols = {f"act:{name}": m.mean((2, 3)) for name, m in maps.items()} if pooled else {}
    return DissectRunState(layers, RecordState.from_batch(indices, **cols))


def stream_probe(handle: ModelHandle, probe: ProbeSet, poolers: Mapping[str, Pooler], reader: MaskReader,
                 quantile: float, batch_size: int) -> DissectRunState:
    """:func:`map_batch` over a whole probe set (in passes of its own), merged."""
    state = DissectRunState()
    device = handle.device()
    with eval_mode(handle.module):
        for indices, images in probe.iter_batches(batch_size):
            maps = batch_activations(handle, handle.preprocess(images).to(device), poolers, spatial=True)
            state = state.merge(map_batch(maps, indices, [im.size for im in images], reader, len(probe), quantile))
    return state


def label_layer(state: DissectRunState, layer: str, concept_names: Sequence[str], *, quantile: float,
                iou_threshold: float, alpha: float) -> tuple[Tally, list[UnitLabel]]:
    """Tally one layer of a merged state and label its units."""
    counts = tally(state.layers[layer], quantile)
    return counts, label_units(counts, concept_names, iou_threshold=iou_threshold, alpha=alpha)
