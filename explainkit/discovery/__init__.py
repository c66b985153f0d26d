"""Discovery of candidate spurious cues nobody named: slices, held-out tests, names and policies.

The library works on arrays (embeddings, probabilities, labels, concept tables) and can be used
without the runner; :mod:`explainkit.discovery.analyzer` is the ``discovery`` analyzer.
"""

from explainkit.discovery.attribution import outside_attribution
from explainkit.discovery.candidates import Candidate, confirm, rank, screen
from explainkit.discovery.properties import PROPERTIES, describe_contrast, image_properties
from explainkit.discovery.slices import (
    Slice,
    attribution_slices,
    cluster_slices,
    coincides_with_label,
    concept_slices,
    unit_slices,
)

__all__ = [
    "PROPERTIES",
    "Candidate",
    "Slice",
    "attribution_slices",
    "cluster_slices",
    "coincides_with_label",
    "concept_slices",
    "confirm",
    "describe_contrast",
    "image_properties",
    "outside_attribution",
    "rank",
    "screen",
    "unit_slices",
]
