"""The Grad-CAM family: methods, the public :func:`cam` / :func:`cams` functions, metrics, analyzers.

Modules
-------
engine
    One model pass recording layer activations and gradients; chunked perturbed scoring.

Methods
-------
    Method registry and the one-pass gradient / activation methods.
perturbation, smooth, second_order, guided, fullgrad, captum_bridge
    Score-CAM and Ablation-CAM; Smooth Grad-CAM++; ShapleyCAM and Finer-CAM; Guided Backprop and
    Guided Grad-CAM; FullGrad; captum input-level attributions.
factorization
    Deep Feature Factorization (concept maps, not one map per image).
postprocess
    ReLU → min-max → bilinear resize → layer mean.
api
    :func:`cam`, :func:`cams`, :func:`compute`.
metrics, imputation, arcc, baseline, sanity
    Deletion/insertion, Average Drop, ROAD (noisy linear imputation), pointing game; confidence
    change, Complexity, Coherency, ARCC; random-map test; parameter-randomisation sanity check.
render, analyzer
    Report images; the ``gradcam`` and ``captum`` analyzers.
"""

from explainkit.cam import captum_bridge, fullgrad, guided, perturbation, second_order, smooth  # noqa: F401
from explainkit.cam.api import GRADIENT_METHODS, CamResult, cam, cams, compute
from explainkit.cam.factorization import Factorization, deep_feature_factorization
from explainkit.cam.methods import CamMethod, get_method, list_methods, register_method

__all__ = [
    "GRADIENT_METHODS",
    "CamMethod",
    "CamResult",
    "Factorization",
    "cam",
    "cams",
    "compute",
    "deep_feature_factorization",
    "get_method",
    "list_methods",
    "register_method",
]
