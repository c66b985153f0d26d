"""A prototype model's own explanation, computed alongside the prototype-meaning analysis.

Prototype models explain themselves in their own terms: decoded prototypes and class weights,
support and trivial sets, feature sets, retrieval weights, reasoning over components, prototype
distributions. Their adapters (:mod:`explainkit.prototypes.model_adapters`) return a
:class:`ModelExplanation` that the ``prototypes`` analyzer streams like itself (``init_state`` →
``map`` per batch → associative ``merge`` → ``finalize``) and writes to the section's
``data.model_explanation`` (schema ``$defs/prototype_model_explanation``; HTML
``sections/prototype_models.html.j2``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from explainkit.analyzers.base import Batch, RunContext
from explainkit.prototypes.importance import LocalScores
from explainkit.prototypes.perturb import Perturbation
from explainkit.report.images import thumbnail, to_data_uri

__all__ = ["ExplanationBatch", "ExplanationContext", "ModelExplanation", "TopImages", "image_asset"]

#: Longest side of the thumbnails the model explanations add.
THUMB_SIDE = 64


@dataclass
class ExplanationBatch:
    """What a model explanation sees of one batch.

    Attributes
    ----------
    ctx : RunContext
        The run (handle, device, rng).
    batch : Batch
        The batch (indices, PIL images, model inputs, logits, labels).
    inputs : torch.Tensor
        (B·(1 + C), 3, H, W) originals then perturbed copies
        (:func:`~explainkit.prototypes.importance.perturbed_inputs`).
    scores : LocalScores
        The analysed prototypes' local scores of the batch.
    prototype_ids : list of int
        The analysed prototypes.
    perturbations : sequence of Perturbation
        The characteristics.
    readout : str
        ``fixed`` or ``max``.
    weight_rule : str
        Resolved weight rule of the global mean.
    """

    ctx: RunContext
    batch: Batch
    inputs: torch.Tensor
    scores: LocalScores
    prototype_ids: list[int]
    perturbations: Sequence[Perturbation]
    readout: str
    weight_rule: str


@dataclass
class ExplanationContext:
    """What a model explanation sees when it finalizes.

    Attributes
    ----------
    ctx : RunContext
        The run.
    records : list of dict
        Per analysed prototype, the section's record (``prototype``, ``class``, ``verdict``,
        ``global_train`` / ``global_test``, ...).
    prototype_ids : list of int
        The analysed prototypes.
    characteristics : list of str
        Characteristic names.
    unit : str
        Similarity unit of the adapter.
    assets : dict of str to str
        The section's assets; explanations add their images here (keys prefixed ``model_``).
    """

    ctx: RunContext
    records: list[dict[str, Any]]
    prototype_ids: list[int]
    characteristics: list[str]
    unit: str
    assets: dict[str, str]

    def class_name(self, cls: int | None) -> str | None:
        """The model's name of class ``cls`` (``None`` when unknown)."""
        names = self.ctx.class_names
        return names[cls] if cls is not None and 0 <= cls < len(names) else None


class ModelExplanation:
    """Base class: a streamed, mergeable explanation part (static explanations override only ``finalize``).

    Attributes
    ----------
    kind : str
        The adapter kind (selects the HTML block).
    title : str
        Heading of the part.
    reference : str
        The paper it follows.
    """

    kind: ClassVar[str] = ""
    title: ClassVar[str] = ""
    reference: ClassVar[str] = ""

    def init_state(self) -> Any:
        """Empty state."""
        return None

    def map(self, view: ExplanationBatch) -> Any:
        """State of one batch."""
        return None

    def merge(self, a: Any, b: Any) -> Any:
        """Merge two states (associative and commutative)."""
        return None

    def finalize(self, view: ExplanationContext, state: Any) -> dict[str, Any]:
        """The JSON part (``kind``, ``title`` and ``reference`` are added by :meth:`section`)."""
        raise NotImplementedError

    def section(self, view: ExplanationContext, state: Any) -> dict[str, Any]:
        """:meth:`finalize` with the common fields."""
        return {"kind": self.kind, "title": self.title, "reference": self.reference, **self.finalize(view, state)}


@dataclass
class TopImages:
    """The ``k`` images with the largest score (ties: the lower index), mergeable.

    Attributes
    ----------
    k : int
        Capacity.
    score : ndarray
        (n,) scores.
    index : ndarray
        (n,) probe-set indices.
    extra : ndarray
        (n, E) values kept with each image.
    """

    k: int
    score: np.ndarray
    index: np.ndarray
    extra: np.ndarray

    @classmethod
    def empty(cls, k: int, width: int) -> TopImages:
        """No image yet; ``width`` values are kept per image."""
        return cls(k, np.zeros(0), np.zeros(0, np.int64), np.zeros((0, width)))

    def add(self, score: np.ndarray, index: np.ndarray, extra: np.ndarray) -> TopImages:
        """A new state with more images."""
        return self.merge(TopImages(self.k, np.asarray(score, np.float64), np.asarray(index, np.int64),
                                    np.asarray(extra, np.float64).reshape(len(index), -1)))

    def merge(self, other: TopImages) -> TopImages:
        """Keep the top ``k`` of both."""
        score = np.concatenate([self.score, other.score])
        index = np.concatenate([self.index, other.index])
        keep = np.lexsort((index, -score))[: self.k]
        return TopImages(self.k, score[keep], index[keep], np.concatenate([self.extra, other.extra])[keep])


def image_asset(assets: dict[str, str], key: str, image: Image.Image, side: int = THUMB_SIDE) -> str:
    """Store a thumbnail of ``image`` under ``key`` in ``assets``; returns ``key``."""
    assets[key] = to_data_uri(thumbnail(image, side))
    return key
