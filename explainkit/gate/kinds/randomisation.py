"""``randomisation``: a sanity check of the saliency method (do its maps depend on the model's weights?).

Model-parameter randomisation (Adebayo et al., NeurIPS 2018) with the Grad-CAM engine's helper
:func:`explainkit.cam.sanity.parameter_randomization`: on a copy of the model, the
layers above the target layer (the "head") and then every layer are re-initialised (cascading,
top-down), the maps of the same images and classes are recomputed, and each image's map is
compared with its original by Spearman rank correlation on the map's native grid. The effect is
the mean correlation after the ``stage`` named in the policy, with a bootstrap CI; the one-sided
Wilcoxon test asks whether the correlations exceed ``tau`` (default 0.5): FAIL means the maps
survive randomisation significantly and materially — they do not explain the weights. ``both``
(default) scores the head and the full cascade separately and reports the stage whose maps changed
least (the larger mean correlation), with its p-value Bonferroni-corrected for the two stages, so
either stage surviving randomisation counts. Evidence about the explanation method, not the model:
the kind warns by default.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from explainkit.analyzers.metric import metric
from explainkit.cam.render import input_view, overlay_uri, quantize, view_uri
from explainkit.cam.sanity import parameter_randomization
from explainkit.errors import ConfigError
from explainkit.gate.kinds.base import CheckContext, Measurement, paired_measurement
from explainkit.gate.kinds.saliency import SALIENCY_OPTIONS, SaliencyKind
from explainkit.options import Option
from explainkit.stats import bootstrap_ci

__all__ = ["STAGES", "Randomisation"]

#: Which randomisation steps are scored per image.
STAGES = ("both", "head", "full")
_UNIT = "Spearman rho"
#: Bootstrap resamples of the helper's own per-chunk summaries (unused here: the gate bootstraps the images).
_HELPER_RESAMPLES = 100


class Randomisation(SaliencyKind):
    """Model-parameter randomisation test of the explanation method (evidence; warns by default)."""

    name = "randomisation"
    title = "Saliency sanity check (parameter randomisation)"
    options: ClassVar[Mapping[str, Option]] = {
        **SALIENCY_OPTIONS,
        "stage": Option("choice", "both", STAGES,
                        help="head: layers above the target layer randomised; full: every layer; both: the larger "
                             "correlation of the two"),
    }

    @classmethod
    def default_tau(cls, options: Mapping[str, Any]) -> float:
        """A Spearman correlation of 0.5 with the original maps."""
        return 0.5

    def prepare(self, cc: CheckContext) -> None:
        """Resolve the target class when given."""
        if self.spec.target_class is not None:
            cc.target_index()

    def _randomise(self, cc: CheckContext, unit: torch.Tensor, seed: int, keep_maps: bool = False) -> dict[str, Any]:
        """The cascading test (head, then every layer) of the policy's method on (B, 3, H, W) images in [0, 1]."""
        o = self.spec.options
        return parameter_randomization(cc.run.handle, cc.run.handle.require_preprocessing().normalize(unit),
                                       methods=[o["method"]], classes=self.classes(cc, unit), layer=o["layer"],
                                       steps=2, threshold=self.spec.tau, batch_size=cc.run.batch_size, seed=seed,
                                       n_resamples=_HELPER_RESAMPLES, independent=False, keep_maps=keep_maps)

    def measure(self, cc: CheckContext) -> Measurement:
        """Randomise, recompute, correlate; batch by batch within the time budget."""
        o = self.spec.options
        indices = cc.sample(np.arange(len(cc.run.data)))
        prep = cc.run.handle.require_preprocessing()
        seed = cc.seed("randomise")  # one seed for every batch: the same randomised weights throughout
        done, head, full, groups, has_head = [], [], [], [], False
        for chunk, images in cc.batches(indices, cc.run.batch_size):
            unit = prep.to_unit_tensor(images).to(cc.run.device)
            res = self._randomise(cc, unit, seed)
            cascade = next(iter(res["methods"].values()))["cascading"]
            has_head, groups = res["head"], res["groups"]
            head.append(np.asarray(cascade[0]["per_image"]) if has_head else np.full(len(chunk), np.nan))
            full.append(np.asarray(cascade[-1]["per_image"]))
            done.append(np.asarray(chunk))
        if o["stage"] == "head" and not has_head:
            raise ConfigError(f"check {self.spec.id!r}: stage 'head' needs layers above the target layer; "
                              f"method {o['method']!r} has none here (use stage = 'full')")
        head_a = np.concatenate(head) if head else np.zeros(0)
        full_a = np.concatenate(full) if full else np.zeros(0)
        stages = {"head": ["head"], "full": ["full"], "both": ["head", "full"] if has_head else ["full"]}[o["stage"]]
        truncated = sum(map(len, done)) < len(indices)
        per_stage = {st: paired_measurement(cc, {"head": head_a, "full": full_a}[st], unit=_UNIT,
                                            n_planned=len(indices), truncated=truncated, null=self.spec.tau)
                     for st in stages}
        scored = max(stages, key=lambda st: per_stage[st].effect if np.isfinite(per_stage[st].effect) else -np.inf)
        m = per_stage[scored]
        if len(stages) > 1:
            m.p = min(1.0, m.p * len(stages))
            m.test["name"] += f", Bonferroni over {len(stages)} stages"
            m.notes.append(f"stage {scored!r} reported: its maps changed least of {', '.join(stages)}")
        for name, arr in (("rho_head_randomised", head_a), ("rho_all_randomised", full_a)):
            arr = arr[np.isfinite(arr)]
            ci = bootstrap_ci(arr, confidence=cc.defaults.ci, n_resamples=cc.defaults.n_resamples,
                              seed=cc.seed("bootstrap", name)) if arr.size > 1 else None
            m.metrics[name] = metric(float(arr.mean()) if arr.size else None, ci, n=int(arr.size), unit=_UNIT,
                                     higher_is_better=False)
        idx = np.concatenate(done) if done else np.zeros(0, np.int64)
        m.details.update({
            "method": o["method"], "layer": o["layer"], "stage": o["stage"], "scored_stage": scored,
            "explains": self.explained(cc),
            "groups": groups, "head": has_head,
            "statistic": "Spearman rank correlation of each image's map with its original, on the map's native grid "
                         "(a map that became constant counts as 0)",
            "per_image": {"ids": [cc.run.data.ids[int(i)] for i in idx], "rho_head": head_a.tolist(),
                          "rho_full": full_a.tolist()},
            "examples_caption": "Images whose maps changed least under randomisation: the map on the trained model, "
                                "then after randomising the layers above the target layer (head) and every layer "
                                "(all); numbers: Spearman rho with the original map.",
        })
        m.examples, m.assets = self._examples(cc, idx, {"head": head_a, "full": full_a}[scored], seed)
        m.notes.append(f"the test is one-sided against tau = {self.spec.tau:g} (maps that survive randomisation); "
                       "the minimal detectable effect is an excess over tau")
        return m

    def _examples(self, cc: CheckContext, idx: np.ndarray, rho: np.ndarray, seed: int, k: int = 3
                  ) -> tuple[list[dict], dict[str, str]]:
        """Image and maps (trained, head randomised, all randomised) of the ``k`` images with the largest rho.

        The maps are recomputed for these images alone with the same seed, hence the same randomised
        weights as the measurement.
        """
        finite = np.isfinite(rho)
        if not finite.any():
            return [], {}
        order = np.flatnonzero(finite)[np.argsort(-rho[finite], kind="stable")[:k]]
        prep = cc.run.handle.require_preprocessing()
        images = cc.run.load_images(idx[order])
        unit = prep.to_unit_tensor(images).to(cc.run.device)
        res = self._randomise(cc, unit, seed, keep_maps=True)
        method = next(iter(res["methods"]))
        stats = next(iter(res["methods"].values()))["cascading"]
        steps = [("trained", res["maps"]["original"][method], None)]
        if res["head"] and len(res["groups"]) > 1:
            steps.append(("head randomised", res["maps"]["cascading"][0][method], stats[0]["per_image"]))
        steps.append(("all randomised", res["maps"]["cascading"][-1][method], stats[-1]["per_image"]))
        examples, assets = [], {}
        for j, (pos, image) in enumerate(zip(order, images)):
            view = input_view(image, prep)
            key = f"{self.spec.id}/{j}"
            assets[f"{key}/image"] = view_uri(view)
            panels = [{"asset": f"{key}/image", "label": "image", "score": None}]
            for label, maps, per_image in steps:
                name = f"{key}/{label.replace(' ', '_')}"
                assets[name] = overlay_uri(view, quantize(maps[j].detach().cpu().numpy()))
                panels.append({"asset": name, "label": label,
                               "score": None if per_image is None else float(per_image[j])})
            examples.append({"id": cc.run.data.ids[int(idx[pos])], "effect": float(rho[pos]), "panels": panels})
        return examples, assets
