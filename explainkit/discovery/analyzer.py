"""``discovery``: rank candidate spurious cues nobody named, with held-out statistics.

Per batch, from the runner's shared pass: the pooled embedding of one layer (recorded in that pass,
:meth:`~explainkit.analyzers.base.Analyzer.pass_request`), the logits, simple image properties and,
when object masks exist, where the Grad-CAM map of the predicted class (at the embedding layer)
falls relative to the object (one extra forward and backward for those images). At the end the probe
set is split (seeded, stratified on class and concept row) into a discovery half, on which every
choice is made (clusters, INVERT labels, each slice's target class, which slices go on), and a
confirmation half on which the chosen candidates are tested
(:mod:`explainkit.discovery.candidates`).

JSON section (``data``):

* ``candidates``: best first; each with ``id``, ``cue``, ``source`` (``concept``, ``cluster``,
  ``attribution``, ``invert``), ``target_class``, ``effect`` (probability of the target class,
  members minus their class-mates, on the confirmation split), ``ci``, ``ci_simultaneous``, ``p``,
  ``p_adj``, ``significant``, ``members`` (probe-relative paths, both splits), the error-rate and
  target-prediction gaps, per-stratum sufficient statistics, a description, related candidates
  and concept matches.
* ``per_image``: ids, split, label, prediction, and the probability of every target class named
  by a candidate (so that two reports can be compared without the model).
* ``sources``: what each source screened, or why it did not run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from explainkit.adapters.activations import LOGITS, Pooler
from explainkit.adapters.layers import default_layer, resolve_layer
from explainkit.analyzers.base import Analyzer, Batch, Finding, PassRequest, RecordState, RunContext, Section
from explainkit.analyzers.metric import metric
from explainkit.cam.api import cam
from explainkit.discovery.attribution import outside_attribution
from explainkit.discovery.candidates import SOURCE_ORDER, Candidate, confirm, rank, screen, simultaneous_ci
from explainkit.discovery.properties import describe_contrast, image_properties
from explainkit.discovery.slices import (
    Slice,
    attribution_slices,
    cluster_slices,
    concept_slices,
    unit_slices,
)
from explainkit.errors import ConfigError, DataError
from explainkit.invert.significance import stratified_split
from explainkit.options import Option
from explainkit.report.images import thumbnail, to_data_uri
from explainkit.report.jsonify import jsonable
from explainkit.stats import StratifiedDifference

__all__ = ["SOURCES", "Discovery"]

#: Candidate sources, in the order they are reported.
SOURCES = ("concept", "cluster", "attribution", "invert")
CORRECTIONS = ("holm", "bh", "by")
OBJECT_MASK = "object"
_THUMB_PX = 64
_EFFECT_UNIT = "probability of the target class"


class Discovery(Analyzer):
    """Candidate spurious cues from concept columns, embedding clusters, attribution and INVERT units.

    Parameters
    ----------
    layer : str, optional
        Embedding layer (dotted name), mean-pooled per channel. Default: the run's ``--layer``,
        else the model's last spatial layer (for CNNs the penultimate features); ``"@logits"``
        uses the logits (the only choice for models without module hooks).
    sources : list of str, optional
        Sources to run (``concept``, ``cluster``, ``attribution``, ``invert``); default: every
        source the model and the data allow. A listed source that cannot run is an error.
    tau : float
        Materiality margin in probability units: a candidate is significant only if its members'
        extra probability of the target class is shown to exceed ``tau``.
    alpha : float
        Significance level after the correction (also INVERT's false discovery rate).
    correction : {"holm", "bh", "by"}
        Multiple-comparison correction over all confirmed candidates.
    discovery_fraction : float
        Share of the images used to choose candidates; the rest confirms them.
    max_candidates : int
        Candidates carried from screening to confirmation (the size of the corrected family).
    min_group : int
        Smallest number of members and of reference images a class needs to enter a comparison
        (per split).
    clusters_per_class : int
        k of the per-class k-means.
    pca_components : int
        PCA components of the embedding before clustering.
    error_weight : float
        Weight of the predicted probabilities appended to the embedding for clustering (0: none).
    label_tolerance : float
        A concept whose share differs from 0 or 1 by at most this in every class coincides with
        the label and is not a candidate.
    duplicate_jaccard : float
        A screened slice whose discovery members overlap a better one with the same target at
        least this much (Jaccard) is merged into it.
    examples : int
        Member thumbnails per candidate in the report (plus half as many reference images).
    shown : int
        Candidates that get thumbnails.
    """

    name = "discovery"
    title = "Discovered candidate spurious cues"
    summary = "ranks candidate spurious cues (concept slices, embedding clusters, attribution, INVERT units) " \
              "with held-out tests"
    requires = frozenset({"labels"})
    run_by_default = False
    options: ClassVar[Mapping[str, Option]] = {
        "layer": Option("str", help="embedding layer, mean-pooled, or '@logits' (default: the run's --layer, else "
                                    "the last spatial layer)"),
        "sources": Option("choice", choices=SOURCES, many=True, or_one=True,
                          help="candidate sources to run (default: every source the model and data allow)"),
        "tau": Option("float", low=0, high=1, low_open=True, high_open=True,
                      help="materiality margin: significant only if the pull is shown to exceed it (probability)"),
        "alpha": Option("float", low=0, high=1, low_open=True, high_open=True,
                        help="significance level after the correction (also INVERT's false discovery rate)"),
        "correction": Option("choice", choices=CORRECTIONS, help="correction over all tested candidates"),
        "discovery_fraction": Option("float", low=0, high=1, low_open=True, high_open=True,
                                     help="share of the images used to choose candidates; the rest tests them"),
        "max_candidates": Option("int", low=1, help="candidates carried from screening to the held-out test"),
        "min_group": Option("int", low=2, help="members and reference images a class needs, per split"),
        "clusters_per_class": Option("int", low=2, help="k of the per-class k-means"),
        "pca_components": Option("int", low=1, help="PCA components of the embedding before clustering"),
        "error_weight": Option("float", low=0, help="weight of the probabilities appended when fitting centres"),
        "label_tolerance": Option("float", low=0, high=0.5, high_open=True,
                                  help="concepts within this share of a function of the label are left out"),
        "duplicate_jaccard": Option("float", low=0, high=1, low_open=True,
                                    help="Jaccard above which screened slices with one target merge"),
        "examples": Option("int", low=0, help="member thumbnails per shown candidate"),
        "shown": Option("int", low=0, help="candidates with thumbnails"),
    }

    def __init__(self, layer: str | None = None, sources: list[str] | None = None, tau: float = 0.2,
                 alpha: float = 0.05, correction: str = "holm", discovery_fraction: float = 0.5,
                 max_candidates: int = 20, min_group: int = 5, clusters_per_class: int = 3,
                 pca_components: int = 32, error_weight: float = 1.0, label_tolerance: float = 0.05,
                 duplicate_jaccard: float = 0.9, examples: int = 4, shown: int = 10) -> None:
        self.layer = layer
        self.sources = sources
        self.tau = tau
        self.alpha = alpha
        self.correction = correction
        self.discovery_fraction = discovery_fraction
        self.max_candidates = max_candidates
        self.min_group = min_group
        self.clusters_per_class = clusters_per_class
        self.pca_components = pca_components
        self.error_weight = error_weight
        self.label_tolerance = label_tolerance
        self.duplicate_jaccard = duplicate_jaccard
        self.examples = examples
        self.shown = shown

    # -- setup -------------------------------------------------------------------------------
    def _available(self, ctx: RunContext, layer: str | None) -> dict[str, str | None]:
        """Source → None when it can run with embedding ``layer`` (None: the default), else why it cannot."""
        data, caps = ctx.data, ctx.handle.capabilities
        no_concepts = "the probe set has no concept table"
        return {
            "concept": None if data.concepts is not None else no_concepts,
            "cluster": None,
            "attribution": (None if OBJECT_MASK in data.mask_names() and {"gradients", "module_hooks"} <= caps
                            and layer != LOGITS
                            else f"needs object masks (masks/{OBJECT_MASK}/), a model with gradients and module "
                                 "hooks, and a spatial embedding layer (Grad-CAM runs there)"),
            "invert": (no_concepts if data.concepts is None else
                       "no concept is marked as an artifact (descriptions.json)" if not data.artifact_concepts else
                       "needs module hooks (the embedding layer's units)" if layer == LOGITS else None),
        }

    def _wanted(self) -> tuple[str, ...] | None:
        """The sources asked for (None: all)."""
        if self.sources is None:
            return None
        return (self.sources,) if isinstance(self.sources, str) else tuple(self.sources)

    def _layer(self, ctx: RunContext) -> str | None:
        """The embedding layer asked for: the parameter, the run's ``--layer``, logits without hooks, or None."""
        hooks = "module_hooks" in ctx.handle.capabilities
        return self.layer if self.layer is not None else (ctx.layer if hooks else LOGITS)

    def validate(self, ctx: RunContext) -> None:
        """The layer must exist (and needs hooks); listed sources must be able to run."""
        layer = self._layer(ctx)
        if layer is not None and layer != LOGITS:
            if "module_hooks" not in ctx.handle.capabilities:
                raise ConfigError(f"discovery: layer {layer!r} needs module hooks, which this "
                                  f"{ctx.handle.format.value} model does not provide; use layer='@logits'")
            resolve_layer(ctx.handle.module, layer)
        if self._wanted() is not None:
            available = self._available(ctx, layer)
            blocked = [f"{s} ({available[s]})" for s in self._wanted() or () if available[s]]
            if blocked:
                raise ConfigError(f"discovery: source(s) cannot run here: {'; '.join(blocked)}")

    def prepare(self, ctx: RunContext) -> None:
        """Resolve the embedding layer and its pooler, and the sources that run."""
        layer = self._layer(ctx)
        prep = ctx.handle.require_preprocessing()
        if layer is None:
            layer = default_layer(ctx.handle.module, tuple(prep.input_size))
        module = None
        if layer != LOGITS:
            layer, module = resolve_layer(ctx.handle.module, layer)
        self.layer_ = layer
        self.pooler_ = Pooler(layer, module, pooling="mean", model=ctx.handle.module,
                              input_size=tuple(prep.input_size))
        available = self._available(ctx, layer)
        wanted = self._wanted() or SOURCES
        self.sources_ = {s: (None if s in wanted else "not requested") if available[s] is None else available[s]
                         for s in SOURCES}

    def pass_request(self, ctx: RunContext) -> PassRequest | None:
        """The embedding layer's output (mean-pooled in :meth:`map`), from the runner's shared pass."""
        return None if self.layer_ == LOGITS else PassRequest(layers=(self.layer_,))

    # -- per batch ---------------------------------------------------------------------------
    def map(self, ctx: RunContext, batch: Batch) -> RecordState:
        """Embedding, logits, image properties and (with object masks) attribution outside the object."""
        logits = batch.logits.detach().float().cpu()
        emb = logits if self.layer_ == LOGITS else self.pooler_(batch.passes["predicted"].activations[self.layer_])
        prep = ctx.handle.require_preprocessing()
        props = image_properties(prep.denormalize(batch.inputs))
        n = len(batch)
        cols: dict[str, Any] = {
            "emb": emb.float().cpu().numpy(), "logits": logits.cpu().numpy(), "label": batch.labels.numpy(),
            "props": props.numpy(),
        }
        if batch.concepts is not None:
            cols["concepts"] = batch.concepts
        if self.sources_["attribution"] is None:
            outside = np.full(n, np.nan, np.float32)
            grid = np.full((n, 9), np.nan, np.float32)
            rows, masks = [], []
            for j, i in enumerate(batch.indices):
                raw = ctx.data.mask(int(i), OBJECT_MASK)
                if raw is not None:
                    rows.append(j)
                    masks.append(torch.from_numpy(prep.resize_mask(raw)))
            if rows:
                sel = torch.as_tensor(rows)
                maps = cam(ctx.handle, batch.inputs[sel.to(batch.inputs.device)], layer=self.layer_, method="gradcam",
                           targets=logits[sel].argmax(1).tolist(), batch_size=ctx.batch_size,
                           seed=int(ctx.rng(self.name, "cam").integers(0, 2**31)))
                # a fixed-batch program pads the batch: the maps of the padding rows come last
                excess, where = outside_attribution(maps[: len(rows)].cpu(), torch.stack(masks))
                outside[rows], grid[rows] = excess.numpy(), where.numpy()
            cols["outside"], cols["grid"] = outside, grid
        return RecordState.from_batch(batch.indices, **cols)

    # -- at the end --------------------------------------------------------------------------
    def _split(self, ctx: RunContext, labels: np.ndarray, concepts: np.ndarray | None) -> np.ndarray:
        """(N,) bool discovery mask: seeded, stratified on (class, concept row)."""
        key = labels[:, None] if concepts is None else np.concatenate([labels[:, None], concepts], 1)
        strata = np.unique(key, axis=0, return_inverse=True)[1].reshape(-1)
        seed = int(ctx.rng(self.name, "split").integers(0, 2**31))
        self.split_seed_ = seed
        try:
            search, _ = stratified_split(strata, 1.0 - self.discovery_fraction, seed)
        except DataError:
            raise DataError(f"discovery: {labels.shape[0]} images are too few to split into a discovery and a "
                            "confirmation part") from None
        discovery = np.zeros(labels.shape[0], bool)
        discovery[search] = True
        return discovery

    def _slices(self, ctx: RunContext, arrays: dict[str, np.ndarray], discovery: np.ndarray
                ) -> tuple[list[Slice], dict[str, dict[str, Any]], list[dict]]:
        labels, names = arrays["label"], list(ctx.class_names)
        report: dict[str, dict[str, Any]] = {}
        slices: list[Slice] = []
        excluded: list[dict] = []
        seed = int(ctx.rng(self.name, "fit").integers(0, 2**31))
        for source in SOURCES:
            reason = self.sources_[source]
            if reason is not None:
                report[source] = {"ran": False, "reason": reason, "slices": 0}
                continue
            extra: dict[str, Any] = {}
            if source == "concept":
                found, excluded = concept_slices(arrays["concepts"], ctx.data.concept_names, labels,
                                                 tolerance=self.label_tolerance)
            elif source == "cluster":
                found = cluster_slices(arrays["emb"], arrays["probs"], labels, discovery, names,
                                       clusters=self.clusters_per_class, n_components=self.pca_components,
                                       error_weight=self.error_weight, min_size=self.min_group, seed=seed)
            elif source == "attribution":
                found = attribution_slices(arrays["outside"], arrays["grid"], labels, discovery, names)
                extra["images_with_object_mask"] = int(np.isfinite(arrays["outside"]).sum())
            else:
                found, units = unit_slices(arrays["emb"], arrays["concepts"], ctx.data.concept_names,
                                           ctx.data.artifact_concepts, discovery, layer=self.layer_, alpha=self.alpha,
                                           seed=seed)
                found = _one_per_formula(found)
                extra["artifact_units"] = units
            report[source] = {"ran": True, "reason": None, "slices": len(found), **extra}
            slices.extend(found)
        return slices, report, excluded

    def finalize(self, ctx: RunContext, state: RecordState) -> Section:
        """Split, build slices, screen, confirm, correct, rank; write the section."""
        idx = state.indices()
        arrays = {k: state.stacked(k) for k in state.records[int(idx[0])]}
        logits = arrays["logits"].astype(np.float64)
        z = logits - logits.max(1, keepdims=True)
        probs = np.exp(z)
        arrays["probs"] = probs / probs.sum(1, keepdims=True)
        labels = arrays["label"].astype(np.int64)
        arrays["label"] = labels
        concepts = arrays.get("concepts")
        if concepts is not None:
            concepts = arrays["concepts"] = concepts.astype(bool)
        names = list(ctx.class_names) + [str(k) for k in range(len(ctx.class_names), logits.shape[1])]
        discovery = self._split(ctx, labels, concepts)
        slices, sources, excluded = self._slices(ctx, arrays, discovery)
        screened = screen(slices, arrays["probs"], labels, discovery, names, tau=self.tau, min_group=self.min_group,
                          max_candidates=len(slices))
        screened, merged = _merge_duplicates(screened, discovery, self.duplicate_jaccard)
        for source in sources.values():
            source["screened_in"] = 0
        for c in screened:
            sources[c.slice.source]["screened_in"] += 1
        chosen = screened[: self.max_candidates]
        candidates = rank(confirm(chosen, arrays["probs"], labels, ~discovery, tau=self.tau, min_group=self.min_group,
                                  alpha=self.alpha, correction=self.correction))
        ids = [ctx.data.ids[int(i)] for i in idx]
        records, assets = [], {}
        for r, c in enumerate(candidates, start=1):
            _name_slice(c.slice, arrays["props"], discovery)
            rec = self._record(r, c, len(candidates), ids, arrays, discovery, ctx)
            if r <= self.shown and self.examples:
                rec["examples"] = self._examples(ctx, idx, r, c, arrays["probs"], labels, ~discovery, assets)
            records.append(rec)
        return self._section(ctx, records, candidates, sources, excluded, merged, discovery, ids, arrays, names,
                             len(chosen), len(screened), assets)

    def _record(self, rank_: int, c: Candidate, m: int, ids: list[str], arrays: dict[str, np.ndarray],
                discovery: np.ndarray, ctx: RunContext) -> dict[str, Any]:
        t = c.test
        assert t is not None and c.error_gap is not None and c.target_rate_gap is not None
        member = c.slice.member
        ref = c.slice.eligible & ~member
        rec = {
            "rank": rank_, "id": c.key, "cue": c.slice.cue, "source": c.slice.source, "group": c.group,
            "group_lead": c.group_lead,
            "target_class": c.target_name, "significant": c.significant,
            "effect": float(t.effect[0]), "ci": [float(t.ci_low[0]), float(t.ci_high[0])],
            "ci_simultaneous": list(simultaneous_ci(c, m, 1.0 - t.confidence)),
            "p": float(t.p[0]), "p_adj": c.p_adj, "correction": self.correction, "tau": self.tau,
            "n_members": t.n_member, "n_reference": t.n_reference,
            "test": {"name": "one-sided Welch t-test of effect > tau, stratified by class, on the confirmation split",
                     "t": float(t.t[0]), "df": float(t.df[0])},
            "error_gap": _gap(c.error_gap, "error rate (fraction)"),
            "target_rate_gap": _gap(c.target_rate_gap, "fraction predicted as the target class"),
            "confirmation": t.column(0), "discovery": c.screen,
            "description": describe_contrast(arrays["props"], member & discovery, ref & discovery),
            "matches": _concept_matches(member, c.slice.eligible, arrays.get("concepts"), ctx.data.concept_names),
            "related": c.related, "evidence": c.slice.evidence,
            "n_members_total": int(member.sum()), "members": [ids[i] for i in np.flatnonzero(member)],
            "examples": None, "checks": [],
        }
        for strat in (rec["confirmation"]["strata"], rec["discovery"]["strata"]):
            for s in strat:
                s["class"] = ctx.class_names[s["stratum"]] if s["stratum"] < len(ctx.class_names) else str(s["stratum"])
        return rec

    def _examples(self, ctx: RunContext, idx: np.ndarray, r: int, c: Candidate, probs: np.ndarray,
                  labels: np.ndarray, confirmation: np.ndarray, assets: dict[str, str]) -> dict[str, list[dict]]:
        """Confirmation members with the highest target probability, and class-mates without the cue."""
        p = probs[:, c.target]
        member = c.slice.member & confirmation
        members = np.flatnonzero(member)[np.argsort(-p[member], kind="stable")][: self.examples]
        ref = c.slice.eligible & ~c.slice.member & confirmation & np.isin(labels, labels[members])
        reference = np.flatnonzero(ref)[np.argsort(p[ref], kind="stable")][: max(1, self.examples // 2)]
        out: dict[str, list[dict]] = {"members": [], "reference": []}
        for group, rows in (("members", members), ("reference", reference)):
            for j, row in enumerate(rows):
                key = f"c{r}/{group}/{j}"
                image = ctx.data.load_image(int(idx[row]))
                assets[key] = to_data_uri(thumbnail(image, _THUMB_PX), "jpeg", quality=85)
                out[group].append({"asset": key, "id": ctx.data.ids[int(idx[row])], "p_target": float(p[row])})
        return out

    def _section(self, ctx: RunContext, records: list[dict], candidates: list[Candidate],
                 sources: dict[str, dict], excluded: list[dict], merged: list[dict], discovery: np.ndarray,
                 ids: list[str], arrays: dict[str, np.ndarray], names: list[str], n_tested: int, n_screened: int,
                 assets: dict[str, str]) -> Section:
        significant = [r for r in records if r["significant"]]
        findings = [Finding(
            "warning",
            f"candidate spurious cue '{r['cue']}' ({r['source']}): its images get {r['effect']:+.2f} "
            f"[95% CI {r['ci'][0]:.2f}, {r['ci'][1]:.2f}] more probability of '{r['target_class']}' than images of "
            f"the same class without it ({r['correction']}-adjusted p = {r['p_adj']:.2g}, test of > tau {self.tau:g}; "
            f"n = {r['n_members']} held-out images; cue group {r['group']})",
            self.name, {"candidate": r["id"], "effect": r["effect"], "ci": r["ci"], "p_adj": r["p_adj"]},
        ) for r in significant if r["group_lead"]][:5]
        top = records[0] if records else None
        targets = sorted({c.target for c in candidates})
        probs = arrays["probs"]
        summary = {
            "candidates": len(records), "significant": len(significant),
            "top_cue": top["cue"] if top else None,
            "top_effect": metric(top["effect"], tuple(top["ci"]), n=top["n_members"], unit=_EFFECT_UNIT,
                                 higher_is_better=False, p_adj=top["p_adj"]) if top else None,
        }
        data = {
            "method": "sample-split slice discovery: candidates are built and screened on a discovery split and "
                      "tested on the held-out confirmation split",
            "effect_definition": {
                "unit": _EFFECT_UNIT, "higher_is_better": False,
                "definition": "members' mean probability of the target class minus that of images of the same "
                              "class that are not members, averaged over classes with the members' weights "
                              "(confirmation split)",
                "tau": self.tau,
                "test": "one-sided Welch t-test (Satterthwaite df) of effect > tau",
                "ci": "95% t interval; ci_simultaneous: Bonferroni over the tested candidates",
            },
            "correction": self.correction, "alpha": self.alpha,
            "split": {"n_discovery": int(discovery.sum()), "n_confirmation": int((~discovery).sum()),
                      "seed": self.split_seed_, "stratified_on": "class and concept-table row",
                      "discovery_fraction": self.discovery_fraction},
            "embedding": {"layer": self.layer_, "representation": self.pooler_.describe() if self.layer_ != LOGITS
                          else {"layer": LOGITS, "kind": "logits"}, "dim": int(arrays["emb"].shape[1])},
            "sources": sources, "excluded_concepts": excluded, "merged": merged,
            "screening": {"slices": sum(s["slices"] for s in sources.values()), "passed": n_screened,
                          "tested": n_tested, "testable": len(records),
                          "rule": "discovery effect > tau, best discovery statistic first, near-duplicates "
                                  "(Jaccard >= duplicate_jaccard, same target) merged"},
            "candidates": records,
            "per_image": {
                "ids": ids, "split": ["discovery" if d else "confirmation" for d in discovery],
                "label": [names[int(y)] if y >= 0 else None for y in arrays["label"]],
                "pred": [names[int(k)] for k in probs.argmax(1)],
                "prob": {names[t]: np.round(probs[:, t], 6).tolist() for t in targets},
            },
            "notes": "effects, CIs and p-values come from the confirmation split only; members lists every image "
                     "of the slice (both splits). A candidate is a hypothesis for an interventional check "
                     "(policy.toml), not proof of reliance.",
        }
        return self.section(summary=jsonable(summary), data=jsonable(data), findings=findings, assets=assets)


def _gap(sd: StratifiedDifference, unit: str) -> dict[str, Any]:
    return metric(sd.effect[0], (sd.ci_low[0], sd.ci_high[0]), n=sd.n_member, unit=unit, higher_is_better=False,
                  definition="members minus class-mates (confirmation split), weighted by members")


def _one_per_formula(slices: list[Slice]) -> list[Slice]:
    """Keep, per INVERT formula, the unit with the highest held-out AUROC (the others are listed with it)."""
    best: dict[str, Slice] = {}
    for s in slices:
        f = s.evidence["formula"]
        keep = best.get(f)
        if keep is None or (s.evidence["auroc_held_out"] or 0) > (keep.evidence["auroc_held_out"] or 0):
            best[f] = s
    for f, s in best.items():
        s.evidence["units_with_this_label"] = [x.evidence["unit"] for x in slices if x.evidence["formula"] == f]
    return list(best.values())


def _merge_duplicates(candidates: list[Candidate], discovery: np.ndarray, threshold: float
                      ) -> tuple[list[Candidate], list[dict]]:
    """Merge screened candidates whose discovery members nearly coincide (Jaccard >= threshold, same target).

    Of two such candidates the named one survives (concept, then INVERT unit, then attribution, then
    cluster), else the one with the better discovery statistic (the earlier one).
    """
    kept: list[Candidate] = []
    merged = []
    for c in candidates:
        a = c.slice.member & discovery
        twin = None
        for k in kept:
            b = k.slice.member & discovery
            union = int((a | b).sum())
            if k.target == c.target and union and int((a & b).sum()) / union >= threshold:
                twin = k
                break
        if twin is None:
            kept.append(c)
        elif SOURCE_ORDER.index(c.slice.source) < SOURCE_ORDER.index(twin.slice.source):
            kept[kept.index(twin)] = c
            merged.append({"candidate": twin.key, "into": c.key})
        else:
            merged.append({"candidate": c.key, "into": twin.key})
    return kept, merged


def _name_slice(s: Slice, props: np.ndarray, discovery: np.ndarray) -> None:
    """Give a cluster a descriptive name from the image properties that set it apart (discovery split)."""
    if s.source != "cluster":
        return
    described = describe_contrast(props, s.member & discovery, s.eligible & ~s.member & discovery)
    phrases = ", ".join(d["phrase"] for d in described)
    cls, k = s.evidence["class"], s.evidence["cluster"]
    s.cue = f"{cls}: {phrases} (cluster {k})" if phrases else f"{cls} cluster {k}"


def _concept_matches(member: np.ndarray, eligible: np.ndarray, concepts: np.ndarray | None,
                     names: tuple[str, ...], top: int = 3) -> list[dict[str, Any]]:
    """Concept columns that best match the slice among its eligible images (precision, recall, F1)."""
    if concepts is None:
        return []
    m = member[eligible]
    c = concepts[eligible]
    hits = (c & m[:, None]).sum(0)
    precision = hits / max(1, int(m.sum()))
    recall = hits / np.maximum(1, c.sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    order = np.argsort(-f1, kind="stable")[:top]
    return [{"concept": names[j], "precision": float(precision[j]), "recall": float(recall[j]), "f1": float(f1[j])}
            for j in order if f1[j] >= 0.3]
