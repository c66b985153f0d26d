"""Adapter of modern Hopfield association layers (Ramsauer et al., ICLR 2021).

The stored patterns are the prototypes; every latent cell before the layer is a state pattern and
its retrieval weights ``softmax(β Xᵀ ξ)`` (computed by the layer itself, with its normalisation and
projections) are the similarity maps, in [0, 1]. The own explanation reports β and, streamed over
the probe set, the retrieval regime the paper describes: how concentrated retrieval is (the largest
weight and the effective number of retrieved patterns, ``exp(entropy)``, per cell), the share of
cells that retrieve essentially one pattern (largest weight > 0.5) or average over most of them
(effective number > P/2), and how often each pattern is the one retrieved most.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from explainkit.analyzers.metric import metric
from explainkit.errors import ConfigError
from explainkit.loading.handle import ModelHandle
from explainkit.prototypes.adapters import PrototypeAdapter, _latent_layer_before
from explainkit.prototypes.explanation import ExplanationBatch, ExplanationContext, ModelExplanation
from explainkit.prototypes.model_adapters._common import contains, find_module, has_tensors, identity_classes
from explainkit.prototypes.registry import AdapterKind, AdapterRequest

__all__ = ["KIND", "HopfieldExplanation", "HopfieldPrototypes", "is_hopfield_layer"]

REFERENCE = "Ramsauer et al. (2021), Hopfield Networks is All You Need, ICLR"
#: Largest retrieval weight above which a cell counts as retrieving a single pattern.
SINGLE = 0.5


def is_hopfield_layer(module: nn.Module) -> bool:
    """A Hopfield lookup layer: 2-D ``stored_patterns`` and a scalar ``beta``."""
    return has_tensors(module, "stored_patterns", dims=(2,)) and has_tensors(module, "beta", dims=(0, 1))


class HopfieldPrototypes(PrototypeAdapter):
    """Retrieval weights of every latent cell over the stored patterns of a Hopfield layer.

    Parameters
    ----------
    model : ModelHandle or torch.nn.Module
        A model containing a layer :func:`is_hopfield_layer` accepts; the layer maps (N, d) state
        patterns to (N, P) retrieval weights.
    input_size : tuple of int
        (H, W) model input size.
    layer : str, optional
        The latent layer whose cells are the state patterns (default: the last module before the
        Hopfield layer whose output is a map of depth d).
    """

    kind = "hopfield"

    def __init__(self, model: ModelHandle | nn.Module, input_size: tuple[int, int], layer: str | None = None) -> None:
        root = model.module if isinstance(model, ModelHandle) else model
        self.owner, self.association = find_module(root, is_hopfield_layer, "Hopfield association layer")
        patterns = self.association.stored_patterns
        super().__init__(layer or _latent_layer_before(model, self.owner, int(patterns.shape[1]), input_size))
        self.num_prototypes = int(patterns.shape[0])
        self.beta = float(self.association.beta.detach().flatten()[0])
        self.classes = identity_classes(self.association, root)
        self.nonnegative = True
        self.default_weight = "similarity"
        self.unit = "retrieval weight"
        self.bind(model, input_size)

    def _check_latent(self, z: torch.Tensor) -> None:
        if z.shape[1] != self.association.stored_patterns.shape[1]:
            raise ConfigError(f"layer {self.layer!r} has {z.shape[1]} channels, the stored patterns "
                              f"{self.association.stored_patterns.shape[1]}")

    def similarity_from_latent(self, z: torch.Tensor, prototypes: torch.Tensor | None = None) -> torch.Tensor:
        """See :meth:`PrototypeAdapter.similarity_from_latent` (all patterns enter the softmax)."""
        b, d, h, w = z.shape
        with torch.no_grad():
            weights = self.association(z.permute(0, 2, 3, 1).reshape(-1, d)).float()
        maps = weights.view(b, h, w, -1).permute(0, 3, 1, 2)
        return maps if prototypes is None else maps[:, prototypes.to(maps.device)]

    def prototype_class(self, p: int) -> int | None:
        """See :meth:`PrototypeAdapter.prototype_class`."""
        return None if self.classes is None else self.classes[p]

    def vectors(self) -> torch.Tensor:
        """(P, d) stored patterns."""
        return self.association.stored_patterns.detach().float().cpu()

    def describe(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {**super().describe(), "hopfield_layer": self.owner, "beta": self.beta}

    def explanation(self) -> HopfieldExplanation:
        """β and the retrieval regime."""
        return HopfieldExplanation(self)


@dataclass
class _Retrieval:
    """Sums over cells of the largest weight, the effective number, regime counts, argmax counts."""

    cells: int
    images: int
    sum_max: float
    sum_effective: float
    single: int
    global_average: int
    sum_image_best: float
    top: np.ndarray

    def merge(self, other: _Retrieval) -> _Retrieval:
        return _Retrieval(self.cells + other.cells, self.images + other.images, self.sum_max + other.sum_max,
                          self.sum_effective + other.sum_effective, self.single + other.single,
                          self.global_average + other.global_average, self.sum_image_best + other.sum_image_best,
                          self.top + other.top)


class HopfieldExplanation(ModelExplanation):
    """β and the retrieval regime of the stored patterns."""

    kind = "hopfield"
    title = "Hopfield retrieval: stored patterns and β"
    reference = REFERENCE

    def __init__(self, adapter: HopfieldPrototypes) -> None:
        self.adapter = adapter

    def init_state(self) -> _Retrieval:
        """No cell yet."""
        return _Retrieval(0, 0, 0.0, 0.0, 0, 0, 0.0, np.zeros(self.adapter.num_prototypes, np.int64))

    def map(self, view: ExplanationBatch) -> _Retrieval:
        """Retrieval statistics of the batch's original images."""
        b = len(view.batch)
        maps = self.adapter.similarity_maps(view.ctx.handle, view.inputs[:b].to(view.ctx.device))  # (B, P, h, w)
        w = maps.permute(0, 2, 3, 1).reshape(b, -1, maps.shape[1]).double().cpu()  # (B, cells, P)
        largest = w.amax(-1)
        effective = torch.exp(-(w * torch.log(w.clamp_min(1e-300))).sum(-1))
        p = self.adapter.num_prototypes
        return _Retrieval(int(largest.numel()), b, float(largest.sum()), float(effective.sum()),
                          int((largest > SINGLE).sum()), int((effective > p / 2).sum()),
                          float(largest.amax(1).sum()), np.bincount(w.argmax(-1).flatten().numpy(), minlength=p))

    def merge(self, a: _Retrieval, b: _Retrieval) -> _Retrieval:
        """Sums."""
        return a.merge(b)

    def finalize(self, view: ExplanationContext, state: _Retrieval) -> dict[str, Any]:
        """β, the regime shares and each pattern's usage."""
        a = self.adapter
        n = state.cells

        def share(count: float) -> float | None:
            return count / n if n else None

        patterns = [{"prototype": j, "class": a.prototype_class(j), "class_name": view.class_name(a.prototype_class(j)),
                     "top_share": metric(share(state.top[j]), n=n, unit="fraction of latent cells retrieving it most",
                                         higher_is_better=None)}
                    for j in range(a.num_prototypes)]
        return {
            "beta": a.beta, "num_patterns": a.num_prototypes,
            "mean_largest_weight": metric(share(state.sum_max), n=n, unit="retrieval weight (mean over cells)",
                                          higher_is_better=None),
            "mean_image_best_weight": metric(state.sum_image_best / state.images if state.images else None,
                                             n=state.images, unit="retrieval weight (best cell of each image)",
                                             higher_is_better=None),
            "mean_effective_patterns": metric(share(state.sum_effective), n=n,
                                              unit="patterns (exp of the retrieval entropy, mean over cells)",
                                              higher_is_better=None),
            "single_pattern_share": metric(share(state.single), n=n,
                                           unit=f"fraction of cells with largest weight > {SINGLE}",
                                           higher_is_better=None),
            "global_average_share": metric(share(state.global_average), n=n,
                                           unit="fraction of cells with effective number > P/2", higher_is_better=None),
            "patterns": patterns,
            "notes": "Similarity = retrieval weight softmax(β Xᵀ ξ) of each latent cell ξ over the stored patterns X "
                     "(after the layer's normalisation and projections). Large β retrieves single patterns (fixed "
                     "points near a stored pattern); small β averages many (metastable and global fixed points).",
        }


def _build(request: AdapterRequest) -> HopfieldPrototypes:
    return HopfieldPrototypes(request.handle, request.input_size, request.layer)


#: The adapter kind (registered in :data:`~explainkit.prototypes.registry.BUILTIN_KINDS`).
KIND = AdapterKind(
    "hopfield", _build, "stored patterns of a Hopfield layer; retrieval weights as similarities; β", REFERENCE,
    detect=contains(is_hopfield_layer), priority=10)
