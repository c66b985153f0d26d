"""How to read a model: layers, spatial layouts and token grids, targets."""

from explainkit.adapters.layers import default_layer, resolve_layer, resolve_layers
from explainkit.adapters.layout import infer_layout
from explainkit.adapters.region_targets import BoxScoreTarget, SegmentationTarget, select_dense
from explainkit.adapters.targets import (
    BinaryTarget,
    ClassLogit,
    MultiLabelTarget,
    OutputFunction,
    PerImage,
    PredictedClass,
    ReSTScore,
    SoftmaxProbability,
    Target,
    as_target,
    check_logits,
    map_output,
    select_logits,
)
from explainkit.adapters.tokens import SpatialLayout, token_hints

__all__ = [
    "BinaryTarget",
    "BoxScoreTarget",
    "ClassLogit",
    "MultiLabelTarget",
    "OutputFunction",
    "PerImage",
    "PredictedClass",
    "ReSTScore",
    "SegmentationTarget",
    "SoftmaxProbability",
    "SpatialLayout",
    "Target",
    "as_target",
    "check_logits",
    "default_layer",
    "infer_layout",
    "map_output",
    "resolve_layer",
    "resolve_layers",
    "select_dense",
    "select_logits",
    "token_hints",
]
