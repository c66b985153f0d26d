"""Adapter of Prob-PSENN (Vadillo et al., 2024): prototypes as distributions, explanatory uncertainty.

The analyzer's headline reads the distribution means (the Gaussians' centres) with ProtoPNet's
log similarity. The own explanation repeats the prototype-meaning analysis under ``samples``
prototype draws (seeded; ``model_options={"samples": S, "seed": s}``) on the same images and
perturbed copies, and reports the explanatory uncertainty per prototype:

* how often the Nauta verdict (and the top characteristic) of a sampled prototype agrees with the
  mean prototype's, and the spread (standard deviation over samples) of each global importance;
* how much its similarity maps vary across samples: the coefficient of variation of the map over
  samples (mean over cells of the standard deviation, over the mean absolute similarity) and the
  share of samples whose best location is the mean prototype's;

and the inputs on which the model is uncertain: the probe images with the largest epistemic
uncertainty (mutual information between the label and the prototypes, ``H[p̄] − mean H[p]``, in
nats) when the model exposes ``sample_probabilities(x, samples)``. Verdicts here use point global
scores (no bootstrap) for the mean and the samples alike, over all probe images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from explainkit.analyzers.metric import metric
from explainkit.errors import ConfigError
from explainkit.loading.handle import ModelHandle
from explainkit.options import Option
from explainkit.prototypes.adapters import VectorPrototypes, _latent_layer_before
from explainkit.prototypes.explanation import (
    ExplanationBatch,
    ExplanationContext,
    ModelExplanation,
    TopImages,
    image_asset,
)
from explainkit.prototypes.importance import SplitAccumulator, scores_from_maps
from explainkit.prototypes.model_adapters._common import contains, find_module, has_tensors, identity_classes
from explainkit.prototypes.models.probpsenn import predictive_uncertainty
from explainkit.prototypes.registry import AdapterKind, AdapterRequest
from explainkit.prototypes.similarity import similarity
from explainkit.prototypes.statistics import global_scores, verdict

__all__ = ["KIND", "ProbPSENNExplanation", "ProbPSENNPrototypes", "is_gaussian_prototypes"]

REFERENCE = ("Vadillo, Santana, Lozano and Kwiatkowska (2024), Uncertainty-Aware Explanations Through "
             "Probabilistic Self-Explainable Neural Networks")
#: Images listed as the ones the model is most uncertain about.
UNCERTAIN_IMAGES = 5
#: Most prototype draws (the similarity maps of every draw are held for a batch at a time).
MAX_SAMPLES = 256


def is_gaussian_prototypes(module: nn.Module) -> bool:
    """Gaussian prototypes: ``prototype_mean`` and ``prototype_log_sigma`` of the same (P, D[, 1, 1]) shape."""
    return (has_tensors(module, "prototype_mean", "prototype_log_sigma", dims=(2, 4))
            and module.prototype_mean.shape == module.prototype_log_sigma.shape)


class ProbPSENNPrototypes(VectorPrototypes):
    """The means of Gaussian prototypes (log similarity), with seeded prototype samples.

    Parameters
    ----------
    model : ModelHandle or torch.nn.Module
        A model containing a module :func:`is_gaussian_prototypes` accepts.
    input_size : tuple of int
        (H, W) model input size.
    layer : str, optional
        The latent layer (default: the last module before the prototypes whose output has depth D).
    samples : int
        Prototype draws for the explanatory uncertainty.
    seed : int
        Seed of the draws.
    """

    kind = "prob_psenn"

    def __init__(self, model: ModelHandle | nn.Module, input_size: tuple[int, int], layer: str | None = None,
                 samples: int = 8, seed: int = 0) -> None:
        root = model.module if isinstance(model, ModelHandle) else model
        owner, module = find_module(root, is_gaussian_prototypes, "Gaussian prototype layer")
        mean = module.prototype_mean.detach().float().cpu()
        if samples < 2:
            raise ConfigError("prob_psenn: model_options samples must be at least 2")
        layer = layer or _latent_layer_before(model, owner, int(mean.shape[1]), input_size)
        super().__init__(layer, mean, "log", identity_classes(module, root),
                         source="means of the Gaussian prototypes")
        self.sigma = module.prototype_log_sigma.detach().float().cpu().exp().reshape(self.prototype_vectors.shape)
        gen = torch.Generator().manual_seed(int(seed))
        eps = torch.randn((int(samples), *self.prototype_vectors.shape), generator=gen)
        self.samples = self.prototype_vectors + self.sigma * eps  # (S, P, D, k, k)
        self.seed = int(seed)
        self.bind(model, input_size)

    def explanation(self) -> ProbPSENNExplanation:
        """Explanatory uncertainty over the prototype samples."""
        return ProbPSENNExplanation(self)

    def describe(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {**super().describe(), "samples": int(self.samples.shape[0]), "sample_seed": self.seed}


@dataclass
class _UncertaintyState:
    """Accumulators of the mean prototypes and every sample, map statistics, uncertain inputs."""

    mean: SplitAccumulator
    samples: list[SplitAccumulator]
    location_agreement: np.ndarray
    variation: np.ndarray
    n: int
    uncertain: TopImages
    sum_uncertainty: np.ndarray

    def merge(self, other: _UncertaintyState) -> _UncertaintyState:
        return _UncertaintyState(self.mean.merge(other.mean), [a.merge(b) for a, b in zip(self.samples, other.samples)],
                                 self.location_agreement + other.location_agreement, self.variation + other.variation,
                                 self.n + other.n, self.uncertain.merge(other.uncertain),
                                 self.sum_uncertainty + other.sum_uncertainty)


class ProbPSENNExplanation(ModelExplanation):
    """How much the explanations and predictions vary across prototype samples."""

    kind = "prob_psenn"
    title = "Explanatory uncertainty over prototype samples"
    reference = REFERENCE

    def __init__(self, adapter: ProbPSENNPrototypes) -> None:
        self.adapter = adapter

    def _empty(self, n_prototypes: int, n_characteristics: int) -> _UncertaintyState:
        def acc() -> SplitAccumulator:
            return SplitAccumulator.empty(n_prototypes, n_characteristics, 0, 0)

        return _UncertaintyState(acc(), [acc() for _ in range(len(self.adapter.samples))], np.zeros(n_prototypes),
                                 np.zeros(n_prototypes), 0, TopImages.empty(UNCERTAIN_IMAGES, 4), np.zeros(3))

    def init_state(self) -> None:
        """Sizes are known at the first batch (the analysed prototypes and characteristics)."""
        return None

    def map(self, view: ExplanationBatch) -> _UncertaintyState:
        """Scores of the mean and of every sample on the batch; map variability; predictive uncertainty."""
        a = self.adapter
        ids = torch.as_tensor(view.prototype_ids, dtype=torch.long)
        b, c = len(view.batch), len(view.perturbations)
        state = self._empty(len(ids), c)
        x = view.inputs.to(view.ctx.device)
        z = torch.cat([a.latent(view.ctx.handle, x[i : i + 256]) for i in range(0, len(x), 256)])
        indices = np.asarray(view.batch.indices)
        none = np.zeros((0, b))
        priority = np.zeros(b)

        def scored(protos: torch.Tensor) -> tuple[SplitAccumulator, torch.Tensor]:
            maps = similarity(z, protos[ids].to(z), "log")
            scores = scores_from_maps(maps, b, view.readout)
            acc = SplitAccumulator.empty(len(ids), c, 0, 0).add(scores, indices, view.weight_rule, none, priority)
            return acc, maps[:b].flatten(2)  # (B, P', h w)

        state.mean, mean_maps = scored(a.prototype_vectors)
        sample_maps = []
        for s, protos in enumerate(a.samples):
            state.samples[s], maps = scored(protos)
            sample_maps.append(maps)
        stack = torch.stack(sample_maps)  # (S, B, P', h w)
        best = mean_maps.argmax(-1)  # (B, P')
        state.location_agreement = (stack.argmax(-1) == best[None]).double().mean(0).sum(0).cpu().numpy()
        spread = stack.std(0).mean(-1) / stack.mean(0).abs().mean(-1).clamp_min(1e-12)
        state.variation = spread.double().sum(0).cpu().numpy()
        state.n = b
        sample_probs = getattr(view.ctx.handle.module, "sample_probabilities", None)
        if callable(sample_probs):
            with torch.no_grad():
                probs = sample_probs(x[:b], a.samples.to(x.device)).double().cpu()
            u = predictive_uncertainty(probs)
            values = torch.stack([u["total"], u["aleatoric"], u["epistemic"]], 1).numpy()
            predicted = probs.mean(0).argmax(-1).numpy()[:, None]
            state.uncertain = state.uncertain.add(values[:, 2], indices, np.hstack([values, predicted]))
            state.sum_uncertainty = values.sum(0)
        return state

    def merge(self, a: _UncertaintyState | None, b: _UncertaintyState | None) -> _UncertaintyState | None:
        """Merge the accumulators and sums."""
        if a is None or b is None:
            return a if b is None else b
        return a.merge(b)

    def finalize(self, view: ExplanationContext, state: _UncertaintyState | None) -> dict[str, Any]:
        """Per prototype: verdict agreement, importance spread, map variability; the most uncertain inputs."""
        names = view.characteristics
        s_count = len(self.adapter.samples)
        if state is None or state.n == 0:
            return {"samples": s_count, "prototypes": [], "uncertain_inputs": [], "n_images": 0,
                    "notes": "No image was analysed."}
        mean = global_scores(state.mean)
        samples = [global_scores(acc) for acc in state.samples]
        nan = np.full(len(names), np.nan)
        rows = []
        for j, pid in enumerate(view.prototype_ids):
            ref = verdict(mean.score[j], nan, names)
            sampled = [verdict(g.score[j], nan, names) for g in samples]
            top = np.nanargmax(np.where(np.isfinite(mean.score[j]), mean.score[j], -np.inf)) \
                if np.isfinite(mean.score[j]).any() else -1
            tops = [int(np.nanargmax(np.where(np.isfinite(g.score[j]), g.score[j], -np.inf)))
                    if np.isfinite(g.score[j]).any() else -1 for g in samples]
            values = np.stack([g.score[j] for g in samples])  # (S, C)
            cls = self.adapter.prototype_class(pid)
            rows.append({
                "prototype": pid, "class": cls, "class_name": view.class_name(cls),
                "sigma": float(self.adapter.sigma[pid].mean()),
                "mean_verdict": ref,
                "verdict_agreement": metric(float(np.mean([v == ref for v in sampled])), n=s_count,
                                            unit="fraction of prototype samples with the mean prototype's verdict",
                                            higher_is_better=True),
                "top_agreement": metric(float(np.mean([t == top for t in tops])), n=s_count,
                                        unit="fraction of prototype samples with the same top characteristic",
                                        higher_is_better=True),
                "sample_verdicts": [{"verdict": v, "count": sampled.count(v)}
                                    for v in sorted(set(sampled), key=lambda v: (-sampled.count(v), v))],
                "importance_spread": {ch: metric(float(np.nanstd(values[:, k], ddof=1)) if s_count > 1 else None,
                                                 n=s_count, unit=f"{view.unit} (standard deviation over samples)",
                                                 higher_is_better=False) for k, ch in enumerate(names)},
                "map_variation": metric(state.variation[j] / state.n, n=state.n,
                                        unit="coefficient of variation of the similarity map over samples "
                                             "(mean over images)", higher_is_better=False),
                "location_agreement": metric(state.location_agreement[j] / state.n, n=state.n,
                                             unit="fraction of samples whose best location is the mean prototype's "
                                                  "(mean over images)", higher_is_better=True),
            })
        uncertain = []
        for score, idx, extra in zip(state.uncertain.score, state.uncertain.index, state.uncertain.extra):
            image = view.ctx.handle.require_preprocessing().resize_image(view.ctx.load_images([int(idx)])[0])
            predicted = int(extra[3])
            uncertain.append({"image": view.ctx.data.ids[int(idx)], "index": int(idx), "predicted": predicted,
                              "predicted_name": view.class_name(predicted), "total": float(extra[0]),
                              "aleatoric": float(extra[1]), "epistemic": float(score),
                              "asset": image_asset(view.assets, f"model_uncertain{int(idx)}", image)})
        means = state.sum_uncertainty / state.n
        agreement = [r["verdict_agreement"]["value"] for r in rows]
        return {
            "samples": s_count, "sample_seed": self.adapter.seed, "n_images": state.n, "prototypes": rows,
            "mean_verdict_agreement": metric(float(np.mean(agreement)) if agreement else None, n=len(agreement),
                                             unit="fraction (mean over prototypes)", higher_is_better=True),
            "uncertain_inputs": uncertain,
            "mean_uncertainty": {k: metric(float(v), n=state.n, unit="nats (mean over images)",
                                           higher_is_better=False)
                                 for k, v in zip(("total", "aleatoric", "epistemic"), means)} if uncertain else None,
            "notes": "The prototype-meaning analysis repeated under prototype samples drawn from the learned "
                     "Gaussians (same images and perturbations; point global scores over all probe images, so verdicts "
                     "here are without bootstrap CIs). Epistemic uncertainty = H[mean over samples of p(y|x)] − mean "
                     "over samples of H[p(y|x)]: how much the prediction depends on which prototypes were drawn.",
        }


def _build(request: AdapterRequest) -> ProbPSENNPrototypes:
    options = KIND.resolve_options(request.model_options)
    return ProbPSENNPrototypes(request.handle, request.input_size, request.layer, options["samples"], options["seed"])


#: The adapter kind (registered in :data:`~explainkit.prototypes.registry.BUILTIN_KINDS`).
KIND = AdapterKind(
    "prob_psenn", _build, "Gaussian prototypes: explanatory uncertainty over prototype samples", REFERENCE,
    detect=contains(is_gaussian_prototypes), priority=10,
    options={"samples": Option("int", 8, low=2, high=MAX_SAMPLES, help="prototype draws"),
             "seed": Option("int", 0, low=0, high=2**32 - 1, help="seed of the draws")})
