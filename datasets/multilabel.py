"""A multi-label image world with several planted objects per image, and a detector with known weights.

Each image is a noisy grey background holding, for every label (``red``, ``green``, ``blue``)
independently with probability ``p``, one square of that colour in its own cell of a 4 x 4 grid (so
objects never overlap); each object's mask is returned per label. Image ``i`` depends only on
``(seed, i)``.

:func:`colour_detector` is a two-layer model with hand-set weights: a 1 x 1 colour-opponent
convolution (channel ``c`` responds where colour ``c`` exceeds the other two, zero on grey), ReLU
(the feature layer), a global max pool and one logit per label (sigmoid outputs). Label ``c``'s
logit reads channel ``c`` only, so a faithful map of label ``c`` lies on the ``c`` object; a
class-agnostic map (EigenCAM) can follow one object per image at most.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from explainkit.errors import ConfigError

__all__ = ["LABELS", "MultiLabelWorldSpec", "colour_detector", "generate_multilabel_world"]

LABELS = ("red", "green", "blue")
_GRID = 4


@dataclass(frozen=True)
class MultiLabelWorldSpec:
    """Parameters of the multi-label world.

    Attributes
    ----------
    n : int
        Number of images.
    size : int
        Image side (pixels); a multiple of 4 of at least 16.
    p : float
        Probability that each label's object is present.
    noise : float
        Background noise sd (per channel and pixel).
    seed : int
        Seed.
    """

    n: int = 24
    size: int = 48
    p: float = 0.6
    noise: float = 0.05
    seed: int = 0

    def check(self) -> None:
        """Raise :class:`ConfigError` for unusable parameters."""
        if self.n < 1 or self.size < 16 or self.size % _GRID or not 0 < self.p <= 1:
            raise ConfigError(f"bad multi-label world: n={self.n}, size={self.size}, p={self.p}")


def generate_multilabel_world(spec: MultiLabelWorldSpec) -> tuple[np.ndarray, np.ndarray, dict[str, list]]:
    """All images in memory.

    Returns
    -------
    images : ndarray
        (N, 3, S, S) float32 in [0, 1].
    labels : ndarray
        (N, L) int64 multi-hot labels (order :data:`LABELS`).
    masks : dict of str to list
        Label → N (S, S) bool masks of its object, ``None`` where the label is absent.
    """
    spec.check()
    s, cell = spec.size, spec.size // _GRID
    side = max(2, round(cell * 0.75))
    images = np.empty((spec.n, 3, s, s), np.float32)
    labels = np.zeros((spec.n, len(LABELS)), np.int64)
    masks: dict[str, list] = {name: [None] * spec.n for name in LABELS}
    for i in range(spec.n):
        rng = np.random.default_rng([spec.seed, i])
        img = np.clip(0.5 + rng.normal(0.0, spec.noise, (1, s, s)), 0, 1).repeat(3, axis=0)
        present = rng.random(len(LABELS)) < spec.p
        cells = rng.choice(_GRID * _GRID, size=len(LABELS), replace=False)
        for c, (name, on, where) in enumerate(zip(LABELS, present, cells)):
            if not on:
                continue
            y0 = int(where // _GRID) * cell + int(rng.integers(0, cell - side + 1))
            x0 = int(where % _GRID) * cell + int(rng.integers(0, cell - side + 1))
            mask = np.zeros((s, s), bool)
            mask[y0:y0 + side, x0:x0 + side] = True
            img[:, mask] = 0.1
            img[c, mask] = 0.95
            labels[i, c] = 1
            masks[name][i] = mask
        images[i] = img
    return images, labels, masks


def colour_detector() -> nn.Sequential:
    """The hand-set multi-label detector (see the module docstring).

    Layers: ``0`` Conv2d(3, 3, 1): ``x_c - (x_a + x_b) / 2 - 0.3``; ``1`` ReLU (the feature layer);
    ``2`` AdaptiveMaxPool2d(1); ``3`` Flatten; ``4`` Linear(3, 3): ``10 m_c - 2`` (logit of label c).
    """
    conv = nn.Conv2d(3, 3, 1)
    head = nn.Linear(3, 3)
    with torch.no_grad():
        conv.weight.copy_((1.5 * torch.eye(3) - 0.5)[:, :, None, None])
        conv.bias.fill_(-0.3)
        head.weight.copy_(10.0 * torch.eye(3))
        head.bias.fill_(-2.0)
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(), head).eval()
