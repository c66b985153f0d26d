"""``removal``: cover or inpaint the artifact in images that carry it and measure the target-class drop.

Images are those with a mask ``masks/<concept>/<image>.png`` in the probe folder. Per image::

    effect_i = [f_t(x) - f_t(x without artifact)] - mean_r [f_t(x) - f_t(x with region_r covered)]

where region_r is the artifact's mask moved to a random place that does not overlap it, filled the
same way: the control separates "the artifact was removed" from "some region of its shape was
covered". Fills: ``inpaint`` (OpenCV Telea), ``mean_patch`` (the mean colour of a 2-pixel ring
around the region), ``grey_patch``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from explainkit.errors import ConfigError, DataError
from explainkit.gate.kinds.base import CheckContext, Measurement, concept_name
from explainkit.gate.kinds.interventions import EFFECT_OPTION, InterventionKind, paired_result, run_paired
from explainkit.gate.kinds.masks import MASK_OPTIONS, grow_mask, images_with_mask, input_masks, require_mask_source
from explainkit.options import Option

__all__ = ["FILLS", "Removal", "cover", "shifted_mask"]

FILLS = ("inpaint", "mean_patch", "grey_patch")
_RING = 2
_TRIES = 100


def cover(image: torch.Tensor, mask: torch.Tensor, fill: str) -> torch.Tensor:
    """A copy of ``image`` with the ``mask`` region filled.

    Parameters
    ----------
    image : torch.Tensor
        (3, H, W) in [0, 1].
    mask : torch.Tensor
        (H, W) bool.
    fill : str
        One of :data:`FILLS`.

    Returns
    -------
    torch.Tensor
        (3, H, W); pixels outside the mask are unchanged.
    """
    out = image.clone()
    if not bool(mask.any()):
        return out
    if fill == "grey_patch":
        out[:, mask] = 0.5
    elif fill == "mean_patch":
        ring = grow_mask(mask, _RING) & ~mask
        colour = image[:, ring].mean(1) if bool(ring.any()) else image.new_full((3,), 0.5)
        out[:, mask] = colour[:, None]
    elif fill == "inpaint":
        import cv2

        arr = (image.detach().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        painted = cv2.inpaint(np.ascontiguousarray(arr), mask.cpu().numpy().astype(np.uint8), 3, cv2.INPAINT_TELEA)
        filled = torch.from_numpy(painted).permute(2, 0, 1).to(image.device, image.dtype) / 255.0
        out[:, mask] = filled[:, mask]
    else:
        raise ConfigError(f"unknown fill {fill!r}; expected one of {', '.join(FILLS)}")
    return out


def shifted_mask(mask: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """The mask's shape moved to a random place in the image that does not overlap it.

    When no such place exists (a mask covering most of the image) the least overlapping of
    100 random places is used.

    Parameters
    ----------
    mask : torch.Tensor
        (H, W) bool, not empty.
    rng : numpy.random.Generator
        Randomness.

    Returns
    -------
    torch.Tensor
        (H, W) bool with as many pixels as ``mask``.
    """
    H, W = mask.shape
    ys, xs = torch.nonzero(mask, as_tuple=True)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    shape = mask[y0:y1, x0:x1]
    best, best_overlap = None, None
    for _ in range(_TRIES):
        ty, tx = int(rng.integers(0, H - (y1 - y0) + 1)), int(rng.integers(0, W - (x1 - x0) + 1))
        moved = torch.zeros_like(mask)
        moved[ty : ty + y1 - y0, tx : tx + x1 - x0] = shape
        overlap = int((moved & mask).sum())
        if best_overlap is None or overlap < best_overlap:
            best, best_overlap = moved, overlap
        if overlap == 0:
            break
    assert best is not None
    return best


class Removal(InterventionKind):
    """Remove the artifact from images that carry it (evidence; warns by default)."""

    name = "removal"
    title = "Artifact removal"
    needs_target = True
    options: ClassVar[Mapping[str, Option]] = {
        **MASK_OPTIONS,
        "fill": Option("choice", "inpaint", FILLS,
                       help="how the artifact region is filled: inpaint (OpenCV Telea), mean_patch (mean colour of a "
                            "2-pixel ring around it), grey_patch"),
        "repeats": Option("int", 3, low=1, high=64, help="control regions per image"),
        "effect": EFFECT_OPTION,
    }

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> None:
        """An artifact template or a concept name is needed to find the masks."""
        require_mask_source("removal", options)

    def prepare(self, cc: CheckContext) -> None:
        """Find images with a mask of the artifact."""
        self.concept = concept_name(self.spec.options)
        self.target = cc.target_index()
        self.eligible = images_with_mask(cc, str(self.concept))
        if self.eligible.size == 0:
            raise DataError(f"check {self.spec.id!r}: no image in {cc.run.data.root} has a mask under "
                            f"masks/{self.concept}/")

    def measure(self, cc: CheckContext) -> Measurement:
        """Remove, forward, compare."""
        o = self.spec.options
        sampled = cc.sample(self.eligible)
        masks = input_masks(cc, sampled, str(self.concept))
        indices = np.array([i for i in sampled if int(i) in masks], dtype=np.int64)

        def variants(unit: torch.Tensor, chunk: np.ndarray, ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
            b = unit.shape[0]
            treated = unit.new_empty(b, 1, *unit.shape[1:])
            control = unit.new_empty(b, o["repeats"], *unit.shape[1:])
            for j, (i, sid) in enumerate(zip(chunk, ids)):
                mask = masks[int(i)]
                treated[j, 0] = cover(unit[j], mask, o["fill"])
                rng = cc.rng("control-region", sid)
                for k in range(o["repeats"]):
                    control[j, k] = cover(unit[j], shifted_mask(mask, rng), o["fill"])
            return treated, control

        values, truncated = run_paired(cc, indices, variants, effect=o["effect"], target=self.target,
                                       rows_per_image=2 + o["repeats"], sign=-1.0, desc=self.spec.id)
        m = paired_result(cc, values, truncated, len(indices), effect=o["effect"], target=self.target,
                          variants=variants, labels=("artifact removed", "control region covered"))
        m.details.update({"concept": self.concept, "with_mask": int(self.eligible.size),
                          "empty_masks_left_out": int(len(sampled) - len(indices))})
        return m
