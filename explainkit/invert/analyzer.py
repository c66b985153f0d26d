"""``invert``: concept labels for every unit of a layer, tested on held-out images.

Per batch, the layer's pooled activations (N×D in all, never the feature maps) and, when the probe
set marks artifact concepts, each unit's gradient × activation toward the predicted class are
recorded. At the end, INVERT's beam search (:func:`explainkit.invert.label_neurons`) labels every
unit on a search split; labels are confirmed on a held-out split (AUROC with DeLong CI, one-sided
Mann–Whitney U, Benjamini–Hochberg over the layer's units).

JSON section (``data``), for readers such as the CI gate:

* ``layers``: per layer, ``representation`` (how activations were aggregated), ``neurons`` (best
  label, held-out AUROC metric with CI, q, ``accepted``, the whole final beam), ``histogram``.
* ``artifact_neurons``: the units whose *accepted* best label involves an artifact concept
  (``ProbeSet.artifact_concepts`` or the ``artifact_concepts`` parameter), each with ``layer``,
  ``neuron``, ``formula``, ``terms``, ``artifact_concepts``, ``auroc`` (held-out metric), ``q`` and
  ``connection`` (strength toward the output classes, in logits; ``None`` without gradients).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, ClassVar

import numpy as np

from explainkit.adapters.activations import (
    LOGITS,
    POOLINGS,
    TOKEN_OPTIONS,
    Pooler,
    batch_activations,
    build_poolers,
    check_layers,
    layer_names,
    learn_layouts,
)
from explainkit.analyzers.base import Analyzer, Batch, Finding, PassRequest, RecordState, RunContext, Section
from explainkit.analyzers.metric import metric
from explainkit.errors import ConfigError
from explainkit.invert.api import NeuronResult, label_neurons
from explainkit.invert.concepts import ConceptMatrix
from explainkit.invert.connection import batch_contributions, class_connection
from explainkit.invert.search import MODES, SearchParams
from explainkit.invert.significance import stratified_split, validate_decision
from explainkit.options import Option
from explainkit.report.images import thumbnail, to_data_uri
from explainkit.report.jsonify import jsonable

__all__ = ["Invert"]

_THUMB_PX = 56
_HIST_BINS = 20


class Invert(Analyzer):
    """INVERT neuron labels with held-out significance and artifact evidence.

    Parameters
    ----------
    layer : str or list of str, optional
        Layer(s) to label (dotted names, or ``"@logits"``). Default: the run's ``--layer``, else the
        model's last spatial layer (for CNNs the penultimate features, mean-pooled per channel).
    pooling : {"mean", "max"}
        Spatial aggregation of conv maps (recorded per layer).
    tokens : {"cls", "mean"}
        Aggregation of ViT token sequences: the CLS token or the mean of the patch tokens.
    length, beam, min_fraction, max_fraction, mode, limit_search
        INVERT's search parameters (reference defaults 3, 3, 0, 0.5, "positive", all candidates).
    dedupe : bool
        Drop beam formulas with the same mask as a better one (``False``: the reference's output).
    confirm_fraction : float
        Share of the probe images held out to confirm labels (stratified on concept patterns).
    alpha : float
        Benjamini–Hochberg false discovery rate over a layer's units.
    auroc_floor : float
        Accept a label only if its held-out 95 % CI lies beyond this AUROC.
    artifact_concepts : list of str, optional
        Concepts that are spurious cues; default: those marked ``"artifact": true`` in the probe set.
    connection : {"gradient", "none"}
        How artifact units' strength toward the classes is measured.
    top_images : int
        Top-activating thumbnails per shown unit.
    max_image_neurons : int
        Units per layer that get thumbnails (artifact units first, then accepted ones by AUROC).
    block_size : int
        Units searched together.
    """

    name = "invert"
    title = "INVERT concept labels"
    summary = "labels units with concept formulas (INVERT), confirmed on held-out images; flags artifact units"
    requires = frozenset({"module_hooks", "concepts"})
    run_by_default = True
    options: ClassVar[Mapping[str, Option]] = {
        "layer": Option("str", many=True, or_one=True,
                        help="layer(s) to label, or '@logits' (default: the run's --layer, else the model's)"),
        "pooling": Option("choice", choices=POOLINGS, help="spatial aggregation of conv maps"),
        "tokens": Option("choice", choices=TOKEN_OPTIONS, help="aggregation of ViT tokens: CLS token or patch mean"),
        "length": Option("int", low=1, help="longest formula (terms)"),
        "beam": Option("int", low=1, help="beam width of the formula search"),
        "min_fraction": Option("float", low=0, high=1, help="smallest share of images a formula may cover"),
        "max_fraction": Option("float", low=0, high=1, help="largest share of images a formula may cover"),
        "mode": Option("choice", choices=MODES, help="label high ('positive') or low ('negative') activations"),
        "limit_search": Option("int", low=1, help="candidates kept per search step (default: all)"),
        "dedupe": Option("bool", help="drop beam formulas with the same mask as a better one"),
        "confirm_fraction": Option("float", low=0, high=1, low_open=True, high_open=True,
                                   help="share of images held out to confirm labels"),
        "alpha": Option("float", low=0, high=1, low_open=True, high_open=True,
                        help="Benjamini–Hochberg false discovery rate over a layer's units"),
        "auroc_floor": Option("float", low=0.5, high=1, help="accept a label only if its held-out CI lies beyond this"),
        "artifact_concepts": Option("str", many=True,
                                    help="concepts that are spurious cues (default: those the probe set marks)"),
        "connection": Option("choice", choices=("gradient", "none"),
                             help="how artifact units' strength toward the classes is measured"),
        "top_images": Option("int", low=0, help="top-activating thumbnails per shown unit"),
        "max_image_neurons": Option("int", low=0, help="units per layer that get thumbnails"),
        "block_size": Option("int", low=1, help="units searched together"),
    }

    def __init__(self, layer: str | list[str] | None = None, pooling: str = "mean", tokens: str = "cls",
                 length: int = 3, beam: int = 3, min_fraction: float = 0.0, max_fraction: float = 0.5,
                 mode: str = "positive", limit_search: int | None = None, dedupe: bool = True,
                 confirm_fraction: float = 0.4, alpha: float = 0.05, auroc_floor: float = 0.75,
                 artifact_concepts: list[str] | None = None, connection: str = "gradient", top_images: int = 5,
                 max_image_neurons: int = 12, block_size: int = 64) -> None:
        self.layer = layer
        self.pooling = pooling
        self.tokens = tokens
        self.length = length
        self.beam = beam
        self.min_fraction = min_fraction
        self.max_fraction = max_fraction
        self.mode = mode
        self.limit_search = limit_search
        self.dedupe = dedupe
        self.confirm_fraction = confirm_fraction
        self.alpha = alpha
        self.auroc_floor = auroc_floor
        self.artifact_concepts = artifact_concepts
        self.connection = connection
        self.top_images = top_images
        self.max_image_neurons = max_image_neurons
        self.block_size = block_size

    # -- setup -------------------------------------------------------------------------------
    def _search_params(self) -> SearchParams:
        return SearchParams(self.length, self.beam, self.min_fraction, self.max_fraction, self.mode,
                            self.limit_search, self.dedupe)

    def _artifacts(self, ctx: RunContext) -> tuple[str, ...]:
        names = self.artifact_concepts if self.artifact_concepts is not None else ctx.data.artifact_concepts
        return tuple(names)

    def validate(self, ctx: RunContext) -> None:
        """Rules across the search and decision parameters; artifact concepts and layers must exist."""
        self._search_params().validate()
        validate_decision(self.alpha, self.auroc_floor, 0.95, self.confirm_fraction)
        unknown = [c for c in self._artifacts(ctx) if c not in ctx.data.concept_names]
        if unknown:
            raise ConfigError(f"invert: artifact concept(s) {', '.join(unknown)} not in the probe set's concepts "
                              f"({', '.join(ctx.data.concept_names)})")
        check_layers(ctx.handle, self.layer, ctx.layer)

    def prepare(self, ctx: RunContext) -> None:
        """Resolve the artifact concepts and build one activation pooler per layer."""
        self.artifacts_ = self._artifacts(ctx)
        self.poolers_: dict[str, Pooler] = build_poolers(
            ctx.handle, layer_names(ctx.handle, self.layer, ctx.layer), pooling=self.pooling, tokens=self.tokens)
        self.connect_ = (self.connection == "gradient" and bool(self.artifacts_)
                         and "gradients" in ctx.handle.capabilities)

    # -- per batch ---------------------------------------------------------------------------
    def pass_request(self, ctx: RunContext) -> PassRequest | None:
        """The layers' outputs (and, for artifact connections, their gradients toward the predicted class)."""
        layers = tuple(name for name in self.poolers_ if name != LOGITS)
        return PassRequest(layers=layers, gradients=self.connect_) if layers else None

    def map(self, ctx: RunContext, batch: Batch) -> RecordState:
        """Pooled activations (and contributions toward the predicted class) of one batch.

        Read from the runner's shared pass when it recorded the layers, else from own passes.
        """
        shared = batch.passes.get("predicted")
        hooked = [name for name in self.poolers_ if name != LOGITS]
        if shared is not None and all(n in shared.activations for n in hooked) and (
                not self.connect_ or all(n in shared.gradients for n in hooked)):
            acts = {name: self.poolers_[name](shared.activations[name]).cpu().numpy() for name in hooked}
            if LOGITS in self.poolers_:
                acts[LOGITS] = self.poolers_[LOGITS](batch.logits.detach()).cpu().numpy()
            cols: dict[str, Any] = {f"act:{name}": a for name, a in acts.items()}
            if self.connect_:
                predicted = shared.classes.cpu().numpy().astype(np.int64)
                for name in hooked:
                    con = self.poolers_[name].contribution(shared.activations[name], shared.gradients[name])
                    cols[f"con:{name}"], cols[f"pred:{name}"] = con.cpu().numpy().astype(np.float32), predicted
            return RecordState.from_batch(batch.indices, **cols)
        acts = batch_activations(ctx.handle, batch.inputs, self.poolers_, logits=batch.logits)
        cols = {f"act:{name}": a for name, a in acts.items()}
        if self.connect_:
            for name, pooler in self.poolers_.items():
                if name != LOGITS:
                    cols[f"con:{name}"], cols[f"pred:{name}"] = batch_contributions(ctx.handle, batch.inputs, pooler)
        return RecordState.from_batch(batch.indices, **cols)

    def map_cache_key(self, ctx: RunContext) -> dict[str, Any]:
        """Pooled activations depend on the layers, pooling, token handling and connection only."""
        return {"layers": list(self.poolers_), "pooling": self.pooling, "tokens": self.tokens,
                "connect": self.connect_}

    # -- at the end --------------------------------------------------------------------------
    def finalize(self, ctx: RunContext, state: RecordState) -> Section:
        """Search, confirm and decide for every layer; collect artifact units; build the section."""
        idx = state.indices()
        learn_layouts(ctx.handle, self.poolers_, ctx.load_images(idx[:1]))
        table = ConceptMatrix(ctx.data.concepts[idx], ctx.data.concept_names)
        seed = int(ctx.rng(self.name, "split").integers(0, 2**31))
        search_idx, confirm_idx = stratified_split(table.row_keys(), self.confirm_fraction, seed)
        layers, artifact_neurons, assets = [], [], {}
        for li, (name, pooler) in enumerate(self.poolers_.items()):
            acts = state.stacked(f"act:{name}").astype(np.float32)
            neuron_names = None
            if name == LOGITS and len(ctx.class_names) == acts.shape[1]:
                neuron_names = list(ctx.class_names)
            results = label_neurons(
                acts, table, length=self.length, beam=self.beam, min_fraction=self.min_fraction,
                max_fraction=self.max_fraction, mode=self.mode, limit_search=self.limit_search, dedupe=self.dedupe,
                split=(search_idx, confirm_idx), alpha=self.alpha, auroc_floor=self.auroc_floor,
                neuron_names=neuron_names, block_size=self.block_size,
            )
            found = self._artifact_neurons(ctx, state, name, results)
            artifact_neurons.extend(found)
            shown = self._image_neurons(results, {a["neuron"] for a in found})
            thumbs = self._thumbnails(ctx, idx, acts, shown, f"l{li}", assets)
            layers.append(self._layer_record(name, pooler, results, thumbs))
        return self._section(ctx, layers, artifact_neurons, assets, seed, search_idx.size, confirm_idx.size)

    def _artifact_neurons(self, ctx: RunContext, state: RecordState, layer: str,
                          results: list[NeuronResult]) -> list[dict[str, Any]]:
        out = []
        artifacts = set(self.artifacts_)
        for r in results:
            best = r.best
            if not r.accepted or best is None or not artifacts & set(best.concepts):
                continue
            connection = None
            if self.connect_ and layer != LOGITS:
                contrib = state.stacked(f"con:{layer}")[:, r.neuron]
                connection = class_connection(contrib, state.stacked(f"pred:{layer}"), ctx.class_names)
            out.append({
                "layer": layer, "neuron": r.neuron, "name": r.name, "formula": best.formula, "terms": best.terms,
                "artifact_concepts": [c for c in best.concepts if c in artifacts],
                "relation": "detects" if any(c in artifacts and not neg for _, c, neg in best.terms)
                else "suppressed by",
                "auroc": self._auroc_metric(best), "q": r.q, "connection": connection,
            })
        out.sort(key=lambda a: (a["relation"] != "detects", a["connection"] is None,
                                -((a["connection"] or {}).get("strength") or 0.0), a["neuron"]))
        return out

    def _auroc_metric(self, e) -> dict[str, Any]:
        c = e.confirm
        return metric(c.auroc, (c.ci_low, c.ci_high), n=c.n, unit="AUROC (held-out)",
                      higher_is_better=self.mode == "positive", n_positive=c.n_positive,
                      p=c.p, log10_p=c.log10_p, test=f"one-sided Mann-Whitney U ({c.alternative})",
                      ci_method="DeLong")

    def _image_neurons(self, results: list[NeuronResult], artifact: set[int]) -> list[int]:
        def score(r: NeuronResult) -> tuple:
            auc = r.best.confirm.auroc if r.best is not None and r.best.confirm is not None else np.nan
            auc = auc if np.isfinite(auc) else 0.5
            effect = auc if self.mode == "positive" else 1.0 - auc
            return (r.neuron not in artifact, not r.accepted, -effect, r.neuron)

        return [r.neuron for r in sorted(results, key=score)[: self.max_image_neurons]]

    def _thumbnails(self, ctx: RunContext, idx: np.ndarray, acts: np.ndarray, neurons: list[int], prefix: str,
                    assets: dict[str, str]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        if self.top_images == 0:
            return out
        for j in neurons:
            top = np.argsort(-acts[:, j], kind="stable")[: self.top_images]
            keys = []
            for rank, image in enumerate(ctx.load_images(idx[top])):
                key = f"{prefix}_n{j}_{rank}"
                assets[key] = to_data_uri(thumbnail(image, _THUMB_PX), "jpeg", quality=80)
                keys.append(key)
            out[j] = keys
        return out

    def _layer_record(self, name: str, pooler: Pooler, results: list[NeuronResult],
                      thumbs: dict[int, list[str]]) -> dict[str, Any]:
        artifacts = set(self.artifacts_)
        neurons = []
        for r in results:
            best = r.best
            row: dict[str, Any] = {"neuron": r.neuron, "name": r.name, "accepted": r.accepted, "q": r.q,
                                   "formula": None, "terms": None, "concepts": [], "artifact": False,
                                   "auroc_search": None, "auroc": None, "fraction": None,
                                   "top_images": thumbs.get(r.neuron, []),
                                   "beam": [e.to_dict() for e in r.explanations]}
            if best is not None:
                row.update(formula=best.formula, terms=best.terms, concepts=best.concepts,
                           artifact=bool(artifacts & set(best.concepts)), auroc_search=best.auroc,
                           auroc=self._auroc_metric(best), fraction=best.fraction)
            neurons.append(row)
        aucs = np.array([n["auroc"]["value"] for n in neurons if n["auroc"] and n["auroc"]["value"] is not None])
        counts, edges = np.histogram(aucs, bins=_HIST_BINS, range=(0.0, 1.0))
        return {"layer": name, "representation": pooler.describe(), "n_neurons": len(results),
                "n_accepted": sum(bool(r.accepted) for r in results),
                "histogram": {"counts": counts.tolist(), "edges": edges.tolist(),
                              "of": "held-out AUROC of each unit's best label"},
                "neurons": neurons}

    def _section(self, ctx: RunContext, layers: list[dict], artifact_neurons: list[dict], assets: dict[str, str],
                 seed: int, n_search: int, n_confirm: int) -> Section:
        total = sum(layer["n_neurons"] for layer in layers)
        accepted = sum(layer["n_accepted"] for layer in layers)
        findings = []
        for layer in layers:
            found = [a for a in artifact_neurons if a["layer"] == layer["layer"]]
            if not found:
                continue
            top = found[0]
            conn = top["connection"]
            push = (f"; it pushes class '{conn['top_class']}' by {conn['strength']:+.2f} logit on average"
                    if conn and conn["top_class"] is not None else "")
            auc = top["auroc"]
            detects = [a["neuron"] for a in found if a["relation"] == "detects"]
            findings.append(Finding(
                "warning",
                f"{len(detects)} unit(s) of layer '{layer['layer']}' detect and {len(found) - len(detects)} are "
                f"suppressed by artifact concept(s) "
                f"{', '.join(sorted({c for a in found for c in a['artifact_concepts']}))} (accepted labels); e.g. "
                f"unit {top['name']} '{top['formula']}', held-out AUROC {auc['value']:.3f} [95% CI "
                f"{auc['ci_low']:.3f}, {auc['ci_high']:.3f}], q={top['q']:.2g}{push}",
                self.name, {"layer": layer["layer"], "detects": detects,
                            "suppressed_by": [a["neuron"] for a in found if a["relation"] != "detects"]},
            ))
        best_row = max((n for layer in layers for n in layer["neurons"] if n["accepted"]),
                       key=lambda n: n["auroc"]["value"] if self.mode == "positive" else -n["auroc"]["value"],
                       default=None)
        summary = {"units": total, "accepted": accepted, "artifact_units": len(artifact_neurons),
                   "best_label": f"{best_row['name']}: {best_row['formula']}" if best_row else None,
                   "best_auroc": best_row["auroc"] if best_row else None}
        data = {
            "method": "INVERT (Bykov et al., NeurIPS 2023): beam search over concept formulas maximising AUROC; "
                      "exact rank-sum implementation of the reference semantics",
            "search": asdict(self._search_params()),
            "split": {"n_search": n_search, "n_confirm": n_confirm, "seed": seed,
                      "stratified_on": "distinct concept-table rows"},
            "decision": {"alpha": self.alpha, "auroc_floor": self.auroc_floor, "ci": "DeLong 95%",
                         "test": "one-sided Mann-Whitney U on the held-out split "
                                 f"({'greater' if self.mode == 'positive' else 'less'}), normal approximation "
                                 "with tie and continuity corrections",
                         "correction": "Benjamini-Hochberg over the units of each layer",
                         "rule": "accepted if q < alpha and the CI lies beyond auroc_floor"},
            "artifact_concepts": list(self.artifacts_),
            "artifact_neurons": artifact_neurons,
            "layers": layers,
            "notes": "auroc_search is what the search maximised on the search split (optimistic); auroc is "
                     "re-measured on held-out images. p_two_sided_same_data in each beam entry is the reference "
                     "implementation's test on the search split, shown for comparison only. artifact_neurons lists "
                     "units whose accepted best label involves an artifact concept, with their gradient x "
                     "activation toward the predicted class.",
        }
        return self.section(summary=jsonable(summary), data=jsonable(data), findings=findings, assets=assets)
