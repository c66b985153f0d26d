"""``slice_shift``: whether a pre-registered slice pulls its images toward a class, against their class-mates.

The slice is a list of probe-relative image paths (``members``, one per line, as ``explainkit
discover`` writes them) or a concept column (``concept``). Per class that holds members, the
members' mean probability of ``target_class`` is compared with that of the class's other images;
the effect averages the class differences with the members' weights
(:func:`explainkit.stats.stratified_difference`)::

    effect = sum_c w_c (mean p_t(members of c) - mean p_t(other images of c)),  w_c = share of members in c

The test is Welch's one-sided t-test of ``effect > 0`` (Satterthwaite degrees of freedom), the CI a
t interval. The comparison is observational (evidence; warns by default): the interventional kinds
(``insertion``, ``removal``) test a named artifact directly. A slice chosen on some images and
checked on the *same* model and images is optimistic; the check is a valid test for other models
(a regression check) and for other images.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from explainkit.analyzers.metric import metric
from explainkit.errors import ConfigError, DataError
from explainkit.gate.kinds.base import CheckContext, CheckKind, Measurement
from explainkit.gate.kinds.interventions import forward_logits
from explainkit.options import Option
from explainkit.stats import stratified_difference

__all__ = ["SliceShift", "read_members"]

_UNIT = "probability of the target class"
_MAX_MEMBERS_BYTES = 64 * 1024 * 1024


def read_members(path: Path, ids: list[str]) -> np.ndarray:
    """Read a members file: one probe-relative path per line; blank lines and ``#`` comments are skipped.

    Parameters
    ----------
    path : Path
        The file.
    ids : list of str
        The probe set's sample ids.

    Returns
    -------
    ndarray
        (N,) bool over ``ids``.

    Raises
    ------
    DataError
        Unreadable file, or a path that is not an image of the probe set (naming the line).
    """
    try:
        if path.stat().st_size > _MAX_MEMBERS_BYTES:
            raise DataError(f"members file {path.name} is larger than {_MAX_MEMBERS_BYTES // 2**20} MiB")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read members file {path.name}: {exc}") from None
    position = {sid: i for i, sid in enumerate(ids)}
    member = np.zeros(len(ids), bool)
    for n, line in enumerate(text.splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        i = position.get(entry)
        if i is None:
            shown = entry if entry.isprintable() and len(entry) <= 120 else repr(entry[:120])
            raise DataError(f"members file {path.name} line {n}: {shown} is not an image of the probe set")
        member[i] = True
    return member


class SliceShift(CheckKind):
    """Prediction shift of a pre-registered slice toward a class, against class-mates (evidence; warns)."""

    name = "slice_shift"
    title = "Slice pull toward a class"
    needs_target = True
    options: ClassVar[Mapping[str, Option]] = {
        "members": Option("file", None, help="file with the slice's probe-relative image paths, one per line"),
        "concept": Option("str", None, help="or: the images a concept column marks"),
        "min_group": Option("int", 5, low=2, help="smallest members / reference images of a class that enters"),
    }

    @classmethod
    def default_tau(cls, options: Mapping[str, Any]) -> float:
        """20 percentage points of the target class's probability."""
        return 0.2

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> None:
        """Exactly one of ``members`` and ``concept``."""
        if (options.get("members") is None) == (not options.get("concept")):
            raise ConfigError("kind 'slice_shift' needs exactly one of members (a file) and concept")

    def prepare(self, cc: CheckContext) -> None:
        """Read the slice, map the probe's classes to the model's outputs, find the comparable images."""
        probe, o = cc.run.data, self.spec.options
        if not probe.has_labels:
            raise DataError(f"check {self.spec.id!r}: slice_shift needs a labelled probe set ({probe.root})")
        self.target = cc.target_index()
        if o["members"] is not None:
            self.member = read_members(o["members"], probe.ids)
        else:
            column = probe.concept_index(o["concept"])  # raises without a concept table
            assert probe.concepts is not None
            self.member = probe.concepts[:, column].astype(bool)
        if not self.member.any():
            raise DataError(f"check {self.spec.id!r}: the slice has no image in {probe.root}")
        names = list(cc.run.handle.class_names or probe.class_names or ())
        missing = [c for c in probe.class_names or () if c not in names]
        if missing:
            raise DataError(f"check {self.spec.id!r}: probe classes not among the model's: {', '.join(missing[:5])}")
        self.labels = np.array([names.index(probe.class_names[y]) for y in probe.labels], np.int64)
        self.eligible = np.flatnonzero(np.isin(self.labels, np.unique(self.labels[self.member])))

    def _sample(self, cc: CheckContext) -> np.ndarray:
        """Up to half of ``max_images`` members, the rest reference images, in a seeded random order.

        Sampling the two groups separately keeps them balanced without biasing a class's member or
        reference mean; the random order means a sample cut by the time budget is still random.
        """
        member = self.member[self.eligible]
        members, others = cc.sample(self.eligible[member]), cc.sample(self.eligible[~member])
        k = min(len(members), max(1, self.spec.max_images // 2))
        chosen = np.concatenate([members[:k], others[: max(0, self.spec.max_images - k)]])
        return chosen[cc.rng("order").permutation(chosen.size)]

    def measure(self, cc: CheckContext) -> Measurement:
        """Forward the slice's classes, compare members with class-mates."""
        indices = self._sample(cc)
        prep = cc.run.handle.require_preprocessing()
        done, probs = [], []
        for chunk, images in cc.batches(indices, cc.run.batch_size):
            logits = forward_logits(cc, prep.to_unit_tensor(images).to(cc.run.device))
            probs.append(torch.softmax(logits.double(), 1).numpy())
            done.append(np.asarray(chunk))
        idx = np.concatenate(done) if done else np.zeros(0, np.int64)
        p = np.concatenate(probs) if probs else np.zeros((0, 1))
        member, labels = self.member[idx], self.labels[idx]
        sd = stratified_difference(p[:, self.target] if p.size else np.zeros(0), member, labels,
                                   confidence=cc.defaults.ci, min_group=self.spec.options["min_group"])
        if not sd.defined:
            raise DataError(f"check {self.spec.id!r}: no class has {self.spec.options['min_group']} members and "
                            f"{self.spec.options['min_group']} other images in the sample of {len(idx)}")
        error = (p.argmax(1) != labels).astype(np.float64)
        gap = stratified_difference(error, member, labels, confidence=cc.defaults.ci,
                                    min_group=self.spec.options["min_group"])
        m = Measurement(
            effect=float(sd.effect[0]), ci=(float(sd.ci_low[0]), float(sd.ci_high[0])), p=float(sd.p[0]),
            n=sd.n_member, n_planned=int(self.member[indices].sum()), se=float(sd.se[0]), unit=_UNIT,
            truncated=len(idx) < len(indices),
            test={"name": "Welch t-test, one-sided (effect > 0), stratified by class", "t": float(sd.t[0]),
                  "df": float(sd.df[0])},
        )
        m.metrics["error_gap"] = metric(gap.effect[0], (gap.ci_low[0], gap.ci_high[0]), n=gap.n_member,
                                        unit="error rate (fraction)", higher_is_better=False)
        names = list(cc.run.handle.class_names or cc.run.data.class_names or ())
        stats = sd.column(0)
        for s in stats["strata"]:
            s["class"] = names[s["stratum"]] if s["stratum"] < len(names) else str(s["stratum"])
        m.details.update({"slice_size": int(self.member.sum()), "n_reference": sd.n_reference,
                          "strata": stats["strata"],
                          "source": "members file" if self.spec.options["members"] is not None else "concept"})
        m.notes.append("observational: members vs class-mates; a slice chosen on these images for this model is "
                       "optimistic here, and a valid test for other models")
        return m
