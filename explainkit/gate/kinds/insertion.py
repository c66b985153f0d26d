"""``insertion``: paste the artifact into clean images and measure the target-class shift against a control.

Per image, with R placements (the same for the artifact and its control)::

    effect_i = mean_r [f_t(x + artifact_r) - f_t(x)] - mean_r [f_t(x + control_r) - f_t(x)]

The control isolates "this content" from "any occluder of this shape": ``mean_patch`` (default;
the artifact's alpha shape filled with the mean colour of the region it covers), ``grey_patch``,
or ``shuffled_pixels`` (the artifact's own pixels permuted: it asks whether the model reacts to
the artifact's *structure beyond its colour statistics*, and so hides reliance on the artifact's
colours — a model that jumps +6.4 logits for a stamp was measured to jump +9.9 for the stamp's
shuffled pixels, while a neutral patch moved it by about 0). The raw effect (artifact vs nothing)
is always reported next to the control-corrected one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from explainkit.errors import DataError
from explainkit.gate.kinds.artifact import (
    CONTROLS,
    PLACEMENTS,
    ArtifactTemplate,
    composite,
    control_colours,
    placements,
)
from explainkit.gate.kinds.base import CheckContext, Measurement, concept_name
from explainkit.gate.kinds.interventions import EFFECT_OPTION, InterventionKind, paired_result, run_paired
from explainkit.options import REQUIRED, Option

__all__ = ["SHUFFLED_PIXELS_NOTE", "Insertion", "without_artifact"]

#: The caveat shown with every ``shuffled_pixels`` control.
SHUFFLED_PIXELS_NOTE = (
    "control = shuffled_pixels keeps the artifact's colours, so this effect measures reliance on its "
    "structure beyond colour statistics only; reliance on its colours is hidden (see raw_effect, or use mean_patch)"
)


def without_artifact(cc: CheckContext, concept: str | None) -> tuple[np.ndarray, int]:
    """Probe indices of images that do not carry the artifact, and how many were left out.

    An image carries it when the concept table marks ``concept`` or a mask ``masks/<concept>/``
    exists for it.
    """
    probe = cc.run.data
    keep = np.ones(len(probe), bool)
    if concept is not None and concept in probe.concept_names and probe.concepts is not None:
        keep &= ~probe.concepts[:, probe.concept_index(concept)]
    if concept is not None and concept in probe.mask_names():
        folder = probe.root / "masks" / concept
        keep &= np.array([not (folder / sid).with_suffix(".png").is_file() for sid in probe.ids])
    return np.flatnonzero(keep), int((~keep).sum())


class Insertion(InterventionKind):
    """Counterfactual artifact insertion with a control patch (the gate's primary test)."""

    name = "insertion"
    title = "Artifact insertion"
    default_severity = "error"
    needs_target = True
    options: ClassVar[Mapping[str, Option]] = {
        "artifact": Option("file", REQUIRED, help="RGBA template; alpha = where it is pasted (partial alpha blends)"),
        "placement": Option("choice", "random", PLACEMENTS, help="where the artifact goes"),
        "repeats": Option("int", 3, low=1, high=64, help="placements per image (averaged within the image)"),
        "control": Option("choice", "mean_patch", CONTROLS,
                          help="the control: the same shape at the same places (see Controls)"),
        "effect": EFFECT_OPTION,
        "concept": Option("str", None, help="concept marking images that already carry the artifact (left out); "
                                            "default: the template's file name without extension"),
    }

    def prepare(self, cc: CheckContext) -> None:
        """Load the template, resolve the target and find images without the artifact."""
        o = self.spec.options
        self.template = ArtifactTemplate.load(o["artifact"])
        self.template.check_fits(cc.run.handle.require_preprocessing().input_size)
        self.target = cc.target_index()
        self.eligible, self.n_excluded = without_artifact(cc, concept_name(o))
        if self.eligible.size == 0:
            raise DataError(f"check {self.spec.id!r}: every image in {cc.run.data.root} already carries "
                            f"{concept_name(o)!r}; insertion needs clean images")

    def _variants(self, cc: CheckContext):
        o = self.spec.options
        rgb, alpha = self.template.rgb.to(cc.run.device), self.template.alpha.to(cc.run.device)

        def variants(unit: torch.Tensor, _chunk: np.ndarray, ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
            b, _, H, W = unit.shape
            r = o["repeats"]
            treated = unit.new_empty(b, r, *unit.shape[1:])
            control = unit.new_empty(b, r, *unit.shape[1:])
            for j, sid in enumerate(ids):
                rng = cc.rng("placement", sid)
                for k, yx in enumerate(placements(rng, o["placement"], (H, W), self.template.size, r)):
                    treated[j, k] = composite(unit[j], rgb, alpha, yx)
                    colours = control_colours(o["control"], unit[j], self.template, yx, rng)
                    control[j, k] = composite(unit[j], colours, alpha, yx)
            return treated, control

        return variants

    def measure(self, cc: CheckContext) -> Measurement:
        """Insert, forward, compare."""
        o = self.spec.options
        indices = cc.sample(self.eligible)
        variants = self._variants(cc)
        values, truncated = run_paired(cc, indices, variants, effect=o["effect"], target=self.target,
                                       rows_per_image=1 + 2 * o["repeats"], desc=self.spec.id)
        m = paired_result(cc, values, truncated, len(indices), effect=o["effect"], target=self.target,
                          variants=variants, labels=("with artifact", "control"))
        m.details.update({"left_out_with_artifact": self.n_excluded, "eligible": int(self.eligible.size)})
        if o["control"] == "shuffled_pixels":
            m.notes.append(SHUFFLED_PIXELS_NOTE)
        return m

    def provenance(self, cc: CheckContext) -> dict[str, Any]:
        """Data manifest and the template's hash."""
        return {**super().provenance(cc), "artifact": self.template.describe()}
