"""How to read a model: layers, spatial layouts and token grids, targets."""

from explainkit.adapters.layers import default_layer, resolve_layer, resolve_layers
from explainkit.adapters.targets import (
    ClassLogit,
    OutputFunction,
    PredictedClass,
    SoftmaxProbability,
    Target,
    as_target,
    check_logits,
    map_output,
    select_logits,
)
from explainkit.adapters.tokens import SpatialLayout, infer_layout, token_hints

__all__ = [
    "ClassLogit",
    "OutputFunction",
    "PredictedClass",
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
    "select_logits",
    "token_hints",
]
