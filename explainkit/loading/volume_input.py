"""How volumes become model inputs: stacked as stored, (B, C, D, H, W), never resized or normalised.

A volume model (Conv3d layers over (B, C, D, H, W)) is fed the voxel grid of its probe volumes
exactly as :mod:`explainkit.data.volumes` reads it: resizing would move a lesion between voxels, and
intensity normalisation belongs to the study's own pipeline (store the volumes normalised as the
model was trained). :class:`VolumeInput` takes the place of the image
:class:`~explainkit.loading.preprocessing.Preprocessing` on the model handle of a volume run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from explainkit.errors import DataError

__all__ = ["VolumeInput"]


@dataclass(frozen=True)
class VolumeInput:
    """The input geometry of a volume run.

    Attributes
    ----------
    input_size : tuple of int
        ``(D, H, W)`` of every volume of the run.
    channels : int
        ``C`` of every volume.
    sources : mapping
        Where the geometry came from (the probe volumes).
    """

    input_size: tuple[int, int, int]
    channels: int
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __call__(self, volumes: Sequence[np.ndarray]) -> torch.Tensor:
        """Stack B (C, D, H, W) volumes into a (B, C, D, H, W) float32 tensor.

        Raises
        ------
        DataError
            A volume whose shape is not the run's ``(C, D, H, W)``.
        """
        want = (self.channels, *self.input_size)
        for v in volumes:
            if tuple(np.shape(v)) != want:
                raise DataError(f"a volume of shape {tuple(np.shape(v))} in a run of {want} volumes: every probe "
                                "volume must have one shape (the model sees the stored voxel grid, never resized)")
        if not volumes:
            return torch.zeros((0, *want), dtype=torch.float32)
        return torch.from_numpy(np.stack([np.asarray(v, np.float32) for v in volumes]))

    def resize_mask(self, mask: np.ndarray) -> np.ndarray:
        """A (D, H, W) mask as the model sees it: unchanged (volumes are never resized), bool."""
        mask = np.asarray(mask, bool)
        if mask.shape != tuple(self.input_size):
            raise DataError(f"mask of shape {mask.shape} does not match the volumes {tuple(self.input_size)}")
        return mask

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (the report's provenance)."""
        return {"kind": "volume", "input_size": list(self.input_size), "channels": self.channels,
                "mean": None, "std": None, "resize": "none", "intensity": "as stored (no resize, no normalisation)",
                "sources": dict(self.sources)}
