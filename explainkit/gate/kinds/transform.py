"""``transform``: counterfactual transforms of a region (not a pasted template), each against its own control.

``transform`` names what is changed (:mod:`explainkit.gate.kinds.transforms`):

============== ============================================= ========================================= ======
transform      treated image                                 control (same pixels / amount)            images
============== ============================================= ========================================= ======
recolour       region mixed with ``colour`` at ``strength``  mixed with the colour's luminance grey     others
background_swap object on a background of a ``donor_class``  object on a background of its own class   others
               image (both donors' objects inpainted over one shared hole, :func:`donor_backgrounds`)
blur           Gaussian blur (``sigma``) in the region       the same blur in a shifted region         target
texture        non-local-means texture removal in the region the same in a shifted region              target
============== ============================================= ========================================= ======

"others" are the images not of ``target_class`` (all images of an unlabelled probe set): adding the
cue should pull them toward the target. "target" are the target class's images: destroying the
region's detail should lower the target score if the model relies on it. Per image, with R
controls (or donors) averaged within the image, the effect is that of
:mod:`explainkit.gate.kinds.interventions` (sign +1 for "others", -1 for "target")::

    effect_i = sign * ([mean_r f_t(treated_r) - f_t(x)] - [mean_r f_t(control_r) - f_t(x)])

``region``: ``image``, ``background`` (outside ``masks/<object_masks>/``) or the name of a mask
folder under ``masks/`` (e.g. ``object`` or an artifact concept). ``blur`` and ``texture`` need a
mask folder (a shifted copy of the region is their control). Removing a concept by inpainting
its mask is the ``removal`` kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from explainkit.backends.plan import label_map
from explainkit.errors import ConfigError, DataError
from explainkit.gate.kinds.base import CheckContext, Measurement
from explainkit.gate.kinds.interventions import EFFECT_OPTION, InterventionKind, paired_result, run_paired
from explainkit.gate.kinds.masks import images_with_mask, input_masks
from explainkit.gate.kinds.removal import shifted_mask
from explainkit.gate.kinds.transforms import (
    blur_region,
    donor_backgrounds,
    luminance_grey,
    recolour,
    retexture_region,
    swap_background,
)
from explainkit.options import REQUIRED, Option
from explainkit.prototypes.perturb import DEFAULT_PARAMS

__all__ = ["CONTROLS", "TRANSFORMS", "Transform"]

#: Transform → the images it is applied to (``others``: not the target class; ``target``: the target class).
TRANSFORMS = {"recolour": "others", "background_swap": "others", "blur": "target", "texture": "target"}
#: Transform → the name of its control (reported with the result).
CONTROLS = {"recolour": "luminance_grey", "background_swap": "own_class_background", "blur": "shifted_region",
            "texture": "shifted_region"}
_PANELS = {"recolour": ("recoloured", "luminance grey"), "background_swap": ("donor-class background",
                                                                            "own-class background"),
           "blur": ("region blurred", "shifted region blurred"), "texture": ("region texture removed",
                                                                           "shifted region texture removed")}
_WHOLE = ("image", "background")


class Transform(InterventionKind):
    """Counterfactual transforms of a region against neutral controls (interventional; gates by default)."""

    name = "transform"
    title = "Counterfactual transform"
    default_severity = "error"
    needs_target = True
    options: ClassVar[Mapping[str, Option]] = {
        "transform": Option("choice", REQUIRED, tuple(TRANSFORMS), help="what is changed"),
        "region": Option("str", None, help="image, background, or a mask folder under masks/ (default: image for "
                                           "recolour; required for blur and texture)"),
        "object_masks": Option("str", "object", help="mask folder of the objects (background, background_swap)"),
        "colour": Option("float", None, low=0, high=1, many=True, help="recolour: the RGB colour, 3 values in [0, 1]"),
        "strength": Option("float", 0.5, low=0, high=1, low_open=True, help="recolour: mixing weight"),
        "sigma": Option("float", 2.0, low=0, low_open=True, high=64, help="blur: Gaussian sd in input pixels"),
        "donor_class": Option("class", None, help="background_swap: class whose backgrounds are pasted "
                                                  "(default: target_class)"),
        "donor_concept": Option("str", None, help="background_swap: donors must carry this concept; own-class "
                                                  "control donors must not"),
        "margin": Option("int", 1, low=0, high=16, help="background_swap: pixels the donors' object masks are grown by "
                                                         "before their objects are inpainted (soft edges)"),
        "repeats": Option("int", 3, low=1, high=64, help="donors / control regions / control copies per image"),
        "effect": EFFECT_OPTION,
    }

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> None:
        """Each transform's own keys."""
        t = options["transform"]
        if t == "recolour" and (options["colour"] is None or len(options["colour"]) != 3):
            raise ConfigError("transform 'recolour' needs colour = [r, g, b] (3 values in [0, 1])")
        if t in ("blur", "texture") and (options["region"] is None or options["region"] in _WHOLE):
            raise ConfigError(f"transform {t!r} needs region = a mask folder under masks/ (its control is the "
                              "same change in a shifted copy of the region)")
        if t == "background_swap" and options["region"] not in (None, "background"):
            raise ConfigError("transform 'background_swap' always changes the background; leave region out")

    # -- setup -------------------------------------------------------------------------------
    def _region(self) -> str:
        o = self.spec.options
        return "background" if o["transform"] == "background_swap" else o["region"] or "image"

    def _labels(self, cc: CheckContext) -> np.ndarray | None:
        """(N,) model output index of each image's label, or None for an unlabelled probe set."""
        data = cc.run.data
        if not data.has_labels:
            return None
        mapping, _ = label_map(cc.run.handle, data)
        assert mapping is not None
        return mapping[data.labels]

    def prepare(self, cc: CheckContext) -> None:
        """Resolve the target, the images, the masks they need and the donor pools."""
        o = self.spec.options
        self.target = cc.target_index()
        self.labels = self._labels(cc)
        data = cc.run.data
        region = self._region()
        needs = None if region == "image" else o["object_masks"] if region == "background" else region
        if needs is not None and needs not in data.mask_names():
            raise DataError(f"check {self.spec.id!r}: {data.root} has no masks/{needs}/ folder (region {region!r})")
        pool = np.arange(len(data)) if needs is None else images_with_mask(cc, needs)
        on_target = TRANSFORMS[o["transform"]] == "target"
        if self.labels is not None:
            keep = self.labels[pool] == self.target
            pool = pool[keep if on_target else ~keep]
        elif on_target:
            raise DataError(f"check {self.spec.id!r}: transform {o['transform']!r} runs on the target class's "
                            "images and needs a labelled probe set")
        if pool.size == 0:
            which = "of the target class" if on_target else "outside the target class"
            raise DataError(f"check {self.spec.id!r}: no image {which} has what the transform needs"
                            + (f" (a mask under masks/{needs}/)" if needs else ""))
        self.eligible = pool
        if o["transform"] == "background_swap":
            self._donor_pools(cc)

    def _donor_pools(self, cc: CheckContext) -> None:
        o = self.spec.options
        data = cc.run.data
        if self.labels is None:
            raise DataError(f"check {self.spec.id!r}: background_swap picks donors by class and needs a labelled "
                            "probe set")
        with_obj = images_with_mask(cc, o["object_masks"])
        carries = np.ones(len(data), bool)
        if o["donor_concept"] is not None:
            if data.concepts is None or o["donor_concept"] not in data.concept_names:
                raise ConfigError(f"check {self.spec.id!r}: donor_concept {o['donor_concept']!r} is not a concept "
                                  "column of the probe set")
            carries = data.concepts[:, data.concept_index(o["donor_concept"])].astype(bool)
        donor_class = self.target if o["donor_class"] is None else self._class_index(cc, o["donor_class"])
        self.donors = with_obj[(self.labels[with_obj] == donor_class) & carries[with_obj]]
        self.control_donors = with_obj[~carries[with_obj]] if o["donor_concept"] is not None else with_obj
        if self.donors.size == 0:
            raise DataError(f"check {self.spec.id!r}: no donor image (class {donor_class}"
                            + (f", concept {o['donor_concept']!r}" if o["donor_concept"] else "")
                            + f", with a mask under masks/{o['object_masks']}/)")

    def _class_index(self, cc: CheckContext, cls: int | str) -> int:
        names = cc.run.handle.class_names or cc.run.data.class_names
        if isinstance(cls, int):
            return cls
        if names is None or cls not in names:
            raise ConfigError(f"check {self.spec.id!r}: unknown donor_class {cls!r}")
        return list(names).index(cls)

    # -- measuring ---------------------------------------------------------------------------
    def _masks(self, cc: CheckContext, indices: np.ndarray) -> dict[int, torch.Tensor]:
        """Probe index → (H, W) bool region at input resolution (images without one left out)."""
        region, o = self._region(), self.spec.options
        if region == "image":
            H, W = cc.run.handle.require_preprocessing().input_size
            full = torch.ones(H, W, dtype=torch.bool, device=cc.run.device)
            return {int(i): full for i in indices}
        if region == "background":
            return {i: ~m for i, m in input_masks(cc, indices, o["object_masks"]).items() if bool((~m).any())}
        return input_masks(cc, indices, region)

    def _donors(self, cc: CheckContext, donors: np.ndarray) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Donor probe index → ((3, H, W) image in [0, 1], (H, W) bool object mask), at input resolution."""
        prep = cc.run.handle.require_preprocessing()
        masks = input_masks(cc, donors, self.spec.options["object_masks"])
        out = {}
        for i in np.unique(donors):
            unit = prep.to_unit_tensor([cc.run.data.load_image(int(i))])[0].to(cc.run.device)
            out[int(i)] = unit, masks.get(int(i), torch.zeros(unit.shape[1:], dtype=torch.bool, device=unit.device))
        return out

    def _donor_draws(self, cc: CheckContext, index: int, sid: str) -> tuple[np.ndarray, np.ndarray]:
        """R donors of the donor class and R of the image's own class (not the image itself)."""
        assert self.labels is not None
        r = self.spec.options["repeats"]
        rng = cc.rng("donor", sid)
        own = self.control_donors[(self.labels[self.control_donors] == self.labels[index])
                                  & (self.control_donors != index)]
        if own.size == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return rng.choice(self.donors, r), rng.choice(own, r)

    def _variants(self, cc: CheckContext, masks: dict[int, torch.Tensor], draws: dict[int, tuple]):
        o = self.spec.options
        t, r = o["transform"], o["repeats"]
        colour = torch.tensor(o["colour"] or (0.0, 0.0, 0.0), dtype=torch.float32, device=cc.run.device)
        grey = luminance_grey(colour)
        texture = DEFAULT_PARAMS["texture"]

        def variants(unit: torch.Tensor, chunk: np.ndarray, ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
            b = unit.shape[0]
            n_treated = r if t == "background_swap" else 1
            treated = unit.new_empty(b, n_treated, *unit.shape[1:])
            control = unit.new_empty(b, r, *unit.shape[1:])
            donors = self._donors(cc, np.concatenate([np.concatenate(draws[int(i)]) for i in chunk])) \
                if t == "background_swap" else {}
            for j, (i, sid) in enumerate(zip(chunk, ids)):
                x, region = unit[j], masks[int(i)]
                if t == "recolour":
                    treated[j, 0] = recolour(x, region, colour, o["strength"])
                    control[j] = recolour(x, region, grey, o["strength"])
                elif t == "background_swap":
                    for k, (d, c) in enumerate(zip(*draws[int(i)])):
                        bg, bg_control = donor_backgrounds(*donors[int(d)], *donors[int(c)], o["margin"])
                        treated[j, k] = swap_background(x, ~region, bg)
                        control[j, k] = swap_background(x, ~region, bg_control)
                else:
                    change = (lambda im, m: blur_region(im, m, o["sigma"])) if t == "blur" \
                        else (lambda im, m: retexture_region(im, m, **texture))
                    treated[j, 0] = change(x, region)
                    rng = cc.rng("control-region", sid)
                    for k in range(r):
                        control[j, k] = change(x, shifted_mask(region, rng))
            return treated, control

        return variants

    def measure(self, cc: CheckContext) -> Measurement:
        """Transform, forward, compare."""
        o = self.spec.options
        t = o["transform"]
        sampled = cc.sample(self.eligible)
        masks = self._masks(cc, sampled)
        draws: dict[int, tuple] = {}
        if t == "background_swap":
            for i in sampled:
                if int(i) in masks:
                    draws[int(i)] = self._donor_draws(cc, int(i), cc.run.data.ids[int(i)])
            masks = {i: m for i, m in masks.items() if draws[i][1].size}
        indices = np.array([i for i in sampled if int(i) in masks], dtype=np.int64)
        variants = self._variants(cc, masks, draws)
        sign = 1.0 if TRANSFORMS[t] == "others" else -1.0
        treated_rows = o["repeats"] if t == "background_swap" else 1
        values, truncated = run_paired(cc, indices, variants, effect=o["effect"], target=self.target,
                                       rows_per_image=1 + treated_rows + o["repeats"], sign=sign, desc=self.spec.id)
        m = paired_result(cc, values, truncated, len(indices), effect=o["effect"], target=self.target,
                          variants=variants, labels=_PANELS[t])
        m.details.update({"transform": t, "control": CONTROLS[t], "region": self._region(),
                          "images": "not the target class" if TRANSFORMS[t] == "others" else "the target class",
                          "eligible": int(self.eligible.size), "left_out": int(len(sampled) - len(indices))})
        if t == "recolour":
            m.details["colour"], m.details["control_colour"] = list(o["colour"]), luminance_grey(
                torch.tensor(o["colour"], dtype=torch.float64)).tolist()
        return m
