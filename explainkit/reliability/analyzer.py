"""``reliability``: which unit labels to trust — INVERT vs Network Dissection, probe-set sensitivity, learnability.

Per batch the same state as Network Dissection's is mapped from the runner's shared pass (unit maps →
mergeable tally state, spatial means for INVERT; :mod:`~explainkit.dissect.stream`). At the end, for every layer:

* INVERT (held-out confirmed, as the ``invert`` analyzer does) and Network Dissection label the units
  on the whole probe set (Network Dissection only when the probe set has mask folders), side by side
  with their evidence and agreement (:mod:`~explainkit.reliability.agreement`);
* both labellings are repeated on bootstrap resamples of the probe set (label stability), and on a
  second probe set when one is given (computed before the first batch, every worker);
* a linear probe per concept measures whether the concept can be decoded from the layer
  (:mod:`~explainkit.reliability.learnability`);
* a label is **unreliable** when its concept cannot be decoded from the layer, or when fewer than
  half of the resamples reproduce it.

JSON section (``data``): ``learnability`` (layer × concept probes), ``layers`` (per layer: agreement
of the two methods and of the two probe sets; per unit: each method's label and evidence, its
stability with CI and alternatives, the second probe set's label, reliability flags, agreement).
A composite family: it imports the ``dissect`` and ``invert`` libraries (the layer above the families).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from explainkit.adapters.activations import build_poolers, check_layers, layer_names
from explainkit.analyzers.base import Finding, RunContext, Section
from explainkit.analyzers.metric import metric
from explainkit.data.probe import ProbeSet
from explainkit.dissect.analyzer import UnitMapAnalyzer
from explainkit.dissect.masks import MaskReader, mask_sources
from explainkit.dissect.stream import DissectRunState, label_layer, stream_probe
from explainkit.errors import ConfigError
from explainkit.invert.api import label_neurons
from explainkit.invert.concepts import ConceptMatrix
from explainkit.invert.significance import stratified_split, validate_decision
from explainkit.options import Option
from explainkit.reliability.agreement import compare_labels
from explainkit.reliability.learnability import linear_probe
from explainkit.reliability.stability import (
    bootstrap_indices,
    dissect_bootstrap_labels,
    invert_bootstrap_labels,
    label_stability,
    probe_agreement,
)
from explainkit.report.jsonify import jsonable
from explainkit.stats import benjamini_hochberg

__all__ = ["LabelReliability"]

_METHODS = ("invert", "dissect")


class LabelReliability(UnitMapAnalyzer):
    """Probe-set sensitivity and concept learnability of INVERT and Network Dissection labels.

    Parameters
    ----------
    layer : str or list of str, optional
        Layer(s) with spatial maps. Default: the run's ``--layer``, else the last spatial layer.
    resamples : int
        Bootstrap resamples of the probe set for label stability.
    second_probe : str, optional
        Folder of a second probe set with the same concepts: labels are compared unit by unit.
    invert_length : int
        INVERT's formula length (1: single concepts, comparable with Network Dissection).
    quantile, iou_threshold : float
        Network Dissection's parameters (reference 0.005 and 0.04).
    concepts : list of str, optional
        Concepts for Network Dissection (default: every table column and mask folder).
    regions : dict of str to str, optional
        Concept → mask folder it covers (see the ``dissect`` analyzer).
    folds : int
        Cross-validation folds of the linear probes.
    min_balanced_accuracy : float
        A concept is decodable when the probe's balanced-accuracy CI lies above this (and q < alpha).
    min_stability : float
        A label reproduced by fewer resamples than this share is flagged.
    alpha : float
        False discovery rate (probe tests over layers × concepts; INVERT's labels over units).
    confirm_fraction, auroc_floor : float
        INVERT's held-out split and acceptance floor.
    """

    name = "reliability"
    title = "Label reliability: INVERT vs Network Dissection, probe-set sensitivity, concept learnability"
    summary = ("INVERT and Network Dissection labels side by side with their agreement, their bootstrap / "
               "second-probe stability, and the linear-probe learnability of their concepts")
    requires = frozenset({"module_hooks", "concepts"})
    options: ClassVar[Mapping[str, Option]] = {
        "layer": Option("str", many=True, or_one=True,
                        help="layer(s) with spatial maps (default: the run's --layer, else the model's)"),
        "resamples": Option("int", low=1, help="bootstrap resamples of the probe set for label stability"),
        "second_probe": Option("dir", help="folder of a second probe set with the same concepts"),
        "invert_length": Option("int", low=1, help="INVERT's formula length (1: single concepts)"),
        "quantile": Option("float", low=0, high=0.5, low_open=True, high_open=True,
                           help="Network Dissection's top activation share"),
        "iou_threshold": Option("float", low=0, high=1, high_open=True, help="Network Dissection's label IoU"),
        "concepts": Option("str", many=True, help="concepts for Network Dissection (default: all)"),
        "regions": Option("mapping", help="concept -> mask folder it covers ('~folder': the complement)"),
        "folds": Option("int", low=2, help="cross-validation folds of the linear probes"),
        "min_balanced_accuracy": Option("float", low=0, high=1,
                                        help="a concept is decodable when the probe's balanced-accuracy CI is above"),
        "min_stability": Option("float", low=0, high=1, help="labels reproduced by fewer resamples are flagged"),
        "alpha": Option("float", low=0, high=1, low_open=True, high_open=True,
                        help="false discovery rate (probes over layers x concepts; labels over units)"),
        "confirm_fraction": Option("float", low=0, high=1, low_open=True, high_open=True,
                                   help="INVERT's held-out share"),
        "auroc_floor": Option("float", low=0.5, high=1, help="INVERT accepts a label whose held-out CI clears this"),
    }

    def __init__(self, layer: str | list[str] | None = None, resamples: int = 50, second_probe: str | None = None,
                 invert_length: int = 1, quantile: float = 0.005, iou_threshold: float = 0.04,
                 concepts: list[str] | None = None, regions: dict[str, str] | None = None, folds: int = 5,
                 min_balanced_accuracy: float = 0.6, min_stability: float = 0.5, alpha: float = 0.05,
                 confirm_fraction: float = 0.4, auroc_floor: float = 0.75) -> None:
        self.layer = layer
        self.resamples = resamples
        self.second_probe = second_probe
        self.invert_length = invert_length
        self.quantile = quantile
        self.iou_threshold = iou_threshold
        self.concepts = concepts
        self.regions = regions
        self.folds = folds
        self.min_balanced_accuracy = min_balanced_accuracy
        self.min_stability = min_stability
        self.alpha = alpha
        self.confirm_fraction = confirm_fraction
        self.auroc_floor = auroc_floor

    # -- setup -------------------------------------------------------------------------------
    def validate(self, ctx: RunContext) -> None:
        """Cross-parameter rules; mask sources and layers must resolve."""
        try:
            validate_decision(self.alpha, self.auroc_floor, 0.95, self.confirm_fraction)
            if ctx.data.mask_names():
                mask_sources(ctx.data, self.concepts, self.regions)
            check_layers(ctx.handle, self.layer, ctx.layer)
        except ConfigError as exc:
            raise ConfigError(f"reliability: {exc}") from None

    def prepare(self, ctx: RunContext) -> None:
        """Resolve layers and mask sources; read and label the second probe set if one is given."""
        self.poolers_ = build_poolers(ctx.handle, layer_names(ctx.handle, self.layer, ctx.layer))
        self.dissect_ = bool(ctx.data.mask_names())
        self.sources_ = mask_sources(ctx.data, self.concepts, self.regions) if self.dissect_ else []
        prep = ctx.handle.require_preprocessing()
        self.reader_ = MaskReader(ctx.data, prep, self.sources_)
        self.second_ = None
        second = self._second_probe(ctx)
        if second is not None:
            reader = MaskReader(second, prep, mask_sources(second, [s.concept for s in self.sources_], self.regions)
                                if self.dissect_ else [])
            state = stream_probe(ctx.handle, second, self.poolers_, reader, self.quantile, ctx.batch_size)
            self.second_ = {layer: self._labels(ctx, second, state, reader, layer)[0] for layer in self.poolers_}

    def _second_probe(self, ctx: RunContext) -> ProbeSet | None:
        if self.second_probe is None:
            return None
        second = ProbeSet.from_folder(Path(self.second_probe))
        missing = [c for c in ctx.data.concept_names if c not in second.concept_names]
        if self.dissect_:
            missing += [s.concept for s in self.sources_ if s.kind == "pixels" and s.folder not in second.mask_names()]
        if missing:
            raise ConfigError(f"reliability: the second probe set lacks concept(s) {', '.join(missing)}")
        return second

    # -- labelling (shared by both probe sets) ------------------------------------------------
    def _labels(self, ctx: RunContext, probe: ProbeSet, state: DissectRunState, reader: MaskReader, layer: str
                ) -> tuple[dict[str, list[str | None]], dict[str, Any]]:
        """Full-probe labels per method (accepted INVERT formulas, confirmed ND labels) and what they came from.

        ``detail["concepts"][method][u]`` lists the concepts the unit's candidate label uses positively.
        """
        idx = state.pooled.indices()
        acts = state.pooled.stacked(f"act:{layer}").astype(np.float64)
        table = ConceptMatrix(probe.concepts[idx], probe.concept_names)
        seed = int(ctx.rng(self.name, "split").integers(0, 2**31))
        inv = label_neurons(acts, table, length=self.invert_length, split=stratified_split(
            table.row_keys(), self.confirm_fraction, seed), alpha=self.alpha, auroc_floor=self.auroc_floor)
        labels = {"invert": [r.best.formula if r.best is not None and r.accepted else None for r in inv]}
        used = {"invert": [[name for _, name, negated in r.best.terms if not negated] if r.best is not None else []
                           for r in inv]}
        detail: dict[str, Any] = {"acts": acts, "table": probe.concepts[idx], "invert": inv, "concepts": used}
        if self.dissect_:
            counts, nd = label_layer(state, layer, [s.concept for s in reader.sources], quantile=self.quantile,
                                     iou_threshold=self.iou_threshold, alpha=self.alpha)
            labels["dissect"] = [u.label if u.confirmed else None for u in nd]
            used["dissect"] = [[u.label] if u.label is not None else [] for u in nd]
            detail.update(tally=counts, dissect=nd)
        return labels, detail

    # -- at the end --------------------------------------------------------------------------
    def finalize(self, ctx: RunContext, state: DissectRunState) -> Section:
        """Label, resample, probe and flag every layer; build the section."""
        idx = state.pooled.indices()
        rng = ctx.rng(self.name, "bootstrap")
        boot = bootstrap_indices(idx.size, self.resamples, rng)
        names = list(ctx.data.concept_names)
        table = ctx.data.concepts[idx]
        learn = {layer: self._learnability(state.pooled.stacked(f"act:{layer}").astype(np.float64), table, names,
                                           ctx.seed) for layer in self.poolers_}
        self._decide_learnability(learn)
        layers = []
        for layer in self.poolers_:
            labels, detail = self._labels(ctx, ctx.data, state, self.reader_, layer)
            candidates = {"invert": [r.best.formula if r.best is not None else None for r in detail["invert"]]}
            stability = {"invert": label_stability(candidates["invert"], invert_bootstrap_labels(
                detail["acts"], detail["table"], names, boot, length=self.invert_length))}
            if self.dissect_:
                candidates["dissect"] = [u.label for u in detail["dissect"]]
                stability["dissect"] = label_stability(candidates["dissect"], dissect_bootstrap_labels(
                    detail["tally"], [s.concept for s in self.sources_], boot, iou_threshold=self.iou_threshold))
            record = self._layer_record(layer, labels, candidates, detail["concepts"], stability, learn[layer])
            self._side_by_side(record, labels, detail)
            layers.append(record)
        return self._section(layers, learn)

    def _side_by_side(self, record: dict[str, Any], labels: dict[str, list], detail: dict[str, Any]) -> None:
        """Each method's evidence per unit; the agreement of the two methods (when both ran)."""
        for u, r in enumerate(detail["invert"]):
            c = r.best.confirm if r.best is not None else None
            record["units"][u]["invert"]["evidence"] = None if c is None else metric(
                c.auroc, (c.ci_low, c.ci_high), n=c.n, unit="AUROC (held-out)", higher_is_better=True, p=c.p, q=r.q,
                ci_method="DeLong")
        if not self.dissect_:
            record["methods_agreement"] = record["methods_counts"] = None
            return
        n = int(detail["tally"].images.size)
        for u, d in enumerate(detail["dissect"]):
            record["units"][u]["dissect"]["evidence"] = metric(
                d.iou, (d.ci_low, d.ci_high), n=n, unit="IoU", higher_is_better=True, p=d.p_selection, q=d.q,
                ci_method="delta method over images")
        cmp = compare_labels(labels["dissect"], labels["invert"],
                             [c if lab is not None else [] for c, lab in zip(detail["concepts"]["invert"],
                                                                              labels["invert"])])
        for row, outcome in zip(record["units"], cmp["outcomes"]):
            row["agreement"] = outcome
        record["methods_agreement"], record["methods_counts"] = cmp["agreement"], cmp["counts"]

    def _learnability(self, acts: np.ndarray, table: np.ndarray, names: list[str], seed: int
                      ) -> list[dict[str, Any]]:
        out = []
        for c, name in enumerate(names):
            res = linear_probe(acts, table[:, c], folds=self.folds, seed=seed)
            if res is None:
                out.append({"concept": name, "balanced_accuracy": None, "auroc": None, "q": None, "decodable": None,
                            "reason": f"fewer than {self.folds} images with or without the concept"})
                continue
            out.append({"concept": name,
                        "balanced_accuracy": metric(res.balanced_accuracy, (res.ci_low, res.ci_high), n=res.n,
                                                    unit="balanced accuracy (out-of-fold)", higher_is_better=True,
                                                    n_positive=res.n_positive, ci_method="percentile bootstrap"),
                        "auroc": metric(res.auroc, (res.auroc_ci_low, res.auroc_ci_high), n=res.n,
                                        unit="AUROC (out-of-fold decision values)", higher_is_better=True, p=res.p,
                                        ci_method="DeLong", test="one-sided Mann-Whitney U"),
                        "q": None, "decodable": None, "reason": None})
        return out

    def _decide_learnability(self, learn: dict[str, list[dict[str, Any]]]) -> None:
        cells = [c for rows in learn.values() for c in rows if c["auroc"] is not None]
        q = benjamini_hochberg(np.array([c["auroc"]["p"] for c in cells]))
        for c, qv in zip(cells, q):
            c["q"] = float(qv)
            low = c["balanced_accuracy"]["ci_low"]
            c["decodable"] = bool(qv < self.alpha and low is not None and low > self.min_balanced_accuracy)

    def _layer_record(self, layer: str, labels: dict[str, list], candidates: dict[str, list], used: dict[str, list],
                      stability: dict[str, list], learn: list[dict[str, Any]]) -> dict[str, Any]:
        """Per unit and method: the label, the candidate the stability refers to, flags."""
        decodable = {c["concept"]: c["decodable"] for c in learn}
        units = []
        for u in range(len(labels["invert"])):
            row: dict[str, Any] = {"unit": u, "agreement": None}
            for method in labels:
                label = labels[method][u]
                stab = stability[method][u]
                concepts = used[method][u]
                undecodable = [c for c in concepts if decodable.get(c) is False]
                reasons = []
                if undecodable:
                    reasons.append(f"concept(s) {', '.join(undecodable)} cannot be decoded from the layer")
                if label is not None and stab["value"] is not None and stab["value"] < self.min_stability:
                    reasons.append(f"only {100 * stab['value']:.0f}% of the resamples reproduce it")
                second = self.second_[layer][method][u] if self.second_ is not None else None
                row[method] = {
                    "label": label, "candidate": candidates[method][u],
                    "stability": {**stab, "unit": "share of bootstrap resamples giving the candidate label",
                                  "higher_is_better": True, "ci_method": "Wilson (Monte-Carlo error)"},
                    "decodable": _all_decodable([decodable.get(c) for c in concepts]),
                    "second_probe_label": second,
                    "same_on_second_probe": None if self.second_ is None or label is None or second is None
                    else label == second,
                    "unreliable": bool(label is not None and reasons), "reasons": reasons if label is not None else []}
            units.append(row)
        agreement = ({m: probe_agreement(labels[m], self.second_[layer][m]) for m in labels}
                     if self.second_ is not None else None)
        return {"layer": layer, "n_units": len(units), "methods": list(labels), "units": units,
                "second_probe_agreement": agreement}

    def _section(self, layers: list[dict], learn: dict[str, list[dict]]) -> Section:
        findings = []
        counts = {}
        for layer in layers:
            for method in layer["methods"]:
                rows = [u[method] for u in layer["units"] if u[method]["label"] is not None]
                bad = [u for u in layer["units"] if u[method]["unreliable"]]
                stab = [r["stability"]["value"] for r in rows if r["stability"]["value"] is not None]
                counts[f"{layer['layer']}/{method}"] = {"labels": len(rows), "unreliable": len(bad),
                                                        "mean_stability": float(np.mean(stab)) if stab else None}
                if bad:
                    examples = ", ".join(f"unit {u['unit']} '{u[method]['label']}' ({u[method]['reasons'][0]})"
                                         for u in bad[:3])
                    findings.append(Finding(
                        "warning", f"{len(bad)} of {len(rows)} {method} labels of layer '{layer['layer']}' are "
                        f"unreliable; e.g. {examples}", self.name,
                        {"layer": layer["layer"], "method": method, "units": [u["unit"] for u in bad]}))
            agree = layer["methods_agreement"]
            if agree and agree["n"]:
                c = layer["methods_counts"]
                findings.append(Finding(
                    "info", f"layer '{layer['layer']}': Network Dissection and INVERT agree on {c['agree']} of "
                    f"{agree['n']} units labelled by both ({100 * agree['value']:.0f}% [95% CI "
                    f"{100 * agree['ci_low']:.0f}, {100 * agree['ci_high']:.0f}]); {c['dissect_only']} labelled only "
                    f"by Network Dissection, {c['invert_only']} only by INVERT", self.name,
                    {"layer": layer["layer"], **c}))
        not_decodable = sorted({(layer, c["concept"]) for layer, rows in learn.items() for c in rows
                                if c["decodable"] is False})
        summary = {"labels": sum(v["labels"] for v in counts.values()),
                   "unreliable": sum(v["unreliable"] for v in counts.values()),
                   "not_decodable": len(not_decodable), "per_layer_method": counts,
                   "methods_agreement": layers[0]["methods_agreement"] if len(layers) == 1 else None}
        data = {
            "method": "INVERT and Network Dissection labels of each unit side by side; probe-set sensitivity and "
                      "concept learnability (Ramaswamy et al., CVPR 2023): labels re-derived on bootstrap resamples "
                      "of the probe set (and on a second probe set), concepts probed linearly from each layer",
            "agreement": "'agree': the confirmed Network Dissection label is a positive concept of INVERT's accepted "
                         "formula; 'differ': both labelled otherwise; 'dissect_only' / 'invert_only' / 'neither'",
            "stability": {"resamples": self.resamples, "candidate": "the full-probe label before the significance "
                          "decision (INVERT's best formula; Network Dissection's best concept above the IoU threshold)",
                          "invert": f"best formula (length <= {self.invert_length}) "
                          "searched on each whole resample", "dissect": "best IoU concept above "
                          f"{self.iou_threshold} with image weights from the resample, thresholds held at their "
                          "full-probe values", "flag_below": self.min_stability},
            "learnability": {"probe": f"logistic regression (balanced classes, standardised features), {self.folds}-"
                             "fold stratified cross-validation on the units' spatial means",
                             "decodable": f"BH q < {self.alpha} (one-sided Mann-Whitney on out-of-fold decision "
                                          f"values, over layers x concepts) and balanced-accuracy CI above "
                                          f"{self.min_balanced_accuracy}",
                             "layers": [{"layer": layer, "concepts": rows} for layer, rows in learn.items()]},
            "labels": {"invert": "accepted best formula (held-out confirmation, as the invert analyzer)",
                       "dissect": "confirmed Network Dissection label" if self.dissect_
                       else "not computed: the probe set has no mask folders"},
            "second_probe": self.second_probe,
            "layers": layers,
            "notes": "Network Dissection needs pixel masks and asks where a unit fires; INVERT needs image labels "
                     "and asks which images make it fire, so they can differ for good reasons. A label is unreliable "
                     "when its concept cannot be decoded from the layer by a linear probe, or when fewer than the "
                     "flag share of bootstrap resamples reproduce it. Network Dissection concepts that exist only as "
                     "masks have no image labels to probe (decodable: null).",
        }
        return self.section(summary=jsonable(summary), data=jsonable(data), findings=findings)


def _all_decodable(flags: list[bool | None]) -> bool | None:
    """False if any concept is not decodable, True if all are, None when unknown (no concept, or not probed)."""
    if any(f is False for f in flags):
        return False
    return True if flags and all(flags) else None
