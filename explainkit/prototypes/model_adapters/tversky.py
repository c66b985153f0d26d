"""Adapter of Tversky projection layers (Doumbouya, Jurafsky and Manning, 2025).

The layer's prototypes are the analyzer's prototypes. Every latent cell before the layer is a
stimulus; its Tversky similarity to each prototype (the layer's own θ, α, β, feature bank and
reductions) is the similarity map. The own explanation reads the sets: each prototype's feature set
(the features ``f_k`` with ``π·f_k > 0``, with their measures and the prototype's salience), the
learned θ, α, β, and, streamed over the probe set, what every feature looks like (its top-activating
probe patch) and how often each class's images have it.
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
from explainkit.prototypes.adapters import PrototypeAdapter, _latent_layer_before, patch_box
from explainkit.prototypes.explanation import ExplanationBatch, ExplanationContext, ModelExplanation, image_asset
from explainkit.prototypes.importance import _better
from explainkit.prototypes.model_adapters._common import contains, find_module, has_tensors
from explainkit.prototypes.models.tversky import feature_sets, salience, tversky_similarity
from explainkit.prototypes.registry import AdapterKind, AdapterRequest
from explainkit.prototypes.visuals import with_box

__all__ = ["KIND", "TverskyExplanation", "TverskyPrototypes", "is_tversky_layer"]

REFERENCE = ("Doumbouya, Jurafsky and Manning (2025), Tversky Neural Networks: Psychologically Plausible Deep "
             "Learning with Differentiable Tversky Similarity")


def is_tversky_layer(module: nn.Module) -> bool:
    """A Tversky projection layer: 2-D ``prototypes`` and ``features``, scalars ``alpha``, ``beta``, ``theta``."""
    return (has_tensors(module, "prototypes", "features", dims=(2,))
            and has_tensors(module, "alpha", "beta", "theta", dims=(0, 1)))


class TverskyPrototypes(PrototypeAdapter):
    """Per-cell Tversky similarity to the prototypes of a Tversky projection layer.

    Parameters
    ----------
    model : ModelHandle or torch.nn.Module
        A model containing a layer :func:`is_tversky_layer` accepts.
    input_size : tuple of int
        (H, W) model input size.
    layer : str, optional
        The latent layer whose cells are the stimuli (default: the last module before the Tversky
        layer whose output is a map of its input depth).
    class_names : tuple of str
        The model's classes (prototype ``k`` stands for class ``k`` when there are as many).
    """

    kind = "tversky"

    def __init__(self, model: ModelHandle | nn.Module, input_size: tuple[int, int], layer: str | None = None,
                 class_names: tuple[str, ...] = ()) -> None:
        root = model.module if isinstance(model, ModelHandle) else model
        self.owner, head = find_module(root, is_tversky_layer, "Tversky projection layer")
        self.prototypes = head.prototypes.detach().float().cpu()
        self.features = head.features.detach().float().cpu()
        self.alpha, self.beta, self.theta = (float(getattr(head, n).detach()) for n in ("alpha", "beta", "theta"))
        self.intersection = getattr(head, "intersection", "product")
        self.difference = getattr(head, "difference", "ignorematch")
        depth = int(self.prototypes.shape[1])
        super().__init__(layer or _latent_layer_before(model, self.owner, depth, input_size))
        self.num_prototypes = int(self.prototypes.shape[0])
        self.class_names = tuple(class_names)
        one_per_class = len(self.class_names) in (0, self.num_prototypes)
        self.classes: list[int | None] = [j if one_per_class else None for j in range(self.num_prototypes)]
        self.unit = "Tversky similarity"
        self.bind(model, input_size)

    def _check_latent(self, z: torch.Tensor) -> None:
        if z.shape[1] != self.prototypes.shape[1]:
            raise ConfigError(f"layer {self.layer!r} has {z.shape[1]} channels, the Tversky prototypes "
                              f"{self.prototypes.shape[1]}")

    def similarity_from_latent(self, z: torch.Tensor, prototypes: torch.Tensor | None = None) -> torch.Tensor:
        """See :meth:`PrototypeAdapter.similarity_from_latent`."""
        b, d, h, w = z.shape
        protos = self.prototypes if prototypes is None else self.prototypes[prototypes.cpu()]
        sim = tversky_similarity(z.permute(0, 2, 3, 1).reshape(-1, d), protos.to(z), self.features.to(z), self.alpha,
                                 self.beta, self.theta, self.intersection, self.difference)
        return sim.view(b, h, w, -1).permute(0, 3, 1, 2)

    def feature_maps(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) latent map → (B, F, h, w) feature measures ``z·f_k`` of every cell."""
        return torch.einsum("bdhw,fd->bfhw", z, self.features.to(z))

    def prototype_class(self, p: int) -> int | None:
        """Prototype ``p`` stands for class ``p`` when there is one prototype per class."""
        return self.classes[p]

    def vectors(self) -> torch.Tensor:
        """(P, D) prototypes."""
        return self.prototypes

    def describe(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {**super().describe(), "tversky_layer": self.owner, "intersection": self.intersection,
                "difference": self.difference, "num_features": int(self.features.shape[0])}

    def explanation(self) -> TverskyExplanation:
        """Prototype and feature sets, θ, α, β."""
        return TverskyExplanation(self, len(self.class_names))


@dataclass
class _FeatureStats:
    """Per feature its top cell over the probe set, and per class how many images have it."""

    best: np.ndarray
    best_index: np.ndarray
    present: np.ndarray
    images: np.ndarray

    def merge(self, other: _FeatureStats) -> _FeatureStats:
        take = _better(other.best, other.best_index, self.best, self.best_index)
        return _FeatureStats(np.where(take, other.best, self.best), np.where(take, other.best_index, self.best_index),
                             self.present + other.present, self.images + other.images)


class TverskyExplanation(ModelExplanation):
    """Prototype sets, feature bank and the Tversky parameters."""

    kind = "tversky"
    title = "Tversky prototypes and feature sets"
    reference = REFERENCE

    def __init__(self, adapter: TverskyPrototypes, n_classes: int = 0) -> None:
        self.adapter = adapter
        self.n_classes = n_classes

    def init_state(self) -> _FeatureStats:
        """No image yet."""
        f = int(self.adapter.features.shape[0])
        k = max(self.n_classes, 1)
        return _FeatureStats(np.full(f, -np.inf), np.full(f, -1, np.int64), np.zeros((k, f)), np.zeros(k))

    def map(self, view: ExplanationBatch) -> _FeatureStats:
        """Feature measures of the batch's original images."""
        b = len(view.batch)
        z = self.adapter.latent(view.ctx.handle, view.inputs[:b].to(view.ctx.device))
        top = self.adapter.feature_maps(z).flatten(2).amax(2).cpu().numpy()  # (B, F)
        order = np.argsort(view.batch.indices, kind="stable")
        arg = top[order].argmax(axis=0)
        idx = np.asarray(view.batch.indices, np.int64)[order][arg]
        state = self.init_state()
        labels = view.batch.labels.cpu().numpy()
        for i in range(b):
            if 0 <= labels[i] < state.images.shape[0]:
                state.present[labels[i]] += top[i] > 0
                state.images[labels[i]] += 1
        return state.merge(_FeatureStats(top[order][arg, np.arange(top.shape[1])], idx, np.zeros_like(state.present),
                                         np.zeros_like(state.images)))

    def merge(self, a: _FeatureStats, b: _FeatureStats) -> _FeatureStats:
        """Top cells of both, summed counts."""
        return a.merge(b)

    def finalize(self, view: ExplanationContext, state: _FeatureStats) -> dict[str, Any]:
        """The sets, the parameters and the features' top patches."""
        a = self.adapter
        names = list(view.ctx.class_names)
        proto_m = feature_sets(a.prototypes, a.features)  # (P, F)
        prototypes = []
        for j in range(a.num_prototypes):
            order = torch.argsort(-proto_m[j]).tolist()
            members = [(int(k), float(proto_m[j, k])) for k in order if proto_m[j, k] > 0]
            prototypes.append({"prototype": j, "class": a.classes[j], "class_name": view.class_name(a.classes[j]),
                               "features": [{"feature": k, "measure": m} for k, m in members],
                               "salience": float(salience(proto_m[j]))})
        handle = view.ctx.handle
        size = tuple(handle.require_preprocessing().input_size)
        features = []
        for k in range(int(a.features.shape[0])):
            idx = int(state.best_index[k])
            row: dict[str, Any] = {"feature": k, "top_image": None, "top_measure": None, "asset": None,
                                   "in_prototypes": [j for j in range(a.num_prototypes) if proto_m[j, k] > 0]}
            if idx >= 0:
                image = view.ctx.load_images([idx])[0]
                z = a.latent(handle, handle.preprocess([image]).to(view.ctx.device))
                box = patch_box(a.feature_maps(z)[0, k].cpu().numpy(), size)
                boxed = with_box(handle.require_preprocessing().resize_image(image), box)
                row.update(top_image=view.ctx.data.ids[idx], top_measure=float(state.best[k]), box=list(box),
                           asset=image_asset(view.assets, f"model_feature{k}", boxed))
            images = state.images
            row["present_by_class"] = {
                (names[c] if c < len(names) else str(c)): metric(
                    state.present[c, k] / images[c] if images[c] else None, n=int(images[c]),
                    unit="fraction of the class's images", higher_is_better=None)
                for c in range(images.shape[0])}
            features.append(row)
        return {
            "parameters": {"theta": a.theta, "alpha": a.alpha, "beta": a.beta, "intersection": a.intersection,
                           "difference": a.difference},
            "alpha_vs_beta": ("the input's distinctive features weigh more than the prototype's (α > β)"
                              if a.alpha > a.beta else
                              "the prototype's distinctive features weigh at least as much as the input's (α ≤ β)"),
            "prototypes": prototypes, "features": features,
            "notes": "An object has feature k when its dot product with f_k is positive (its measure). S(a, π) = "
                     "θ f(A∩B) − α f(A−B) − β f(B−A) with a the image cell and π the prototype; a prototype's set is "
                     "the features it has, its salience the sum of their measures. A feature is present in an image "
                     "when some cell has it; its patch is its top-activating probe image with the 95th-percentile box "
                     "of its measure map.",
        }


def _build(request: AdapterRequest) -> TverskyPrototypes:
    return TverskyPrototypes(request.handle, request.input_size, request.layer, request.ctx.class_names)


#: The adapter kind (registered in :data:`~explainkit.prototypes.registry.BUILTIN_KINDS`).
KIND = AdapterKind(
    "tversky", _build, "Tversky projection layer: prototype and feature sets, θ, α, β", REFERENCE,
    detect=contains(is_tversky_layer), priority=10)
