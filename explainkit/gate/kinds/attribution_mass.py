"""``attribution_mass``: how much of an explanation map lies on the artifact, against the artifact's area.

Images are those with a mask ``masks/<concept>/<image>.png`` in the probe folder. Per image, with
the map ``S`` (:func:`explainkit.cam`, non-negative, input resolution) and the mask ``M``::

    mass_i   = sum(S * M) / sum(S)        (share of the map's mass inside the mask)
    area_i   = mean(M)                    (the share a map spread evenly would put there)
    effect_i = mass_i - area_i

A map that ignores the artifact puts about ``area_i`` of its mass on it; the one-sided Wilcoxon
signed-rank test asks whether the paired excess is positive (the image is the unit), and the
effect is its mean with a bootstrap CI (in fractions of the map's mass). Attribution is evidence,
not an intervention: the kind warns by default. Images whose map is all zero are left out (their
share is undefined) and counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from explainkit.analyzers.metric import metric
from explainkit.cam import cam
from explainkit.cam.metrics import pointing_game
from explainkit.cam.render import input_view, overlay_uri, quantize, view_uri
from explainkit.errors import DataError
from explainkit.gate.kinds.base import CheckContext, Measurement, concept_name, paired_measurement
from explainkit.gate.kinds.masks import MASK_OPTIONS, images_with_mask, input_masks, require_mask_source
from explainkit.gate.kinds.saliency import SALIENCY_OPTIONS, SaliencyKind
from explainkit.options import Option
from explainkit.stats import bootstrap_ci

__all__ = ["AttributionMass"]

_UNIT = "fraction of map mass"


class AttributionMass(SaliencyKind):
    """Share of the explanation's mass inside the artifact mask vs the mask's area (evidence; warns)."""

    name = "attribution_mass"
    title = "Attribution mass on the artifact"
    options: ClassVar[Mapping[str, Option]] = {
        **MASK_OPTIONS,
        **SALIENCY_OPTIONS,
    }

    @classmethod
    def default_tau(cls, options: Mapping[str, Any]) -> float:
        """10 percentage points of the map's mass beyond the artifact's area."""
        return 0.1

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> None:
        """A template or a concept names the masks; the method must exist."""
        require_mask_source("attribution_mass", options)
        super().validate_options(options)

    def prepare(self, cc: CheckContext) -> None:
        """Find the images with a mask of the artifact; resolve the target class when given."""
        self.concept = str(concept_name(self.spec.options))
        if self.spec.target_class is not None:
            cc.target_index()
        self.eligible = images_with_mask(cc, self.concept)
        if self.eligible.size == 0:
            raise DataError(f"check {self.spec.id!r}: no image in {cc.run.data.root} has a mask under "
                            f"masks/{self.concept}/")

    def _maps(self, cc: CheckContext, unit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W) maps of images in [0, 1] and the (B,) classes they explain."""
        o = self.spec.options
        classes = self.classes(cc, unit)
        inputs = cc.run.handle.require_preprocessing().normalize(unit)
        maps = cam(cc.run.handle, inputs, layer=o["layer"], method=o["method"], targets=classes.tolist(),
                   batch_size=cc.run.batch_size, seed=cc.seed("cam"))
        return maps, classes

    def measure(self, cc: CheckContext) -> Measurement:
        """Explain, measure the mass inside each mask, test it against the mask's area."""
        sampled = cc.sample(self.eligible)
        masks = input_masks(cc, sampled, self.concept)
        indices = np.array([i for i in sampled if int(i) in masks], dtype=np.int64)
        prep = cc.run.handle.require_preprocessing()
        done, mass, area = [], [], []
        for chunk, images in cc.batches(indices, cc.run.batch_size):
            maps, _ = self._maps(cc, prep.to_unit_tensor(images).to(cc.run.device))
            chunk_masks = [masks[int(i)].cpu().numpy() for i in chunk]
            mass.append(pointing_game(maps, chunk_masks)["energy"])
            area.append(np.array([m.mean() for m in chunk_masks]))
            done.append(np.asarray(chunk))
        idx = np.concatenate(done) if done else np.zeros(0, np.int64)
        mass_a = np.concatenate(mass) if mass else np.zeros(0)
        area_a = np.concatenate(area) if area else np.zeros(0)
        defined = np.isfinite(mass_a)
        m = paired_measurement(cc, mass_a[defined] - area_a[defined], unit=_UNIT, n_planned=len(indices),
                               truncated=len(idx) < len(indices))
        for name, arr, unit in (("mass_inside", mass_a[defined], _UNIT),
                                ("area_fraction", area_a[defined], "fraction of the image")):
            ci = bootstrap_ci(arr, confidence=cc.defaults.ci, n_resamples=cc.defaults.n_resamples,
                              seed=cc.seed("bootstrap", name)) if arr.size else None
            m.metrics[name] = metric(float(arr.mean()) if arr.size else None, ci, n=int(arr.size), unit=unit,
                                     higher_is_better=False)
        ids = [cc.run.data.ids[int(i)] for i in idx]
        m.details.update({
            "concept": self.concept, "method": self.spec.options["method"], "layer": self.spec.options["layer"],
            "explains": self.explained(cc), "with_mask": int(self.eligible.size),
            "empty_masks_left_out": int(len(sampled) - len(indices)), "all_zero_maps_left_out": int((~defined).sum()),
            "examples_caption": "Images with the most map mass on the artifact beyond its area; numbers: share of "
                                "the map's mass inside the mask (map panel) and the mask's area fraction (mask panel).",
            "per_image": {"ids": ids, "mass_inside": mass_a.tolist(), "area_fraction": area_a.tolist()},
        })
        m.examples, m.assets = self._examples(cc, idx[defined], mass_a[defined], area_a[defined], masks)
        return m

    def _examples(self, cc: CheckContext, idx: np.ndarray, mass: np.ndarray, area: np.ndarray,
                  masks: dict[int, torch.Tensor], k: int = 3) -> tuple[list[dict], dict[str, str]]:
        """Image, heatmap overlay and mask of the ``k`` images with the most mass on the artifact."""
        if idx.size == 0:
            return [], {}
        order = np.argsort(-(mass - area), kind="stable")[:k]
        prep = cc.run.handle.require_preprocessing()
        images = cc.run.load_images(idx[order])
        maps, _ = self._maps(cc, prep.to_unit_tensor(images).to(cc.run.device))
        examples, assets = [], {}
        for j, (o, image) in enumerate(zip(order, images)):
            view = input_view(image, prep)
            mask = masks[int(idx[o])].cpu().numpy()
            key = f"{self.spec.id}/{j}"
            assets[f"{key}/image"] = view_uri(view)
            assets[f"{key}/map"] = overlay_uri(view, quantize(maps[j].detach().cpu().numpy()))
            assets[f"{key}/mask"] = view_uri(np.repeat((mask * 255).astype(np.uint8)[..., None], 3, 2))
            examples.append({"id": cc.run.data.ids[int(idx[o])], "effect": float(mass[o] - area[o]), "panels": [
                {"asset": f"{key}/image", "label": "image", "score": None},
                {"asset": f"{key}/map", "label": self.spec.options["method"], "score": float(mass[o])},
                {"asset": f"{key}/mask", "label": f"mask ({self.concept})", "score": float(area[o])},
            ]})
        return examples, assets
