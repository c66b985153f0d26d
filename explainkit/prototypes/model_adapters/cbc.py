"""Adapter of deep RBF / classification-by-components networks (Saralajew et al. 2019; 2025).

The components are the prototypes; their RBF detection probabilities at every latent cell
(``exp(-|z - w_k|² / (2σ²))``, the model's components and σ) are the similarity maps, in (0, 1].
The own explanation is CBC's reasoning: for every class and component the probabilities of
positive (must be detected), negative (must not be detected) and indefinite (irrelevant) reasoning,
the component priors, and, streamed over the probe set, each class's mean detection of each
component (so the reasoning can be read against what the images show). For the RBF head it gives
the linear layer's weights instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from explainkit.analyzers.metric import metric
from explainkit.errors import ConfigError
from explainkit.loading.handle import ModelHandle
from explainkit.prototypes.adapters import PrototypeAdapter, _latent_layer_before
from explainkit.prototypes.explanation import ExplanationBatch, ExplanationContext, ModelExplanation
from explainkit.prototypes.model_adapters._common import has_tensors
from explainkit.prototypes.models.cbc import rbf_detection
from explainkit.prototypes.registry import AdapterKind, AdapterRequest

__all__ = ["KIND", "CBCExplanation", "CBCPrototypes", "is_cbc"]

REFERENCE = ("Saralajew, Holdijk, Rees, Asan and Villmann (2019), Classification-by-Components: Probabilistic "
             "Modeling of Reasoning over a Set of Components, NeurIPS; Saralajew, Rana, Villmann and Shaker (2025), "
             "A Robust Prototype-Based Network with Interpretable RBF Classifier Foundations, AAAI")
REASONING = ("positive", "negative", "indefinite")


def is_cbc(module: nn.Module) -> bool:
    """RBF components (2-D ``components``, scalar ``log_sigma``) with a ``reasoning`` or ``rbf_head`` module."""
    return (has_tensors(module, "components", dims=(2,)) and has_tensors(module, "log_sigma", dims=(0, 1))
            and (callable(getattr(getattr(module, "reasoning", None), "probabilities", None))
                 or isinstance(getattr(module, "rbf_head", None), nn.Linear)))


class CBCPrototypes(PrototypeAdapter):
    """RBF detection maps of the components of a deep RBF / CBC network.

    Parameters
    ----------
    model : ModelHandle or torch.nn.Module
        A model :func:`is_cbc` accepts.
    input_size : tuple of int
        (H, W) model input size.
    layer : str, optional
        The latent layer (default: the last module whose output is a map of the components' depth).
    """

    kind = "cbc"

    def __init__(self, model: ModelHandle | nn.Module, input_size: tuple[int, int], layer: str | None = None) -> None:
        root = model.module if isinstance(model, ModelHandle) else model
        if not is_cbc(root):
            raise ConfigError(f"{type(root).__name__} has no RBF components with a CBC or RBF head "
                              "(components, log_sigma, reasoning or rbf_head)")
        self.components = root.components.detach().float().cpu()
        self.sigma = float(root.log_sigma.detach().exp().flatten()[0])
        reasoning = getattr(root, "reasoning", None)
        with torch.no_grad():
            self.reasoning = ({k: v.detach().float().cpu() for k, v in reasoning.probabilities().items()}
                              if reasoning is not None else None)
        head = getattr(root, "rbf_head", None)
        self.rbf_weights = head.weight.detach().float().cpu() if reasoning is None and head is not None else None
        super().__init__(layer or _latent_layer_before(model, "components", int(self.components.shape[1]), input_size))
        self.num_prototypes = int(self.components.shape[0])
        self.nonnegative = True
        self.default_weight = "similarity"
        self.unit = "RBF detection probability"
        self.bind(model, input_size)

    def _check_latent(self, z: torch.Tensor) -> None:
        if z.shape[1] != self.components.shape[1]:
            raise ConfigError(f"layer {self.layer!r} has {z.shape[1]} channels, the components "
                              f"{self.components.shape[1]}")

    def similarity_from_latent(self, z: torch.Tensor, prototypes: torch.Tensor | None = None) -> torch.Tensor:
        """See :meth:`PrototypeAdapter.similarity_from_latent`."""
        comps = self.components if prototypes is None else self.components[prototypes.cpu()]
        return rbf_detection(z, comps.to(z), self.sigma)

    def vectors(self) -> torch.Tensor:
        """(K, D) components."""
        return self.components

    def describe(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {**super().describe(), "head": "cbc" if self.reasoning is not None else "rbf", "sigma": self.sigma}

    def explanation(self) -> CBCExplanation:
        """Reasoning per class and component."""
        return CBCExplanation(self)


class CBCExplanation(ModelExplanation):
    """Positive, negative and indefinite reasoning per class and component (CBC), or RBF weights."""

    kind = "cbc"
    title = "Reasoning over components"
    reference = REFERENCE

    def __init__(self, adapter: CBCPrototypes) -> None:
        self.adapter = adapter
        head = adapter.reasoning["positive"].t() if adapter.reasoning is not None else adapter.rbf_weights
        self.n_classes = int(head.shape[0])

    def init_state(self) -> tuple[np.ndarray, np.ndarray]:
        """Per class: summed detections (C, K) and image counts (C,)."""
        return np.zeros((self.n_classes, self.adapter.num_prototypes)), np.zeros(self.n_classes)

    def map(self, view: ExplanationBatch) -> tuple[np.ndarray, np.ndarray]:
        """Detections (max over cells) of the batch's originals, summed per true class."""
        b = len(view.batch)
        det = self.adapter.similarity_maps(view.ctx.handle, view.inputs[:b].to(view.ctx.device))
        det = det.flatten(2).amax(2).double().cpu().numpy()
        sums, counts = self.init_state()
        for i, label in enumerate(view.batch.labels.tolist()):
            if 0 <= label < self.n_classes:
                sums[label] += det[i]
                counts[label] += 1
        return sums, counts

    def merge(self, a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]
              ) -> tuple[np.ndarray, np.ndarray]:
        """Sums."""
        return a[0] + b[0], a[1] + b[1]

    def finalize(self, view: ExplanationContext, state: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
        """Per component and class: reasoning probabilities, dominant reasoning, mean detection."""
        a = self.adapter
        sums, counts = state
        names = [view.class_name(c) or str(c) for c in range(self.n_classes)]
        components = []
        for k in range(a.num_prototypes):
            per_class = []
            for c in range(self.n_classes):
                row: dict[str, Any] = {"class": c, "class_name": names[c],
                                       "mean_detection": metric(sums[c, k] / counts[c] if counts[c] else None,
                                                                n=int(counts[c]),
                                                                unit="detection probability (mean over the class's "
                                                                     "images, max over cells)",
                                                                higher_is_better=None)}
                if a.reasoning is not None:
                    probs = {r: float(a.reasoning[r][k, c]) for r in REASONING}
                    row.update(probs, dominant=max(REASONING, key=lambda r: probs[r]))
                elif a.rbf_weights is not None:
                    row["weight"] = float(a.rbf_weights[c, k])
                per_class.append(row)
            entry: dict[str, Any] = {"component": k, "classes": per_class}
            if a.reasoning is not None:
                entry["prior"] = float(a.reasoning["prior"][k])
            components.append(entry)
        head = "cbc" if a.reasoning is not None else "rbf"
        return {
            "head": head, "sigma": a.sigma, "class_names": names, "components": components,
            "notes": ("CBC class probability p_c = Σ_k (r⁺ d_k + r⁻ (1 − d_k)) / Σ_k (r⁺ + r⁻): positive reasoning "
                      "r⁺ asks for the component to be detected, negative r⁻ for it to be absent, indefinite r⁰ "
                      "leaves it out; r⁺ + r⁻ + r⁰ = 1 per class and component. Detection d_k = exp(−|z − w_k|² / "
                      "(2σ²)), max over latent cells.") if head == "cbc" else
                     ("Deep RBF head: logits = W d + b on the RBF detections d_k = exp(−|z − w_k|² / (2σ²)); "
                      "weights per class and component are listed (positive: the component's detection raises the "
                      "class)."),
        }


def _build(request: AdapterRequest) -> CBCPrototypes:
    return CBCPrototypes(request.handle, request.input_size, request.layer)


#: The adapter kind (registered in :data:`~explainkit.prototypes.registry.BUILTIN_KINDS`).
KIND = AdapterKind(
    "cbc", _build, "RBF components; positive / negative / indefinite reasoning per class (CBC) or RBF weights",
    REFERENCE, detect=is_cbc, priority=10)
