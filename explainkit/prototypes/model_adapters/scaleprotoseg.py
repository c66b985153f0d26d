"""Adapter of ScaleProtoSeg (Porta et al., WACV 2025): dense prototype maps of a segmentation model, by scale.

The latent map is the scale branches' concatenated output (``scale_head``; the reference's
``add_on_layers``), and prototype ``p`` of scale ``s`` is compared with the D channels of scale
``s`` at every pixel (:func:`~explainkit.prototypes.models.scaleprotoseg.scale_distances`, log
similarity), so the similarity maps are dense (one value per latent pixel). Every prototype belongs
to a class and a *scale group* (the prototypes of one scale branch). The scale of each prototype is
read from a ``prototype_scale`` buffer, or from the reference's ``scale_num_prototypes`` ranges.

For segmentation the prototypes analysis runs per class region
(:func:`explainkit.prototypes.regions.region_analysis`): each prototype is read on the pixels of its
class in the ground-truth label map. The model's own explanation (:class:`ScaleGroupExplanation`)
decomposes the predicted class's logit at every pixel into prototype shares through the sparse
groups (:func:`~explainkit.prototypes.models.scaleprotoseg.prototype_relevance`) and reports, per
predicted class, how much each scale group and each prototype drives it, next to the scale groups
with their prototypes, classes and Nauta verdicts, and the learned groups' sparse weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from explainkit.analyzers.metric import metric
from explainkit.errors import ConfigError
from explainkit.loading.handle import ModelHandle
from explainkit.prototypes.adapters import PrototypeAdapter
from explainkit.prototypes.explanation import ExplanationBatch, ExplanationContext, ModelExplanation
from explainkit.prototypes.model_adapters._common import has_tensors, identity_classes
from explainkit.prototypes.models.scaleprotoseg import prototype_relevance, scale_distances
from explainkit.prototypes.registry import AdapterKind, AdapterRequest
from explainkit.prototypes.similarity import log_similarity

__all__ = ["KIND", "RelevanceSums", "ScaleGroupExplanation", "ScaleProtoSegPrototypes", "is_scaleprotoseg"]

REFERENCE = ("Porta, Dalsasso, Marcos and Tuia (2025), Multi-Scale Grouped Prototypes for Interpretable Semantic "
             "Segmentation, WACV")
#: Latent layer names, ours first, then the reference's.
LATENT_LAYERS = ("scale_head", "add_on_layers")
#: Prototypes listed per predicted class in the own explanation.
TOP_PROTOTYPES = 5


def is_scaleprotoseg(module: nn.Module) -> bool:
    """Prototypes, per-class group projections, a grouped last layer and a latent layer, by the reference's names."""
    return (has_tensors(module, "prototype_vectors", "prototype_class_identity", dims=(2, 4))
            and isinstance(getattr(module, "group_projection", None), nn.ModuleList)
            and isinstance(getattr(module, "last_layer_group", None), nn.Linear)
            and any(isinstance(getattr(module, n, None), nn.Module) for n in LATENT_LAYERS)
            and (has_tensors(module, "prototype_scale") or isinstance(getattr(module, "scale_num_prototypes", None),
                                                                      dict)))


def _scales(root: nn.Module) -> torch.Tensor:
    if has_tensors(root, "prototype_scale"):
        return root.prototype_scale.detach().long().cpu()
    ranges = root.scale_num_prototypes
    scale = torch.full((int(root.prototype_vectors.shape[0]),), -1, dtype=torch.long)
    for s, (lo, hi) in ranges.items():
        scale[int(lo) : int(hi)] = int(s)
    if (scale < 0).any():
        raise ConfigError("scale_num_prototypes does not assign every prototype a scale")
    return scale


class ScaleProtoSegPrototypes(PrototypeAdapter):
    """The prototypes of a ScaleProtoSeg model, with their classes and scale groups.

    Parameters
    ----------
    model : ModelHandle or torch.nn.Module
        A model :func:`is_scaleprotoseg` accepts.
    input_size : tuple of int
        (H, W) model input size.
    layer : str, optional
        The latent layer (default ``scale_head``, else the reference's ``add_on_layers``).
    """

    kind = "scaleprotoseg"
    nonnegative = True
    default_weight = "similarity"
    unit = "log similarity"

    def __init__(self, model: ModelHandle | nn.Module, input_size: tuple[int, int], layer: str | None = None) -> None:
        root = model.module if isinstance(model, ModelHandle) else model
        if not is_scaleprotoseg(root):
            raise ConfigError(f"{type(root).__name__} is not a ScaleProtoSeg model (prototype_vectors, "
                              "prototype_class_identity, group_projection, last_layer_group, a scale_head or "
                              "add_on_layers, and prototype_scale or scale_num_prototypes)")
        # the scale maps are convolution outputs: channels first
        super().__init__(layer or next(n for n in LATENT_LAYERS if isinstance(getattr(root, n, None), nn.Module)),
                         layout="nchw")
        self.prototypes = root.prototype_vectors.detach().float().cpu().reshape(root.prototype_vectors.shape[0], -1)
        self.scale_of = _scales(root)
        self.num_scales = int(self.scale_of.max()) + 1
        self.num_prototypes = int(self.prototypes.shape[0])
        self.classes: list[int] = identity_classes(root, root) or []
        self.dilations = [int(d) for d in getattr(getattr(root, "scale_head", None), "dilations", ())]
        self.num_classes = int(root.prototype_class_identity.shape[1])
        self.members = [torch.nonzero(root.prototype_class_identity[:, c].cpu()).flatten()
                        for c in range(self.num_classes)]
        self.members = [m for m in self.members if m.numel()]  # the reference skips classes without prototypes
        self.projections = [proj.weight.detach().float().cpu() for proj in root.group_projection]
        self.last_weight = root.last_layer_group.weight.detach().float().cpu()
        if len(self.projections) != len(self.members) or any(
                w.shape[1] != m.numel() for w, m in zip(self.projections, self.members)):
            raise ConfigError("group_projection does not match the prototypes of each class")
        self.bind(model, input_size)

    def _check_latent(self, z: torch.Tensor) -> None:
        depth = int(self.prototypes.shape[1])
        if z.shape[1] != self.num_scales * depth:
            raise ConfigError(f"layer {self.layer!r} gives {z.shape[1]} channels; {self.num_scales} scales of "
                              f"{depth}-dimensional prototypes need {self.num_scales * depth}")

    def similarity_from_latent(self, z: torch.Tensor, prototypes: torch.Tensor | None = None) -> torch.Tensor:
        """See :meth:`PrototypeAdapter.similarity_from_latent` (log similarity at each prototype's scale)."""
        idx = torch.arange(self.num_prototypes) if prototypes is None else prototypes.cpu()
        d = scale_distances(z, self.prototypes[idx].to(z), self.scale_of[idx], self.num_scales)
        return log_similarity(d)

    def prototype_class(self, p: int) -> int | None:
        """See :meth:`PrototypeAdapter.prototype_class`."""
        return self.classes[p] if self.classes else None

    def scale(self, p: int) -> int:
        """The scale group of prototype ``p``."""
        return int(self.scale_of[p])

    def dilation(self, s: int) -> int | None:
        """The atrous rate of scale ``s`` when the model declares it."""
        return self.dilations[s] if s < len(self.dilations) else None

    def relevance(self, similarities: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P, h, w) similarities of all prototypes → predicted class and prototype shares of its logit.

        See :func:`~explainkit.prototypes.models.scaleprotoseg.prototype_relevance`.
        """
        return prototype_relevance(similarities, [w.to(similarities) for w in self.projections], self.members,
                                   self.last_weight.to(similarities))

    def vectors(self) -> torch.Tensor:
        """(P, D) prototype vectors."""
        return self.prototypes

    def describe(self) -> dict[str, Any]:
        """JSON-ready description, with the scale groups."""
        groups = [{"scale": s, "dilation": self.dilation(s),
                   "prototypes": torch.nonzero(self.scale_of == s).flatten().tolist()} for s in range(self.num_scales)]
        return {**super().describe(), "similarity": "log", "scales": groups, "groups_per_class": [
            int(w.shape[0]) for w in self.projections]}

    def explanation(self) -> ScaleGroupExplanation:
        """Scale groups, sparse groups and per-pixel relevance of the predicted class."""
        return ScaleGroupExplanation(self)


@dataclass
class RelevanceSums:
    """Per predicted class, pixel counts and summed relevances (mergeable by addition).

    Attributes
    ----------
    pixels : ndarray
        (K,) latent pixels predicted as each class.
    logit : ndarray
        (K,) summed predicted logit.
    prototype : ndarray
        (K, P) summed prototype relevance.
    driving : ndarray
        (K, S) pixels on which each scale group has the largest summed relevance.
    """

    pixels: np.ndarray
    logit: np.ndarray
    prototype: np.ndarray
    driving: np.ndarray

    @classmethod
    def empty(cls, k: int, p: int, s: int) -> RelevanceSums:
        """No pixel yet."""
        return cls(np.zeros(k), np.zeros(k), np.zeros((k, p)), np.zeros((k, s)))

    def __add__(self, other: RelevanceSums) -> RelevanceSums:
        return RelevanceSums(self.pixels + other.pixels, self.logit + other.logit, self.prototype + other.prototype,
                             self.driving + other.driving)


class ScaleGroupExplanation(ModelExplanation):
    """Scale groups with their prototypes and classes; which prototypes and scales drive each predicted class."""

    kind = "scaleprotoseg"
    title = "Multi-scale grouped prototypes"
    reference = REFERENCE

    def __init__(self, adapter: ScaleProtoSegPrototypes) -> None:
        self.adapter = adapter

    def init_state(self) -> RelevanceSums:
        """No pixel yet."""
        a = self.adapter
        return RelevanceSums.empty(a.num_classes, a.num_prototypes, a.num_scales)

    def measure(self, model: ModelHandle | nn.Module, x: torch.Tensor) -> RelevanceSums:
        """Relevance sums of (B, 3, H, W) preprocessed images."""
        a = self.adapter
        with torch.no_grad():
            predicted, rel = a.relevance(a.similarity_maps(model, x))
        k, s = a.num_classes, a.num_scales
        onehot = torch.nn.functional.one_hot(predicted.flatten(), k).float()  # (N, K)
        per_pixel = rel.permute(0, 2, 3, 1).reshape(-1, a.num_prototypes).cpu()  # (N, P)
        by_scale = per_pixel @ torch.nn.functional.one_hot(a.scale_of, s).float()  # (N, S)
        driving = torch.nn.functional.one_hot(by_scale.argmax(dim=1), s).float()
        return RelevanceSums(onehot.sum(0).numpy().astype(np.float64),
                             (onehot * per_pixel.sum(1, keepdim=True)).sum(0).numpy().astype(np.float64),
                             (onehot.t() @ per_pixel).numpy().astype(np.float64),
                             (onehot.t() @ driving).numpy().astype(np.float64))

    def pixel_maps(self, model: ModelHandle | nn.Module, x: torch.Tensor) -> list[dict[str, Any]]:
        """Per image, at every latent pixel: the predicted class, the prototype and the scale group driving it.

        Returns
        -------
        list of dict
            Per image ``predicted``, ``top_prototype`` (largest share of the predicted logit) and
            ``driving_scale`` (scale group with the largest summed share), each an (h, w) nested list.
        """
        a = self.adapter
        with torch.no_grad():
            predicted, rel = a.relevance(a.similarity_maps(model, x))
        onehot = torch.nn.functional.one_hot(a.scale_of, a.num_scales).float().to(rel)  # (P, S)
        by_scale = torch.einsum("bphw,ps->bshw", rel, onehot)
        return [{"predicted": predicted[i].tolist(), "top_prototype": rel[i].argmax(0).tolist(),
                 "driving_scale": by_scale[i].argmax(0).tolist()} for i in range(len(x))]

    def map(self, view: ExplanationBatch) -> RelevanceSums:
        """Relevance sums of the batch's original images."""
        return self.measure(view.ctx.handle, view.inputs[: len(view.batch)].to(view.ctx.device))

    def merge(self, a: RelevanceSums, b: RelevanceSums) -> RelevanceSums:
        """Sum."""
        return a + b

    def finalize(self, view: ExplanationContext, state: RelevanceSums) -> dict[str, Any]:
        """Scale groups, sparse groups and per predicted class the drivers."""
        return self.report(state, view.records, view.ctx.class_names)

    def report(self, state: RelevanceSums, records: Sequence[dict[str, Any]], class_names: Sequence[str],
               examples: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        """The JSON part from relevance sums and the analysed prototypes' records (``prototype``, ``verdict``).

        ``examples`` are per-pixel maps of a few images (:meth:`pixel_maps`, each with its ``image``).
        """
        a = self.adapter
        verdicts = {r["prototype"]: r.get("verdict") for r in records}

        def name(c: int | None) -> str | None:
            return class_names[c] if c is not None and 0 <= c < len(class_names) else None

        def proto(p: int) -> dict[str, Any]:
            c = a.prototype_class(p)
            return {"prototype": p, "class": c, "class_name": name(c), "scale": a.scale(p),
                    "verdict": verdicts.get(p), "analysed": p in verdicts}

        scales = [{"scale": s, "dilation": a.dilation(s),
                   "prototypes": [proto(int(p)) for p in torch.nonzero(a.scale_of == s).flatten()]}
                  for s in range(a.num_scales)]
        groups = []
        j = 0
        for w, m in zip(a.projections, a.members):
            c = a.prototype_class(int(m[0]))
            for g in range(w.shape[0]):
                row = w[g]
                groups.append({"group": j, "class": c, "class_name": name(c),
                               "last_layer_weight": float(a.last_weight[c, j]) if c is not None else None,
                               "members": [{"prototype": int(m[i]), "scale": a.scale(int(m[i])),
                                            "weight": float(row[i])} for i in torch.argsort(-row) if row[i] > 0],
                               "sparsity": float((row <= 0).float().mean())})
                j += 1
        unit_rel = "logit units per latent pixel (the prototype's share of the predicted class's logit)"
        per_class = []
        for c in range(len(state.pixels)):
            n = int(state.pixels[c])
            if n == 0:
                continue
            by_scale = [float(state.prototype[c, (a.scale_of == s).numpy()].sum()) for s in range(a.num_scales)]
            total = float(state.logit[c])
            top = np.argsort(-state.prototype[c], kind="stable")[:TOP_PROTOTYPES]
            per_class.append({
                "class": c, "class_name": name(c), "pixels": n,
                "mean_logit": metric(total / n, n=n, unit="logit per latent pixel", higher_is_better=None),
                "scales": [{"scale": s, "dilation": a.dilation(s),
                            "share": metric(by_scale[s] / total if total else None, n=n,
                                            unit="fraction of the summed predicted logit", higher_is_better=None),
                            "driving_pixels": metric(float(state.driving[c, s]) / n, n=n,
                                                     unit="fraction of the class's predicted pixels on which this "
                                                          "scale group has the largest relevance",
                                                     higher_is_better=None)}
                           for s in range(a.num_scales)],
                "top_prototypes": [{**proto(int(p)), "mean_relevance": metric(float(state.prototype[c, p]) / n, n=n,
                                                                              unit=unit_rel, higher_is_better=None)}
                                   for p in top],
            })
        return {"scale_groups": scales, "groups": groups, "per_class": per_class, "relevance_unit": unit_rel,
                "examples": list(examples),
                "notes": "Prototypes are grouped by scale (one group per atrous branch of the multi-scale head); "
                         "each class's sparse groups mix its prototypes across scales with simplex weights, and a "
                         "pixel's logit for class c is the sum over groups of last-layer weight × exp(group "
                         "exponent). A prototype's relevance splits each group's term in proportion to weight × "
                         "similarity (our reading; it sums exactly to the logit). Verdicts come from the "
                         "per-class-region analysis: each prototype read on its class's ground-truth region."}


def _build(request: AdapterRequest) -> ScaleProtoSegPrototypes:
    return ScaleProtoSegPrototypes(request.handle, request.input_size, request.layer)


#: The adapter kind (registered in :data:`~explainkit.prototypes.registry.BUILTIN_KINDS`).
KIND = AdapterKind(
    "scaleprotoseg", _build, "dense prototype maps of a segmentation model, by scale group and class region",
    REFERENCE, detect=is_scaleprotoseg, priority=10)
