"""Adapter of ST-ProtoPNet (Wang et al., ICCV 2023): support and trivial prototype sets.

Both sets are read in one pass, each at its own add-on output, and concatenated: prototypes
``0 … P-1`` are the support set, ``P … 2P-1`` the trivial set (the analyzer's prototype indices).
Similarity is the model's own (``prototype_activation_function``: projection or cosine). The own
explanation separates the two sets and gives every prototype's angular distance to the
nearest-prototype decision boundary (:func:`~explainkit.prototypes.models.stprotopnet.boundary_distance`)
next to its class and Nauta verdict, plus the per-set summary (median distance, and the one-sided
Mann-Whitney test that support prototypes lie closer to the boundary than trivial ones).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from explainkit.analyzers.metric import metric
from explainkit.errors import ConfigError
from explainkit.loading.handle import ModelHandle
from explainkit.prototypes.adapters import PrototypeAdapter
from explainkit.prototypes.explanation import ExplanationContext, ModelExplanation
from explainkit.prototypes.model_adapters._common import has_tensors, identity_classes
from explainkit.prototypes.models.stprotopnet import BRANCHES, boundary_distance
from explainkit.prototypes.registry import AdapterKind, AdapterRequest
from explainkit.prototypes.similarity import NONNEGATIVE, similarity
from explainkit.stats import delong_ci, mann_whitney

__all__ = ["KIND", "STPrototypes", "SupportTrivialExplanation", "is_st_protopnet"]

REFERENCE = ("Wang, Liu, Chen, Liu, Tian, McCarthy, Frazer and Carneiro (2023), Learning Support and Trivial "
             "Prototypes for Interpretable Image Classification, ICCV")


def is_st_protopnet(module: nn.Module) -> bool:
    """Two prototype sets and add-on heads with the reference's names."""
    return (has_tensors(module, *(f"prototype_vectors_{b}" for b in BRANCHES), dims=(4,))
            and all(isinstance(getattr(module, f"add_on_layers_{b}", None), nn.Module) for b in BRANCHES))


class STPrototypes(PrototypeAdapter):
    """The support and trivial sets of an ST-ProtoPNet, concatenated (support first).

    Parameters
    ----------
    model : ModelHandle or torch.nn.Module
        A model :func:`is_st_protopnet` accepts.
    input_size : tuple of int
        (H, W) model input size.
    similarity : str, optional
        Overrides the model's ``prototype_activation_function`` (``projection`` or ``cosine``).
    """

    kind = "st_protopnet"

    def __init__(self, model: ModelHandle | nn.Module, input_size: tuple[int, int], similarity: str | None = None
                 ) -> None:
        root = model.module if isinstance(model, ModelHandle) else model
        if not is_st_protopnet(root):
            raise ConfigError(f"{type(root).__name__} has no support and trivial prototype sets "
                              "(prototype_vectors_support/_trivial, add_on_layers_support/_trivial)")
        self.layers = [f"add_on_layers_{b}" for b in BRANCHES]
        super().__init__(self.layers[0])
        self.sets = {b: getattr(root, f"prototype_vectors_{b}").detach().float().cpu() for b in BRANCHES}
        sizes = {tuple(v.shape) for v in self.sets.values()}
        if len(sizes) != 1:
            raise ConfigError(f"support and trivial prototypes differ in shape: {sorted(sizes)}")
        self.similarity = similarity or getattr(root, "prototype_activation_function", "projection")
        if self.similarity not in ("projection", "cosine", "log", "linear", "exp"):
            raise ConfigError(f"st_protopnet: unknown similarity {self.similarity!r}")
        self.per_set = int(self.sets[BRANCHES[0]].shape[0])
        self.num_prototypes = 2 * self.per_set
        self.classes = (identity_classes(root, root) or [None] * self.per_set) * 2
        self.nonnegative = self.similarity in NONNEGATIVE
        self.default_weight = "similarity" if self.nonnegative else "softplus"
        self.unit = f"{self.similarity} similarity"
        self.bind(model, input_size)

    def set_of(self, p: int) -> str:
        """``support`` or ``trivial``."""
        return BRANCHES[p // self.per_set]

    def latent_layers(self) -> list[str]:
        """Both add-on layers: the latent map is (B, 2D, h, w), support channels first."""
        return self.layers

    def _check_latent(self, z: torch.Tensor) -> None:
        d = int(self.sets[BRANCHES[0]].shape[1])
        if z.shape[1] != 2 * d:
            raise ConfigError(f"the add-on layers give {z.shape[1]} channels in all, the prototypes need 2 × {d}")

    def similarity_from_latent(self, z: torch.Tensor, prototypes: torch.Tensor | None = None) -> torch.Tensor:
        """See :meth:`PrototypeAdapter.similarity_from_latent`."""
        d = z.shape[1] // 2
        maps = torch.cat([similarity(z[:, i * d : (i + 1) * d], self.sets[b].to(z), self.similarity)
                          for i, b in enumerate(BRANCHES)], dim=1)
        return maps if prototypes is None else maps[:, prototypes.to(z.device)]

    def prototype_class(self, p: int) -> int | None:
        """See :meth:`PrototypeAdapter.prototype_class`."""
        return self.classes[p]

    def vectors(self) -> torch.Tensor:
        """(2P, D) prototype vectors, support first."""
        return torch.cat([self.sets[b].flatten(1) for b in BRANCHES])

    def describe(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {**super().describe(), "layers": self.layers, "similarity": self.similarity,
                "sets": {b: [i * self.per_set, (i + 1) * self.per_set] for i, b in enumerate(BRANCHES)}}

    def explanation(self) -> SupportTrivialExplanation:
        """The two sets with each prototype's distance to the boundary."""
        return SupportTrivialExplanation(self)


class SupportTrivialExplanation(ModelExplanation):
    """Support vs trivial prototypes: distance to the decision boundary, class and verdict per prototype."""

    kind = "st_protopnet"
    title = "Support and trivial prototypes"
    reference = REFERENCE

    def __init__(self, adapter: STPrototypes) -> None:
        self.adapter = adapter

    def finalize(self, view: ExplanationContext, state: Any) -> dict[str, Any]:
        """Per set, the prototypes sorted by distance to the boundary."""
        a = self.adapter
        classes = [c if c is not None else -1 for c in a.classes[: a.per_set]]
        distance = {b: boundary_distance(a.sets[b], classes).numpy() for b in BRANCHES}
        records = {rec["prototype"]: rec for rec in view.records}
        unit = "radians (half-angle to the nearest other-class prototype of the set)"
        sets: dict[str, Any] = {}
        for i, b in enumerate(BRANCHES):
            rows = []
            for j in np.argsort(distance[b], kind="stable"):
                pid = i * a.per_set + int(j)
                rec = records.get(pid, {})
                rows.append({"prototype": pid, "class": a.classes[pid], "class_name": view.class_name(a.classes[pid]),
                             "boundary_distance": _num(distance[b][j]),
                             "boundary_distance_degrees": _num(np.degrees(distance[b][j])),
                             "verdict": rec.get("verdict"), "analysed": pid in records})
            finite = distance[b][np.isfinite(distance[b])]
            sets[b] = {"prototypes": rows,
                       "median_distance": metric(float(np.median(finite)) if finite.size else None, n=int(finite.size),
                                                 unit=unit, higher_is_better=None)}
        s, t = (distance[b][np.isfinite(distance[b])] for b in BRANCHES)
        test = None
        if s.size and t.size:
            scores, mask = np.concatenate([s, t]), np.r_[np.ones(s.size, bool), np.zeros(t.size, bool)]
            u, auc = mann_whitney(scores, mask, alternative="less"), delong_ci(scores, mask)
            test = {"test": "one-sided Mann-Whitney U (support distances < trivial distances)",
                    "n_support": int(s.size), "n_trivial": int(t.size), "U": _num(u.u), "p": _num(u.p),
                    "effect": metric(auc.auroc, (auc.ci_low, auc.ci_high), n=int(s.size + t.size),
                                     unit="AUROC: P(a support distance > a trivial distance); 0.5 = no difference",
                                     higher_is_better=False),
                    "correction": "none (a single test)"}
        return {"sets": sets, "distance_unit": unit, "support_closer": test, "similarity": a.similarity,
                "notes": "Support prototypes are trained to lie near the decision boundary (closeness loss), trivial "
                         "ones far from it (discrimination loss). Distance to the boundary: under the "
                         "nearest-prototype rule on the unit sphere, the boundary between prototypes of two classes "
                         "is their bisector, so a prototype's distance is half the angle to the closest prototype "
                         "of another class in its own set (our reading of the paper's SVM analogy)."}


def _num(v: Any) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None


def _build(request: AdapterRequest) -> STPrototypes:
    sim = request.options.get("similarity", "auto")
    return STPrototypes(request.handle, request.input_size, None if sim == "auto" else sim)


#: The adapter kind (registered in :data:`~explainkit.prototypes.registry.BUILTIN_KINDS`).
KIND = AdapterKind(
    "st_protopnet", _build, "support and trivial prototype sets, each prototype's distance to the boundary",
    REFERENCE, detect=is_st_protopnet, priority=10)
