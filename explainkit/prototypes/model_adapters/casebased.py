"""Adapter of the case-based reasoning autoencoder (Li, Liu, Chen and Rudin, AAAI 2018).

The prototypes are whole latent codes, so each similarity map has a single cell (1×1, the whole
image: the paper compares complete codes); the similarity is the quantity the logits are linear in,
``-||f(x) - p_j||²`` (``linear``, read at the ``encoder`` output). The model's own explanation is the
paper's: every prototype decoded to an image, the class it speaks for (its most negative weight)
and its weights to every class, plus, streamed over the probe set, the paper's two interpretability
terms: R_1 (every prototype close to an input) as each prototype's closest probe image and its
squared distance, and R_2 (every input close to a prototype) as the mean over images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from explainkit.analyzers.metric import metric
from explainkit.errors import ConfigError
from explainkit.loading.handle import ModelHandle
from explainkit.prototypes.adapters import VectorPrototypes
from explainkit.prototypes.explanation import ExplanationBatch, ExplanationContext, ModelExplanation, image_asset
from explainkit.prototypes.importance import _better
from explainkit.prototypes.model_adapters._common import has_tensors
from explainkit.prototypes.models.casebased import squared_distances
from explainkit.prototypes.registry import AdapterKind, AdapterRequest

__all__ = ["KIND", "CaseBasedExplanation", "CaseBasedPrototypes", "is_case_based"]

REFERENCE = ("Li, Liu, Chen and Rudin (2018), Deep Learning for Case-Based Reasoning through Prototypes: "
             "A Neural Network that Explains Its Predictions, AAAI")


def is_case_based(module: nn.Module) -> bool:
    """An autoencoder with whole-code prototypes: ``encoder``, ``decoder``, 4-D ``prototypes``, ``last_layer``."""
    return (all(isinstance(getattr(module, n, None), nn.Module) for n in ("encoder", "decoder", "last_layer"))
            and has_tensors(module, "prototypes", dims=(4,)) and callable(getattr(module, "decode", None)))


class CaseBasedPrototypes(VectorPrototypes):
    """Whole-code prototypes read at the encoder output, with the model's own explanation.

    Parameters
    ----------
    model : ModelHandle or torch.nn.Module
        A model :func:`is_case_based` accepts.
    input_size : tuple of int
        (H, W) model input size.
    layer : str
        The encoder (its output is the code).
    similarity : str
        ``linear`` (−d, what the logits are linear in) or any other
        :data:`~explainkit.prototypes.similarity.SIMILARITIES` name.
    """

    kind = "case_based"

    def __init__(self, model: ModelHandle | nn.Module, input_size: tuple[int, int], layer: str = "encoder",
                 similarity: str = "linear") -> None:
        root = model.module if isinstance(model, ModelHandle) else model
        if not is_case_based(root):
            raise ConfigError(f"{type(root).__name__} is not a case-based prototype autoencoder (needs encoder, "
                              "decoder, decode, 4-D prototypes and last_layer)")
        weights = root.last_layer.weight.detach().float().cpu().t()  # W: (m, K)
        super().__init__(layer, root.prototypes, similarity, weights.argmin(dim=1).tolist(),
                         source="case-based prototypes (whole latent codes)")
        self.class_weights = weights
        if similarity == "linear":
            self.unit = "negative squared latent distance"
        self.bind(model, input_size)

    def explanation(self) -> CaseBasedExplanation:
        """Decoded prototypes, classes, class weights, R_1 / R_2 on the probe set."""
        return CaseBasedExplanation(self)


@dataclass
class _Closest:
    """Per prototype the closest probe code (R_1) and the sum over images of the closest prototype (R_2)."""

    best: np.ndarray
    best_index: np.ndarray
    r2_sum: float
    n: int

    def merge(self, other: _Closest) -> _Closest:
        take = _better(-other.best, other.best_index, -self.best, self.best_index)  # smaller distance wins
        return _Closest(np.where(take, other.best, self.best), np.where(take, other.best_index, self.best_index),
                        self.r2_sum + other.r2_sum, self.n + other.n)


class CaseBasedExplanation(ModelExplanation):
    """The model's own explanation of the case-based autoencoder."""

    kind = "case_based"
    title = "Decoded prototypes and class weights"
    reference = REFERENCE

    def __init__(self, adapter: CaseBasedPrototypes) -> None:
        self.adapter = adapter

    def init_state(self) -> _Closest:
        """No image yet."""
        p = self.adapter.num_prototypes
        return _Closest(np.full(p, np.inf), np.full(p, -1, np.int64), 0.0, 0)

    def map(self, view: ExplanationBatch) -> _Closest:
        """Closest codes of the batch's original images."""
        b = len(view.batch)
        z = self.adapter.latent(view.ctx.handle, view.inputs[:b].to(view.ctx.device)).flatten(1)
        d = squared_distances(self.adapter.prototype_vectors.flatten(1).to(z), z).cpu().numpy()  # (P, B)
        arg = d.argmin(axis=1)
        return self.init_state().merge(_Closest(d.min(axis=1), np.asarray(view.batch.indices)[arg],
                                                float(d.min(axis=0).sum()), b))

    def merge(self, a: _Closest, b: _Closest) -> _Closest:
        """Closest of both; sums."""
        return a.merge(b)

    def finalize(self, view: ExplanationContext, state: _Closest) -> dict[str, Any]:
        """Decoded prototype images and their classes, weights and closest probe images."""
        root = view.ctx.handle.module
        with torch.no_grad():
            decoded = root.decode(self.adapter.prototype_vectors.to(view.ctx.device)).clamp(0, 1).cpu()
        names = list(view.ctx.class_names) or [str(k) for k in range(self.adapter.class_weights.shape[1])]
        unit = "logit per unit squared distance (negative: closeness raises the class)"
        rows = []
        for j in range(self.adapter.num_prototypes):
            image = Image.fromarray((decoded[j].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
            cls = self.adapter.classes[j]
            idx = int(state.best_index[j])
            rows.append({
                "prototype": j, "class": cls, "class_name": view.class_name(cls),
                "decoded": image_asset(view.assets, f"model_decoded{j}", image),
                "class_weights": {names[k] if k < len(names) else str(k): float(w)
                                  for k, w in enumerate(self.adapter.class_weights[j].tolist())},
                "closest_image": view.ctx.data.ids[idx] if idx >= 0 else None,
                "closest_distance": metric(state.best[j] if idx >= 0 else None, n=state.n,
                                           unit="squared latent distance", higher_is_better=False),
            })
        finite = np.isfinite(state.best)
        return {
            "prototypes": rows, "class_names": names, "weight_unit": unit,
            "r1": metric(float(state.best[finite].mean()) if finite.any() else None, n=int(finite.sum()),
                         unit="squared latent distance (mean over prototypes of the closest probe code)",
                         higher_is_better=False),
            "r2": metric(state.r2_sum / state.n if state.n else None, n=state.n,
                         unit="squared latent distance (mean over images of the closest prototype)",
                         higher_is_better=False),
            "notes": "Decoded prototypes are g(p_j), the decoder applied to the prototype codes. A prototype speaks "
                     "for the class with its most negative weight (logits = distances × W). R_1 and R_2 are the "
                     "paper's interpretability terms measured on the probe set: small R_1 means every prototype "
                     "looks like some probe image; small R_2 means every probe image is close to a prototype.",
        }


def _build(request: AdapterRequest) -> CaseBasedPrototypes:
    sim = request.options.get("similarity", "auto")
    return CaseBasedPrototypes(request.handle, request.input_size, request.layer or "encoder",
                               "linear" if sim == "auto" else sim)


#: The adapter kind (registered in :data:`~explainkit.prototypes.registry.BUILTIN_KINDS`).
KIND = AdapterKind(
    "case_based", _build, "autoencoder with whole-code prototypes: decoded prototypes, class weights, R1/R2",
    REFERENCE, detect=is_case_based, priority=10)
