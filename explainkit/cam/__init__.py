"""The Grad-CAM family: methods, the public :func:`cam` / :func:`cams` functions, metrics, analyzers.

Modules
-------
engine
    One model pass recording layer activations and gradients; chunked perturbed scoring.

Methods
-------
    Method registry and the one-pass gradient / activation methods.
perturbation, smooth, captum_bridge
    Score-CAM and Ablation-CAM; Smooth Grad-CAM++; captum input-level attributions.
postprocess
    ReLU → min-max → bilinear resize → layer mean.
api
    :func:`cam`, :func:`cams`, :func:`compute`.
metrics, imputation, baseline, sanity
    Deletion/insertion, Average Drop, ROAD (noisy linear imputation), pointing game; random-map
    test; parameter-randomisation sanity check.
render, analyzer
    Report images; the ``gradcam`` and ``captum`` analyzers.
"""

from explainkit.cam import captum_bridge, perturbation, smooth  # noqa: F401  (register methods)
from explainkit.cam.api import GRADIENT_METHODS, CamResult, cam, cams, compute
from explainkit.cam.methods import CamMethod, get_method, list_methods, register_method

__all__ = [
    "GRADIENT_METHODS",
    "CamMethod",
    "CamResult",
    "cam",
    "cams",
    "compute",
    "get_method",
    "list_methods",
    "register_method",
]
