"""``performance``: accuracy, per-class precision/recall, confusion matrix, concept-slice accuracy.

A large accuracy gap between concept slices (e.g. images of one class that carry a watermark) is
often the first hint of a spurious cue; every accuracy comes with a 95 % bootstrap CI over images.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from explainkit.analyzers.base import Analyzer, Batch, Finding, RecordState, RunContext, Section
from explainkit.analyzers.metric import metric
from explainkit.options import Option
from explainkit.stats import bootstrap_ci, bootstrap_diff_ci

__all__ = ["Performance", "PerformanceResult", "Slice"]


@dataclass(frozen=True)
class Slice:
    """Accuracy inside a concept slice against its reference group.

    Attributes
    ----------
    name : str
        ``"<concept>"``, ``"not <concept>"`` or ``"<class> & <concept>"``.
    cls : str or None
        The class of a class & concept slice.
    kind : str
        ``"present"`` or ``"absent"`` (of the concept).
    n, correct : int
        Images in the slice and how many of them the model classifies correctly.
    n_rest, correct_rest : int
        The same for the reference group (the complement; for a class & concept slice the same
        class without the concept).
    accuracy, accuracy_rest, gap : dict
        ``metric`` dicts: accuracies and the gap (reference minus slice; positive: the slice is
        worse) with 95 % percentile-bootstrap CIs (none for slices under ``min_slice_size``).
    """

    name: str
    cls: str | None
    kind: str
    n: int
    correct: int
    n_rest: int
    correct_rest: int
    accuracy: dict[str, Any]
    accuracy_rest: dict[str, Any]
    gap: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The slice's JSON record."""
        return {"slice": self.name, "class": self.cls, "kind": self.kind, "n": self.n, "n_rest": self.n_rest,
                "accuracy": self.accuracy, "accuracy_rest": self.accuracy_rest, "gap": self.gap}


@dataclass(frozen=True)
class PerformanceResult:
    """What :meth:`Performance.evaluate` computes from the per-image records.

    Attributes
    ----------
    accuracy : dict
        Overall accuracy (``metric`` dict with a bootstrap CI).
    classes : list of str
        Class names in output order.
    confusion : ndarray
        (K, K) counts, rows true class, columns predicted class.
    slices : list of Slice
        Concept and (class, concept) slices with images on both sides.
    """

    accuracy: dict[str, Any]
    classes: list[str]
    confusion: np.ndarray
    slices: list[Slice]


class Performance(Analyzer):
    """Accuracy and slice accuracy with bootstrap confidence intervals.

    Parameters
    ----------
    n_resamples : int
        Bootstrap resamples for every CI.
    min_slice_size : int
        Slices with fewer images get no CI and are not eligible as the worst slice.
    gap_warning : float
        A worst-slice gap whose CI lower bound exceeds this (in accuracy units) becomes a finding.
    class_slices : bool
        Also slice by (class, concept) pairs, e.g. "square images with a stamp".
    """

    name = "performance"
    title = "Performance and slice accuracy"
    summary = "accuracy, per-class precision/recall, confusion matrix, concept-slice gaps with CIs"
    requires = frozenset({"labels"})
    run_by_default = True
    inputs = frozenset({"images", "volumes"})  # reads logits and labels only
    options: ClassVar[Mapping[str, Option]] = {
        "n_resamples": Option("int", low=100, help="bootstrap resamples for every CI"),
        "min_slice_size": Option("int", low=1, help="slices with fewer images get no CI and cannot be the worst"),
        "gap_warning": Option("float", help="worst-slice gap (accuracy units) whose CI lower bound above it "
                                            "becomes a finding"),
        "class_slices": Option("bool", help="also slice by (class, concept) pairs"),
    }

    def __init__(self, n_resamples: int = 2000, min_slice_size: int = 10, gap_warning: float = 0.1,
                 class_slices: bool = True) -> None:
        self.n_resamples = n_resamples
        self.min_slice_size = min_slice_size
        self.gap_warning = gap_warning
        self.class_slices = class_slices

    def map(self, ctx: RunContext, batch: Batch) -> RecordState:
        """Record prediction, label and concept row per image."""
        pred = batch.logits.detach().argmax(1).cpu().numpy()
        labels = batch.labels.numpy()
        concepts = batch.concepts if batch.concepts is not None else np.zeros((len(batch), 0), bool)
        return RecordState.from_batch(batch.indices, pred=pred, label=labels, concepts=concepts)

    def evaluate(self, ctx: RunContext, state: RecordState) -> PerformanceResult:
        """Accuracy, confusion matrix and slice accuracies from the merged per-image records."""
        pred = state.stacked("pred").astype(np.int64)
        label = state.stacked("label").astype(np.int64)
        concepts = state.stacked("concepts").astype(bool)
        names = list(ctx.class_names)
        k = max(len(names), int(pred.max(initial=0)) + 1, int(label.max(initial=0)) + 1)
        names = names + [str(i) for i in range(len(names), k)]
        correct = (pred == label).astype(np.float64)
        rng = ctx.rng(self.name)
        seed = int(rng.integers(0, 2**31))
        acc = metric(correct.mean(), bootstrap_ci(correct, n_resamples=self.n_resamples, seed=seed),
                     n=int(correct.size), unit="fraction", higher_is_better=True)
        confusion = np.zeros((k, k), dtype=np.int64)
        np.add.at(confusion, (label, pred), 1)
        slices = self._slices(ctx, correct, label, concepts, names, seed)
        return PerformanceResult(accuracy=acc, classes=names, confusion=confusion, slices=slices)

    def finalize(self, ctx: RunContext, state: RecordState) -> Section:
        """Compute all metrics from the per-image records."""
        result = self.evaluate(ctx, state)
        acc, names, confusion = result.accuracy, result.classes, result.confusion
        per_class = []
        for c in range(len(names)):
            tp = confusion[c, c]
            support, predicted = confusion[c].sum(), confusion[:, c].sum()
            per_class.append({
                "class": names[c], "support": int(support), "predicted": int(predicted),
                "precision": metric(tp / predicted if predicted else None, n=int(predicted),
                                    unit="fraction", higher_is_better=True),
                "recall": metric(tp / support if support else None, n=int(support),
                                 unit="fraction", higher_is_better=True),
            })
        slices = [sl.to_dict() for sl in result.slices]
        eligible = [s for s in slices if s["n"] >= self.min_slice_size and s["n_rest"] >= self.min_slice_size]
        worst = min(eligible, key=lambda s: (s["accuracy"]["value"], -s["n"]), default=None)
        findings = []
        if worst is not None and worst["gap"]["ci_low"] is not None and worst["gap"]["ci_low"] > self.gap_warning:
            findings.append(Finding(
                "warning",
                f"accuracy drops to {worst['accuracy']['value']:.0%} on slice '{worst['slice']}' "
                f"(n={worst['n']}) vs {worst['accuracy_rest']['value']:.0%} elsewhere; gap "
                f"{worst['gap']['value']:.2f} [95% CI {worst['gap']['ci_low']:.2f}, {worst['gap']['ci_high']:.2f}]",
                self.name, {"slice": worst["slice"], "gap": worst["gap"]},
            ))
        return self.section(
            summary={"accuracy": acc, "worst_slice": worst["slice"] if worst else None,
                     "worst_slice_gap": worst["gap"] if worst else None},
            data={"accuracy": acc, "per_class": per_class,
                  "confusion": {"classes": names, "matrix": confusion.tolist(),
                                "rows": "true class", "columns": "predicted class"},
                  "slices": slices, "worst_slice": worst,
                  "notes": "gap = accuracy of the reference group minus accuracy inside the slice (positive: "
                           "the slice is worse); the reference of a concept slice is its complement, the "
                           "reference of a class & concept slice is the same class without the concept; "
                           "95% percentile bootstrap CIs over images; the worst slice is chosen "
                           "after looking, so its gap is optimistic: gate on a pre-registered slice"},
            findings=findings,
        )

    def _slices(self, ctx: RunContext, correct: np.ndarray, label: np.ndarray, concepts: np.ndarray,
                names: list[str], seed: int) -> list[Slice]:
        out = []
        # (slice name, class, kind, slice mask, reference mask the slice is compared with)
        masks: list[tuple[str, str | None, str, np.ndarray, np.ndarray]] = []
        for j, concept in enumerate(ctx.data.concept_names):
            has = concepts[:, j]
            masks.append((concept, None, "present", has, ~has))
            masks.append((f"not {concept}", None, "absent", ~has, has))
            if self.class_slices:
                for c, cname in enumerate(names):
                    own = label == c
                    if np.any(own):
                        masks.append((f"{cname} & {concept}", cname, "present", own & has, own & ~has))
        for name, cname, kind, m, ref in masks:
            n = int(m.sum())
            if n == 0 or not ref.any():
                continue
            inside, rest = correct[m], correct[ref]
            small = n < self.min_slice_size
            out.append(Slice(
                name=name, cls=cname, kind=kind, n=n, correct=int(inside.sum()), n_rest=int(rest.size),
                correct_rest=int(rest.sum()),
                accuracy=metric(inside.mean(), None if small else bootstrap_ci(
                    inside, n_resamples=self.n_resamples, seed=seed), n=n, unit="fraction",
                    higher_is_better=True),
                accuracy_rest=metric(rest.mean(), n=int(rest.size), unit="fraction", higher_is_better=True),
                gap=metric(rest.mean() - inside.mean(), None if small else bootstrap_diff_ci(
                    rest, inside, n_resamples=self.n_resamples, seed=seed), n=n, unit="fraction",
                    higher_is_better=False),
            ))
        return out
