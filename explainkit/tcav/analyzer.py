"""``tcav``: Testing with Concept Activation Vectors (Kim et al., ICML 2018) through captum.

Before the first batch, CAVs are trained once through captum's
:class:`~captum.concept.TCAV` for every concept of the concept table (positive images against R
sets of negative images) and R random-vs-random CAVs (:mod:`~explainkit.tcav.cav`). Per batch, the
runner's shared pass (target: the label) gives each image's gradient of its own class logit at the
layers, and the images whose gradient points along each CAV are counted (captum's ``interpret``
``sign_count``, :func:`~explainkit.tcav.cav.sign_counts`, without a model pass of its own); only the
counts are kept, so states merge by summation. At the end every (layer, class,
concept) gets its TCAV score, the paper's two-sided t-test against the random CAVs and Holm's
correction (:mod:`~explainkit.tcav.scores`); only significant scores become findings.

JSON section (``data``): ``concepts`` (CAV accuracy per layer), ``skipped_concepts``, ``tests``
(every test: score and random score with t CIs, difference with CI, t, p, Holm p, significant),
``significant`` (the significant ones, strongest first).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from captum.concept._utils.common import concepts_to_str
from torch import nn

from explainkit.adapters.activations import build_poolers, check_layers, layer_names
from explainkit.adapters.targets import select_logits
from explainkit.analyzers.base import Analyzer, Batch, Finding, PassRequest, RunContext, Section, layer_request
from explainkit.analyzers.metric import metric
from explainkit.errors import ConfigError
from explainkit.hooks import eval_mode
from explainkit.loading.handle import ModelHandle
from explainkit.options import Option
from explainkit.report.jsonify import jsonable
from explainkit.tcav.cav import (
    CachedTCAV,
    SeededLinearClassifier,
    activation_table,
    cav_directions,
    concept_sets,
    sign_counts,
)
from explainkit.tcav.scores import TcavCounts, TcavTest, tcav_tests

__all__ = ["Tcav"]

_PREFIX = "model."


class _Logits(nn.Module):
    """The handle's model returning plain logits (what captum differentiates); layers under ``model.``."""

    def __init__(self, handle: ModelHandle) -> None:
        super().__init__()
        self.model = handle.module
        self.handle = handle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return select_logits(self.handle.forward(x))


class _Loader:
    """Preprocessed probe images by index (picklable, unlike a closure)."""

    def __init__(self, ctx: RunContext) -> None:
        self.handle, self.data, self.device = ctx.handle, ctx.data, ctx.device

    def __call__(self, indices: np.ndarray) -> torch.Tensor:
        images = [self.data.load_image(int(i)) for i in indices]
        return self.handle.preprocess(images).to(self.device)


class Tcav(Analyzer):
    """TCAV scores per class and concept, tested against random CAVs (captum's implementation).

    Parameters
    ----------
    layer : str or list of str, optional
        Layer(s) whose activations the CAVs live in. Default: the run's ``--layer``, else the
        model's last spatial layer.
    concepts : list of str, optional
        Concept-table columns to test (default: all with enough positive and negative images).
    classes : list of str, optional
        Classes to explain (default: every class with probe images).
    runs : int
        CAVs per concept against different negative sets, and random-vs-random CAVs (R).
    max_images : int
        Images per concept / random set.
    min_images : int
        Concepts with fewer positive or negative images are skipped.
    alpha : float
        Family-wise error rate (Holm over all layer × class × concept tests).
    """

    name = "tcav"
    title = "TCAV concept sensitivity"
    summary = "TCAV scores per class and concept via captum, t-tested against random CAVs (Holm-corrected)"
    requires = frozenset({"module_hooks", "gradients", "concepts", "labels"})
    options: ClassVar[Mapping[str, Option]] = {
        "layer": Option("str", many=True, or_one=True,
                        help="layer(s) the CAVs live in (default: the run's --layer, else the model's)"),
        "concepts": Option("str", many=True, help="concept-table columns to test (default: all with enough images)"),
        "classes": Option("str", many=True, help="classes to explain (default: every class with probe images)"),
        "runs": Option("int", low=2, help="CAVs per concept against fresh negatives, and random-vs-random CAVs"),
        "max_images": Option("int", low=2, help="images per concept / random set"),
        "min_images": Option("int", low=2, help="concepts with fewer positive or negative images are skipped"),
        "alpha": Option("float", low=0, high=1, low_open=True, high_open=True,
                        help="family-wise error rate (Holm over all layer x class x concept tests)"),
    }

    def __init__(self, layer: str | list[str] | None = None, concepts: list[str] | None = None,
                 classes: list[str] | None = None, runs: int = 10, max_images: int = 50, min_images: int = 10,
                 alpha: float = 0.05) -> None:
        self.layer = layer
        self.concepts = concepts
        self.classes = classes
        self.runs = runs
        self.max_images = max_images
        self.min_images = min_images
        self.alpha = alpha

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the captum object; the trained CAVs (``cavs_``) travel with it.

        A worker's :meth:`prepare` installs them instead of training (bit-identical scores everywhere).
        """
        return {k: v for k, v in self.__dict__.items() if k not in ("tcav_", "exp_sets_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A copy shipped to a worker reuses the driver's CAVs once instead of training its own."""
        self.__dict__.update(state)
        self._shipped = "cavs_" in state

    # -- setup -------------------------------------------------------------------------------
    def _choices(self, ctx: RunContext) -> tuple[list[str], list[str]]:
        """The concepts and classes asked for (all by default); unknown names raise."""
        names, class_names = list(ctx.data.concept_names), list(ctx.class_names)
        chosen = names if self.concepts is None else list(self.concepts)
        unknown = [c for c in chosen if c not in names]
        if unknown:
            raise ConfigError(f"tcav: unknown concept(s) {', '.join(unknown)}; available: {', '.join(names)}")
        wanted = class_names if self.classes is None else list(self.classes)
        unknown = [c for c in wanted if c not in class_names]
        if unknown:
            raise ConfigError(f"tcav: unknown class(es) {', '.join(unknown)}; the model's: {', '.join(class_names)}")
        return chosen, wanted

    def validate(self, ctx: RunContext) -> None:
        """Concepts, classes and layers must exist."""
        self._choices(ctx)
        try:
            check_layers(ctx.handle, self.layer, ctx.layer)
        except ConfigError as exc:
            raise ConfigError(f"tcav: {exc}") from None

    def prepare(self, ctx: RunContext) -> None:
        """Draw the concept sets and train every CAV through captum (a shipped copy reuses the driver's)."""
        chosen, wanted = self._choices(ctx)
        self.layers_ = list(build_poolers(ctx.handle, layer_names(ctx.handle, self.layer, ctx.layer)))
        self.class_names_ = list(ctx.class_names)
        self.class_mask_ = np.array([c in wanted for c in self.class_names_])
        table = ctx.data.concepts[:, [ctx.data.concept_names.index(c) for c in chosen]]
        self.sets_, self.skipped_ = concept_sets(table, chosen, max_images=self.max_images, runs=self.runs,
                                                 min_images=self.min_images, rng=ctx.rng(self.name, "sets"))
        self._fit(ctx)
        self.directions_ = {layer: cav_directions(self.tcav_, self.exp_sets_, _PREFIX + layer)
                            for layer in self.layers_}

    def _fit(self, ctx: RunContext) -> None:
        pairs, null = self.sets_.experimental_sets(_Loader(ctx), ctx.batch_size)
        self.exp_sets_ = pairs + null
        store = tempfile.mkdtemp(prefix="explainkit-tcav-")
        model = _Logits(ctx.handle)
        names = [_PREFIX + name for name in self.layers_]
        try:
            self.tcav_ = CachedTCAV(model, names, classifier=SeededLinearClassifier(seed=ctx.seed), save_path=store)
            if getattr(self, "_shipped", False):  # a worker: the driver's CAVs, bit for bit
                self.tcav_.import_cavs(self.exp_sets_, self.cavs_)
                self._shipped = False
                return
            with eval_mode(ctx.handle.module):
                self.tcav_.use_activations(*activation_table(
                    model, {n: model.get_submodule(n) for n in names}, self.sets_.all_indices(), _Loader(ctx),
                    ctx.batch_size))
                self.tcav_.compute_cavs(self.exp_sets_)
            self.tcav_.use_activations(None, None)  # type: ignore[arg-type]
            self.cavs_ = self.tcav_.export_cavs()
        finally:
            shutil.rmtree(store, ignore_errors=True)  # the CAVs stay in memory

    def init_state(self, ctx: RunContext) -> TcavCounts:
        """Zero counts."""
        return TcavCounts(np.zeros((len(self.layers_), len(self.class_names_), len(self.exp_sets_)), np.int64),
                          np.zeros(len(self.class_names_), np.int64))

    # -- per batch ---------------------------------------------------------------------------
    def pass_request(self, ctx: RunContext) -> PassRequest | None:
        """The layers' gradients toward each image's label, from the runner's shared pass."""
        return layer_request(self.layers_, gradients=True, target="label")

    def map(self, ctx: RunContext, batch: Batch) -> TcavCounts:
        """Sign counts of every class's images against every CAV (captum's ``sign_count``, from the shared pass)."""
        state = self.init_state(ctx)
        labels = batch.labels.numpy()
        shared = batch.passes["label"]
        for k in np.unique(labels[labels >= 0]):
            if not self.class_mask_[k]:
                continue
            rows = torch.from_numpy(np.flatnonzero(labels == k))
            state.n[k] += rows.numel()
            for li, layer in enumerate(self.layers_):
                grads = shared.gradients[layer][rows.to(shared.gradients[layer].device)]
                state.positive[li, k] += sign_counts(grads, self.directions_[layer]).cpu().numpy()
        return state

    # -- at the end --------------------------------------------------------------------------
    def finalize(self, ctx: RunContext, state: TcavCounts) -> Section:
        """Test every (layer, class, concept) and build the section."""
        tests = tcav_tests(state, self.layers_, self.class_names_, self.sets_.concepts, self.runs, alpha=self.alpha)
        artifacts = set(ctx.data.artifact_concepts)
        rows = [self._row(t, t.concept in artifacts) for t in tests]
        significant = sorted((r for r in rows if r["significant"]), key=lambda r: -abs(r["difference"]["value"]))
        accuracy, not_converged = self._cav_accuracy()
        summary = {"tests": len(rows), "significant": len(significant),
                   "concepts": len(self.sets_.concepts), "classes": int(self.class_mask_.sum()),
                   "strongest": (f"{significant[0]['class']} / {significant[0]['concept']} ({significant[0]['layer']})"
                                 if significant else None)}
        data = {
            "method": "TCAV (Kim et al., ICML 2018) through captum.concept: CAVs are linear classifiers of a "
                      "concept's positive images against its negative images in the layer's activations; TCAV score "
                      "= share of a class's images whose class-logit gradient points along the CAV",
            "cavs": {"runs": self.runs, "max_images": self.max_images, "min_images": self.min_images,
                     "classifier": "scikit-learn SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3), seeded; "
                                   "33% of each set held out for the CAV accuracy (captum's defaults)",
                     "null": "random-vs-random CAVs: a fixed random probe subset against a fresh one per run",
                     "not_converged": not_converged},
            "test": {"method": "two-sided Student t-test of the concept's R scores against the R random scores "
                               "(as tensorflow/tcav)", "correction": "Holm over all layer x class x concept tests",
                     "alpha": self.alpha, "ci": "Student t, 95%"},
            "layers": self.layers_, "classes": [c for c, keep in zip(self.class_names_, self.class_mask_) if keep],
            "concepts": [{"name": c, "positives": int(p.size), "artifact": c in artifacts,
                          "cav_accuracy": {layer: accuracy[layer][i] for layer in self.layers_}}
                         for i, (c, p) in enumerate(zip(self.sets_.concepts, self.sets_.positives))],
            "skipped_concepts": self.skipped_,
            "tests": rows, "significant": significant,
            "notes": "A score above the random CAVs' means the class logit tends to grow along the concept "
                     "direction; below, to shrink. Only Holm-significant scores are findings. CAV accuracy near 0.5 "
                     "means the layer does not separate the concept's images from the others.",
        }
        return self.section(summary=jsonable(summary), data=jsonable(data), findings=self._findings(significant))

    def _cav_accuracy(self) -> tuple[dict[str, list[float]], int]:
        """Mean held-out accuracy of each concept's CAVs per layer (captum's ``accs``); fits that hit max_iter."""
        out, not_converged, r = {}, 0, self.runs
        for layer in self.layers_:
            stats = [self.tcav_.cavs[concepts_to_str(s)][_PREFIX + layer].stats for s in self.exp_sets_]
            out[layer] = [float(np.mean([float(s["accs"]) for s in stats[c * r : (c + 1) * r]]))
                          for c in range(len(self.sets_.concepts))]
            not_converged += sum(not s["converged"] for s in stats)
        return out, not_converged

    @staticmethod
    def _row(t: TcavTest, artifact: bool) -> dict[str, Any]:
        return {"layer": t.layer, "class": t.class_name, "concept": t.concept, "artifact": artifact,
                "score": metric(t.score, (t.score_ci_low, t.score_ci_high), n=t.n, unit="TCAV score (share of class "
                                "images)", higher_is_better=None, runs=len(t.scores)),
                "random_score": t.null_score,
                "difference": metric(t.difference, (t.ci_low, t.ci_high), n=t.n, unit="TCAV score minus random",
                                     higher_is_better=None, t=t.t, p=t.p, p_holm=t.p_holm),
                "significant": t.significant, "scores": t.scores.tolist(), "random_scores": t.null.tolist()}

    def _findings(self, significant: list[dict]) -> list[Finding]:
        out = []
        for r in significant:
            if r["artifact"] and r["difference"]["value"] > 0:
                d = r["difference"]
                out.append(Finding(
                    "warning", f"class '{r['class']}' is sensitive to artifact concept '{r['concept']}' in layer "
                    f"'{r['layer']}': TCAV {r['score']['value']:.2f} vs random {r['random_score']:.2f} "
                    f"(difference {d['value']:+.2f} [95% CI {d['ci_low']:+.2f}, {d['ci_high']:+.2f}], Holm p="
                    f"{d['p_holm']:.2g})", self.name, {k: r[k] for k in ("layer", "class", "concept")}))
        groups: dict[tuple[str, str], list[dict]] = {}
        for r in significant:
            if not (r["artifact"] and r["difference"]["value"] > 0):
                groups.setdefault((r["layer"], r["class"]), []).append(r)
        for (layer, cls), items in groups.items():
            parts = [f"{r['concept']} {r['score']['value']:.2f} vs {r['random_score']:.2f} (Holm p="
                     f"{r['difference']['p_holm']:.2g})" for r in items]
            out.append(Finding("info", f"class '{cls}' in layer '{layer}': significant TCAV scores for "
                               + "; ".join(parts), self.name,
                               {"layer": layer, "class": cls, "concepts": [r["concept"] for r in items]}))
        return out
