"""Prototype-meaning quantification (Nauta et al. 2021) for prototype networks and ordinary models.

* :mod:`~explainkit.prototypes.perturb` — the characteristics (hue, shape, texture, contrast,
  saturation, brightness) as in-memory image perturbations (:func:`explainkit.perturb`).
* :mod:`~explainkit.prototypes.adapters` — similarity maps for ProtoPNet-like layers, channels and
  exemplar prototypes.
* :mod:`~explainkit.prototypes.importance` — local and streamed global importances.
* :mod:`~explainkit.prototypes.statistics` — tests, generalisation, redundancy, verdicts.
* :mod:`~explainkit.prototypes.analyzer` — the ``prototypes`` analyzer.
"""

from explainkit.prototypes.adapters import (
    ChannelPrototypes,
    PrototypeAdapter,
    VectorPrototypes,
    exemplar_prototypes,
    find_prototype_tensor,
    kmeans_prototypes,
    patch_box,
)
from explainkit.prototypes.importance import LocalScores, SplitAccumulator, local_importance
from explainkit.prototypes.perturb import CHARACTERISTICS, DEFAULT_CHARACTERISTICS, Perturbation, perturb

__all__ = [
    "CHARACTERISTICS",
    "DEFAULT_CHARACTERISTICS",
    "ChannelPrototypes",
    "LocalScores",
    "Perturbation",
    "PrototypeAdapter",
    "SplitAccumulator",
    "VectorPrototypes",
    "exemplar_prototypes",
    "find_prototype_tensor",
    "kmeans_prototypes",
    "local_importance",
    "patch_box",
    "perturb",
]
