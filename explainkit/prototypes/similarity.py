"""Distances and similarities between latent maps and prototype vectors (higher = more similar).

All functions take a latent map ``z`` of shape (B, D, h, w) and prototypes of shape (P, D, k, k)
(``k = 1`` for ProtoPNet-style 1×1 prototypes) and return (B, P, h - k + 1, w - k + 1) maps.

==============  ==================================================  ==============================  =========
name            formula (d = squared L2 distance)                   used by                         range
==============  ==================================================  ==============================  =========
``log``         ``log((d + 1) / (d + 1e-4))``                        ProtoPNet (``'log'``)           (0, 9.21]
``linear``      ``-d``                                              ProtoPNet (``'linear'``)        (-inf, 0]
``exp``         ``exp(-sqrt(d))`` (non-squared L2)                  ProtoTree                       (0, 1]
``cosine``      ``<z, p> / (|z| |p|)``                              ST-ProtoPNet, Deformable        [-1, 1]
``projection``  ``<z, p> / |p|``                                    TesNet, ST-ProtoPNet            real
==============  ==================================================  ==============================  =========
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from explainkit.errors import ConfigError

__all__ = ["NONNEGATIVE", "SIMILARITIES", "log_similarity", "similarity", "squared_l2_distances"]

#: Similarity names :func:`similarity` knows.
SIMILARITIES = ("log", "linear", "exp", "cosine", "projection")
#: Similarities that are never negative (the reference's similarity weighting applies as is).
NONNEGATIVE = frozenset({"log", "exp"})
_LOG_EPS = 1e-4


def _patch_sq_norms(z: torch.Tensor, k: int) -> torch.Tensor:
    """(B, 1, h', w') squared L2 norm of every k×k patch of ``z``."""
    ones = torch.ones(1, z.shape[1], k, k, dtype=z.dtype, device=z.device)
    return F.conv2d(z * z, ones)


def squared_l2_distances(z: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance of every k×k latent patch to every prototype (ProtoPNet's conv trick).

    Parameters
    ----------
    z : torch.Tensor
        (B, D, h, w) latent map.
    prototypes : torch.Tensor
        (P, D, k, k) prototype vectors.

    Returns
    -------
    torch.Tensor
        (B, P, h - k + 1, w - k + 1) distances ``|z|² - 2 z·p + |p|²``, clipped at 0 (round-off).
    """
    k = prototypes.shape[-1]
    p2 = (prototypes * prototypes).sum(dim=(1, 2, 3)).view(1, -1, 1, 1)
    zp = F.conv2d(z, prototypes)
    return F.relu(_patch_sq_norms(z, k) - 2 * zp + p2)


def log_similarity(d: torch.Tensor) -> torch.Tensor:
    """ProtoPNet's similarity of squared distances ``d`` (any shape): ``log((d + 1) / (d + 1e-4))``."""
    return torch.log((d + 1) / (d + _LOG_EPS))


def similarity(z: torch.Tensor, prototypes: torch.Tensor, kind: str = "log") -> torch.Tensor:
    """Similarity maps of the latent map to each prototype.

    Parameters
    ----------
    z : torch.Tensor
        (B, D, h, w) latent map.
    prototypes : torch.Tensor
        (P, D, k, k) prototype vectors.
    kind : str
        One of :data:`SIMILARITIES` (see the module docstring).

    Returns
    -------
    torch.Tensor
        (B, P, h - k + 1, w - k + 1) similarities, higher = more similar.
    """
    if prototypes.dim() != 4 or prototypes.shape[1] != z.shape[1]:
        raise ConfigError(
            f"prototypes of shape {tuple(prototypes.shape)} do not match a latent map with {z.shape[1]} channels"
        )
    if kind in ("log", "linear", "exp"):
        d = squared_l2_distances(z, prototypes)
        if kind == "log":
            return log_similarity(d)
        if kind == "linear":
            return -d
        return torch.exp(-torch.sqrt(d.clamp_min(1e-14)))
    norms = prototypes.flatten(1).norm(dim=1).clamp_min(1e-12).view(1, -1, 1, 1)
    dot = F.conv2d(z, prototypes) / norms
    if kind == "projection":
        return dot
    if kind == "cosine":
        return dot / _patch_sq_norms(z, prototypes.shape[-1]).sqrt().clamp_min(1e-12)
    raise ConfigError(f"unknown similarity {kind!r}; choose from {', '.join(SIMILARITIES)}")
