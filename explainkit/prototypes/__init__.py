"""Prototype-meaning quantification (Nauta et al. 2021) for prototype networks and ordinary models.

* :mod:`~explainkit.prototypes.perturb` — the characteristics (hue, shape, texture, contrast,
  saturation, brightness) as in-memory image perturbations (:func:`explainkit.perturb`).
* :mod:`~explainkit.prototypes.adapters` — similarity maps for ProtoPNet-like layers, channels and
  exemplar prototypes.
* :mod:`~explainkit.prototypes.registry` — adapter kinds (generic ones in
  :mod:`~explainkit.prototypes.kinds`, one per prototype model in
  :mod:`~explainkit.prototypes.model_adapters`), picked by ``adapter="auto"``.
* :mod:`~explainkit.prototypes.models` — reference implementations of the seed papers' prototype
  models (case-based autoencoder, ST-ProtoPNet, Tversky, Hopfield, RBF/CBC, Prob-PSENN, and the
  segmentation model ScaleProtoSeg);
  :mod:`~explainkit.prototypes.explanation` — their own explanations in the report.
* :mod:`~explainkit.prototypes.importance` — local and streamed global importances.
* :mod:`~explainkit.prototypes.decision` — how much each perturbation changes the decision.
* :mod:`~explainkit.prototypes.calibration` — re-initialised copies, matched controls, the headline test.
* :mod:`~explainkit.prototypes.relevance` — calibrated decision relevance and prototype importances.
* :mod:`~explainkit.prototypes.statistics` — tests, generalisation, redundancy, verdicts.
* :mod:`~explainkit.prototypes.regions` — the analysis of segmentation models per class region
  (:func:`region_analysis`).
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
from explainkit.prototypes.calibration import compare_with_null, control_perturbations
from explainkit.prototypes.decision import DecisionScores, decision_scores
from explainkit.prototypes.importance import (
    LocalScores,
    SplitAccumulator,
    local_importance,
    perturbed_views,
    score_views,
)
from explainkit.prototypes.perturb import CHARACTERISTICS, DEFAULT_CHARACTERISTICS, Perturbation, perturb
from explainkit.prototypes.regions import region_analysis, region_masks, region_scores
from explainkit.prototypes.registry import AdapterKind, get_adapter_kind, list_adapter_kinds, register_adapter_kind

__all__ = [
    "CHARACTERISTICS",
    "DEFAULT_CHARACTERISTICS",
    "AdapterKind",
    "ChannelPrototypes",
    "DecisionScores",
    "LocalScores",
    "Perturbation",
    "PrototypeAdapter",
    "SplitAccumulator",
    "VectorPrototypes",
    "compare_with_null",
    "control_perturbations",
    "decision_scores",
    "exemplar_prototypes",
    "find_prototype_tensor",
    "get_adapter_kind",
    "kmeans_prototypes",
    "list_adapter_kinds",
    "local_importance",
    "patch_box",
    "perturb",
    "perturbed_views",
    "region_analysis",
    "region_masks",
    "region_scores",
    "register_adapter_kind",
    "score_views",
]
