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

The same world is a segmentation world (:func:`label_maps`: background 0, label ``c`` = ``c + 1``),
and :func:`colour_segmenter` its per-pixel model (torchvision's ``{"out": (B, K, H, W)}``): it
classifies every pixel of the noise-free world correctly, so its IoU is 1 for every class.
:func:`write_probe_folders` writes both as probe folders (multi-hot ``labels.csv`` with
``masks/<label>/``; label maps ``labels/`` with ``classes.txt``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from explainkit.errors import ConfigError

__all__ = ["LABELS", "SEGMENTATION_CLASSES", "MultiLabelWorldSpec", "colour_detector", "colour_segmenter",
           "generate_multilabel_world", "label_maps", "write_probe_folder", "write_probe_folders"]

LABELS = ("red", "green", "blue")
_GRID = 4
#: Classes of the segmentation view of the world: the background, then :data:`LABELS`.
SEGMENTATION_CLASSES = ("background", *LABELS)


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


def label_maps(masks: dict[str, list]) -> np.ndarray:
    """(N, S, S) int64 segmentation truth of the world: 0 background, ``c + 1`` on label ``c``'s object."""
    some = next(m for ms in masks.values() for m in ms if m is not None)
    n = len(next(iter(masks.values())))
    out = np.zeros((n, *some.shape), np.int64)
    for c, name in enumerate(LABELS):
        for i, m in enumerate(masks[name]):
            if m is not None:
                out[i][m] = c + 1
    return out


class _Segmenter(nn.Module):
    """Per-pixel logits ``{"out": (B, 4, H, W)}``: background 0, label ``c``: ``10 (x_c - (x_a + x_b) / 2 - 0.3)``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.features.weight.copy_((15.0 * torch.eye(3) - 5.0)[:, :, None, None])
            self.features.bias.fill_(-3.0)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        scores = self.features(x)
        return {"out": torch.cat([torch.zeros_like(scores[:, :1]), scores], 1)}


def colour_segmenter() -> nn.Module:
    """The hand-set segmentation model of the world (see the module docstring), in eval mode."""
    return _Segmenter().eval()


def write_probe_folder(root: str | Path, spec: MultiLabelWorldSpec, task: str) -> Path:
    """Write the world as one probe folder ``root``.

    Parameters
    ----------
    root : str or Path
        The folder (created).
    spec : MultiLabelWorldSpec
        The world.
    task : {"multilabel", "segmentation"}
        ``"multilabel"``: images, a multi-hot ``labels.csv`` and ``masks/<label>/``; ``"segmentation"``:
        the images, ``labels/<image>.png`` (0 background, ``c + 1`` label ``c``) and ``classes.txt``.

    Returns
    -------
    Path
        ``root``.
    """
    if task not in ("multilabel", "segmentation"):
        raise ConfigError(f"the multi-label world is written for 'multilabel' or 'segmentation', not {task!r}")
    images, labels, masks = generate_multilabel_world(spec)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    truth = label_maps(masks)
    rows = ["path," + ",".join(LABELS)]
    for i in range(spec.n):
        name = f"img_{i:04d}.png"
        Image.fromarray(np.round(images[i].transpose(1, 2, 0) * 255).astype(np.uint8)).save(root / name)
        rows.append(name + "," + ",".join(str(int(v)) for v in labels[i]))
        if task == "segmentation":
            (root / "labels").mkdir(exist_ok=True)
            Image.fromarray(truth[i].astype(np.uint8)).save(root / "labels" / name)
            continue
        for label in LABELS:
            if masks[label][i] is not None:
                (root / "masks" / label).mkdir(parents=True, exist_ok=True)
                Image.fromarray(masks[label][i].astype(np.uint8) * 255).save(root / "masks" / label / name)
    if task == "segmentation":
        (root / "classes.txt").write_text("\n".join(SEGMENTATION_CLASSES) + "\n")
    else:
        (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def write_probe_folders(root: str | Path, spec: MultiLabelWorldSpec) -> dict[str, Path]:
    """Both probe folders of the world, ``root/multilabel`` and ``root/segmentation`` (:func:`write_probe_folder`)."""
    return {task: write_probe_folder(Path(root) / task, spec, task) for task in ("multilabel", "segmentation")}
