"""A synthetic volume world with planted lesion-like signals, and a lesion detector with known weights.

Every volume is noise plus a bright **slab** (a smooth Gaussian profile over the first slices along
depth, like a skull rim or a bright scanner edge) that carries no class information; volumes of class ``lesion``
also hold one small Gaussian **lesion** at a random position away from the slab, and its mask
(voxels within ``1.5 sigma`` of the centre) is written to ``masks/lesion/<id>.npy``. Volume ``i``
depends only on ``(seed, i)``.

:func:`lesion_detector` is a Conv3d model whose weights are set by hand, so what it looks at is
known: channel 0 of its feature layer is a zero-mean matched filter of the lesion (blind to the slab's
interior), channel 1 a plain local mean (dominated by the slab); only channel 0 reaches the
``lesion`` logit. A faithful class-specific map must point at the lesion; a class-agnostic one
(EigenCAM's first principal component of the features) follows the slab's variance instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from explainkit._io import atomic_write_bytes, atomic_write_text
from explainkit.errors import ConfigError

__all__ = ["VolumeWorldSpec", "generate_volume_world", "lesion_detector", "write_volume_world"]

CLASSES = ("healthy", "lesion")


@dataclass(frozen=True)
class VolumeWorldSpec:
    """Parameters of the volume world.

    Attributes
    ----------
    n : int
        Number of volumes (classes alternate: even ``i`` healthy, odd ``i`` lesion).
    size : int
        Side of the cubic (D, H, W) volumes.
    sigma : float
        Lesion width (voxels).
    lesion_gain : float
        Lesion peak intensity above the background.
    slab : int
        Width (sd, in slices) of the bright slab's Gaussian profile along depth, brightest at slice 0.
    slab_gain : float
        Slab intensity.
    noise : float
        Background noise sd.
    seed : int
        Seed.
    """

    n: int = 16
    size: int = 16
    sigma: float = 1.5
    lesion_gain: float = 2.0
    slab: int = 3
    slab_gain: float = 4.0
    noise: float = 0.2
    seed: int = 0

    def check(self) -> None:
        """Raise :class:`ConfigError` for sizes that leave no room for a lesion."""
        margin = int(np.ceil(2 * self.sigma))
        if self.n < 1 or self.size < self.slab + 2 * margin + 2 or self.sigma <= 0:
            raise ConfigError(f"volume world too small: size {self.size}, slab {self.slab}, sigma {self.sigma}")


def _volume(spec: VolumeWorldSpec, i: int) -> tuple[np.ndarray, int, np.ndarray | None]:
    """Volume ``i``: (1, D, H, W) float32, class index, (D, H, W) bool lesion mask or ``None``."""
    rng = np.random.default_rng([spec.seed, i])
    s = spec.size
    vol = rng.normal(0.0, spec.noise, (s, s, s))
    vol += spec.slab_gain * np.exp(-np.arange(s) ** 2 / (2 * spec.slab**2))[:, None, None]
    label = i % 2
    mask = None
    if label:
        margin = int(np.ceil(2 * spec.sigma))
        centre = np.array([rng.integers(spec.slab + margin, s - margin), rng.integers(margin, s - margin),
                           rng.integers(margin, s - margin)], np.float64)
        grid = np.stack(np.meshgrid(*[np.arange(s)] * 3, indexing="ij"), axis=-1)
        d2 = ((grid - centre) ** 2).sum(axis=-1)
        vol += spec.lesion_gain * np.exp(-d2 / (2 * spec.sigma**2))
        mask = d2 <= (1.5 * spec.sigma) ** 2
    return vol[None].astype(np.float32), label, mask


def generate_volume_world(spec: VolumeWorldSpec) -> tuple[np.ndarray, np.ndarray, list[np.ndarray | None]]:
    """All volumes in memory.

    Returns
    -------
    volumes : ndarray
        (N, 1, D, H, W) float32.
    labels : ndarray
        (N,) int64 (0 healthy, 1 lesion).
    masks : list
        N (D, H, W) bool lesion masks, ``None`` for healthy volumes.
    """
    spec.check()
    parts = [_volume(spec, i) for i in range(spec.n)]
    return (np.stack([p[0] for p in parts]), np.asarray([p[1] for p in parts], np.int64), [p[2] for p in parts])


def _npy_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def write_volume_world(spec: VolumeWorldSpec, root: str | Path) -> Path:
    """Write the world as a volume folder (:class:`explainkit.data.volumes.VolumeSet`).

    Files: ``vol_<i>.npy``, ``labels.csv``, ``classes.txt`` and ``masks/lesion/vol_<i>.npy``.
    """
    root = Path(root)
    volumes, labels, masks = generate_volume_world(spec)
    rows = ["path,label"]
    for i, (vol, label, mask) in enumerate(zip(volumes, labels, masks)):
        name = f"vol_{i:04d}.npy"
        atomic_write_bytes(root / name, _npy_bytes(vol))
        rows.append(f"{name},{CLASSES[int(label)]}")
        if mask is not None:
            atomic_write_bytes(root / "masks" / "lesion" / name, _npy_bytes(mask.astype(np.uint8)))
    atomic_write_text(root / "labels.csv", "\n".join(rows) + "\n")
    atomic_write_text(root / "classes.txt", "\n".join(CLASSES) + "\n")
    return root


def lesion_detector(spec: VolumeWorldSpec | None = None) -> nn.Sequential:
    """A Conv3d lesion detector with hand-set weights (see the module docstring).

    Layers: ``0`` Conv3d(1, 2, 5, replicate padding 2), ``1`` ReLU (the feature layer to explain),
    ``2`` AdaptiveMaxPool3d(1), ``3`` Flatten, ``4`` Linear(2, 2) (logits healthy, lesion).
    """
    spec = spec or VolumeWorldSpec()
    k = 5
    r = np.arange(k) - k // 2
    d2 = (r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2).astype(np.float64)
    blob = np.exp(-d2 / (2 * spec.sigma**2))
    matched = (blob - blob.mean()) / np.abs(blob - blob.mean()).sum()
    conv = nn.Conv3d(1, 2, k, padding=k // 2, padding_mode="replicate")
    head = nn.Linear(2, 2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0] = torch.from_numpy(matched).float()
        conv.weight[1, 0] = 1.0 / k**3
        conv.bias.zero_()
        head.weight.copy_(torch.tensor([[-20.0, 0.0], [20.0, 0.0]]))
        head.bias.copy_(torch.tensor([7.0, -7.0]))  # lesion when the peak response exceeds 0.35
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveMaxPool3d(1), nn.Flatten(), head).eval()
