"""Artifact masks of probe images (``masks/<concept>/<image>.png``), at the model input's geometry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from explainkit.errors import ConfigError
from explainkit.gate.kinds.base import CheckContext
from explainkit.options import Option

__all__ = ["MASK_OPTIONS", "grow_mask", "images_with_mask", "input_masks", "require_mask_source"]

#: Policy keys naming the mask folder of the kinds that read artifact masks.
MASK_OPTIONS: dict[str, Option] = {
    "artifact": Option("file", None, help="the artifact's template (its file stem names the mask folder)"),
    "concept": Option("str", None, help="mask folder name under masks/ (default: the template's stem)"),
}


def require_mask_source(kind: str, options: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` unless ``artifact`` or ``concept`` names the mask folder."""
    if options.get("artifact") is None and not options.get("concept"):
        raise ConfigError(f"kind {kind!r} needs artifact (a template) or concept (the masks/<concept>/ folder)")


def images_with_mask(cc: CheckContext, concept: str) -> np.ndarray:
    """Probe indices of the images that have a mask file ``masks/<concept>/<image>.png``, (n,) int64."""
    probe = cc.run.data
    folder = probe.root / "masks" / concept
    return np.array([i for i, sid in enumerate(probe.ids) if (folder / sid).with_suffix(".png").is_file()],
                    dtype=np.int64)


def input_masks(cc: CheckContext, indices: np.ndarray, concept: str) -> dict[int, torch.Tensor]:
    """Masks resized and cropped like the images; images without a mask or with an empty one are left out.

    Parameters
    ----------
    cc : CheckContext
        The check (probe set, preprocessing, device).
    indices : ndarray
        (n,) probe indices.
    concept : str
        Mask folder name.

    Returns
    -------
    dict of int to torch.Tensor
        Probe index → (H, W) bool mask on the run's device, at model-input resolution.
    """
    prep = cc.run.handle.require_preprocessing()
    out = {}
    for i in indices:
        raw = cc.run.data.mask(int(i), concept)
        if raw is None:
            continue
        mask = torch.from_numpy(prep.resize_mask(raw))
        if bool(mask.any()):
            out[int(i)] = mask.to(cc.run.device)
    return out


def grow_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """The mask dilated by ``pixels`` (a square neighbourhood: Chebyshev distance ≤ ``pixels``).

    Parameters
    ----------
    mask : torch.Tensor
        (H, W) bool.
    pixels : int
        Growth in pixels (0 returns the mask).

    Returns
    -------
    torch.Tensor
        (H, W) bool.
    """
    if pixels <= 0:
        return mask
    return torch.nn.functional.max_pool2d(mask[None, None].float(), 2 * pixels + 1, 1, pixels)[0, 0] > 0
