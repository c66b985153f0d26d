"""Provenance recorded in every report: versions and environment."""

from __future__ import annotations

import importlib.metadata
import platform
import sys

import torch

from explainkit._version import __version__

__all__ = ["versions"]

_PACKAGES = ("torchvision", "captum", "numpy", "scipy", "scikit-learn", "pillow", "jinja2",
             "safetensors", "opencv-python-headless", "timm")


def versions() -> dict[str, str | None]:
    """Versions of explainkit, torch, Python, the platform and key dependencies."""
    out: dict[str, str | None] = {
        "explainkit": __version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out
