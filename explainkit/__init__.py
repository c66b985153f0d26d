"""explainkit: post-hoc explanations with statistics for trained PyTorch vision models.

Quick start
-----------
>>> import explainkit
>>> handle = explainkit.load_model("model.safetensors", arch="torchvision:resnet18")  # doctest: +SKIP
>>> report = explainkit.analyze(handle, "probe/", analyzers=["performance"], out="out/")  # doctest: +SKIP
"""

import logging

from explainkit._version import __version__
from explainkit.adapters import (
    BinaryTarget,
    BoxScoreTarget,
    ClassLogit,
    MultiLabelTarget,
    ReSTScore,
    SegmentationTarget,
    SoftmaxProbability,
    Target,
)
from explainkit.analyzers import (
    Analyzer,
    get_analyzer,
    list_analyzers,
    register_analyzer,
)
from explainkit.cam import cam, cams
from explainkit.data.probe import ProbeSet
from explainkit.errors import (
    CapabilityError,
    ConfigError,
    DataError,
    ExitCode,
    ExplainkitError,
    ModelRefusedError,
    RuntimeAnalysisError,
)
from explainkit.gate import check
from explainkit.invert import label_neurons
from explainkit.loading import ModelHandle, Preprocessing, load_model, wrap
from explainkit.loading.save import save_model
from explainkit.prototypes.perturb import perturb
from explainkit.report import Report
from explainkit.run import analyze, discover

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "Analyzer",
    "BinaryTarget",
    "BoxScoreTarget",
    "CapabilityError",
    "ClassLogit",
    "ConfigError",
    "DataError",
    "ExitCode",
    "ExplainkitError",
    "ModelHandle",
    "ModelRefusedError",
    "MultiLabelTarget",
    "Preprocessing",
    "ProbeSet",
    "ReSTScore",
    "Report",
    "RuntimeAnalysisError",
    "SegmentationTarget",
    "SoftmaxProbability",
    "Target",
    "__version__",
    "analyze",
    "cam",
    "cams",
    "check",
    "discover",
    "get_analyzer",
    "label_neurons",
    "list_analyzers",
    "load_model",
    "perturb",
    "register_analyzer",
    "save_model",
    "wrap",
]
