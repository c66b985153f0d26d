"""``slice_gap``: accuracy gap between concept slices, computed by the ``performance`` analyzer.

The slice is named in the policy exactly as the performance analyzer names it (``stamp``,
``not stamp``, ``square & stamp``: the squares with the stamp, compared with the squares without
it), or chosen as the largest gap among the slices of a ``concept``; a chosen slice's p-value is
Bonferroni-corrected for the number of candidates it was chosen from. The sample is mapped through
the ``performance`` analyzer on the serial backend and evaluated with
:meth:`~explainkit.analyzers.performance.Performance.evaluate`: the gap (reference accuracy minus
slice accuracy; positive: the slice is worse) and its 95 % bootstrap CI are the analyzer's; the
one-sided p-value is Fisher's exact test on the two groups' correct / wrong counts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from scipy import stats

from explainkit.analyzers.performance import Performance
from explainkit.backends import RunPlan, get_backend, label_map
from explainkit.errors import ConfigError, DataError
from explainkit.gate.kinds.base import CheckContext, CheckKind, Measurement
from explainkit.options import Option

__all__ = ["SliceGap", "slice_names"]


def slice_names(class_names: tuple[str, ...] | None, concept: str) -> list[str]:
    """The slices the performance analyzer reports for ``concept`` (when the data has them)."""
    return [concept, f"not {concept}", *(f"{c} & {concept}" for c in class_names or ())]


class SliceGap(CheckKind):
    """Accuracy gap between a concept slice and its reference group (evidence; warns by default)."""

    name = "slice_gap"
    title = "Concept-slice accuracy gap"
    options: ClassVar[Mapping[str, Option]] = {
        "slice": Option("str", None, help="slice name as the performance analyzer reports it, e.g. 'square & stamp'"),
        "concept": Option("str", None, help="or: take the largest gap among this concept's slices"),
    }

    @classmethod
    def default_tau(cls, options: dict[str, Any]) -> float:
        """A 10 percentage-point accuracy gap."""
        return 0.1

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> None:
        """Exactly one of ``slice`` and ``concept``."""
        if bool(options.get("slice")) == bool(options.get("concept")):
            raise ConfigError("kind 'slice_gap' needs exactly one of slice (a slice name) and concept")

    def prepare(self, cc: CheckContext) -> None:
        """The data needs labels and concepts; the slice must be one the analyzer can report."""
        probe = cc.run.data
        if not probe.has_labels or probe.concepts is None:
            raise DataError(f"check {self.spec.id!r}: slice_gap needs a labelled probe set with a concept table "
                            f"({probe.root})")
        o = self.spec.options
        if o["concept"]:
            probe.concept_index(o["concept"])
            self.candidates = slice_names(probe.class_names, o["concept"])
        else:
            known = [s for c in probe.concept_names for s in slice_names(probe.class_names, c)]
            if o["slice"] not in known:
                raise ConfigError(f"check {self.spec.id!r}: unknown slice {o['slice']!r} (e.g. {', '.join(known[:6])})")
            self.candidates = [o["slice"]]

    def measure(self, cc: CheckContext) -> Measurement:
        """Run the performance analyzer on the sample and test the slice's gap."""
        data = cc.run.data.subset(np.sort(cc.sample(np.arange(len(cc.run.data)))))
        analyzer = Performance(n_resamples=self.defaults.n_resamples, min_slice_size=self.defaults.min_images)
        analyzer.check_params()
        ctx = dataclasses.replace(cc.run, data=data)
        labels, _ = label_map(ctx.handle, data)
        plan = RunPlan(handle=ctx.handle, probe=data, analyzers=[analyzer], label_map=labels, progress=cc.progress)
        result = analyzer.evaluate(ctx, get_backend("serial").run(plan, ctx).states[analyzer.name])
        found = {s.name: s for s in result.slices if s.name in self.candidates}
        if not found:
            raise DataError(f"check {self.spec.id!r}: none of the slices {', '.join(self.candidates)} has images "
                            "in the sample")
        chosen = max(found.values(), key=lambda s: (s.gap["value"], s.n)) if self.spec.options["concept"] \
            else found[self.candidates[0]]
        n, n_ref, k, k_ref = chosen.n, chosen.n_rest, chosen.correct, chosen.correct_rest
        p = float(stats.fisher_exact([[k_ref, n_ref - k_ref], [k, n - k]], alternative="greater").pvalue)
        p = min(1.0, p * len(found))
        pooled = (k + k_ref) / (n + n_ref)
        se = math.sqrt(pooled * (1 - pooled) * (1 / n + 1 / n_ref))
        gap = chosen.gap
        ci = (gap["ci_low"], gap["ci_high"]) if gap["ci_low"] is not None else (float("nan"), float("nan"))
        m = Measurement(
            effect=float(gap["value"]), ci=ci, p=p, n=int(min(n, n_ref)), n_planned=int(min(n, n_ref)), se=se,
            unit="accuracy (fraction)",
            test={"name": "Fisher's exact test, one-sided (reference more accurate than the slice)"
                          + (f", Bonferroni over {len(found)} candidate slices" if len(found) > 1 else ""),
                  "table": [[k_ref, n_ref - k_ref], [k, n - k]]},
        )
        m.metrics.update({"slice_accuracy": chosen.accuracy, "reference_accuracy": chosen.accuracy_rest,
                          "overall_accuracy": result.accuracy})
        m.details.update({"slice": chosen.name, "n_slice": n, "n_reference": n_ref,
                          "chosen_from": sorted(found) if len(found) > 1 else None,
                          "performance_params": analyzer.get_params(),
                          "slices": [found[s].to_dict() for s in sorted(found)]})
        m.notes.append("n is the smaller of the two groups; CI and gap from the performance analyzer "
                       "(95% percentile bootstrap over images)")
        if len(found) > 1:
            m.notes.append(f"slice chosen as the largest gap among {len(found)}: its p-value is Bonferroni-corrected, "
                           "its point estimate is optimistic")
        return m


