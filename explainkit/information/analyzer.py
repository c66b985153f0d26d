"""``information``: how much each layer (and unit) carries about each generative factor.

Per batch, each layer's pooled activations (from the runner's shared pass) are recorded (N×D in all,
as for INVERT). At the end, :func:`~explainkit.information.api.factor_information` estimates the
Gaussian-copula mutual information between every unit / layer and every generative factor (from
``world.json`` or the concept table), with max-statistic permutation tests (family-wise error
control) and bootstrap CIs.

JSON section (``data``): ``factors`` (levels, source, entropy, artifact), ``heatmap`` (layers ×
factors: layer MI as a share of the factor's entropy, significance), ``layers`` (per layer and
factor: layer MI metric in bits with CI and family-wise p, significant units, the most informative
units; factor-pair co-information).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from explainkit.adapters.activations import (
    POOLINGS,
    TOKEN_OPTIONS,
    build_poolers,
    check_layers,
    layer_names,
    learn_layouts,
)
from explainkit.analyzers.base import (
    Analyzer,
    Batch,
    Finding,
    PassRequest,
    RecordState,
    RunContext,
    Section,
    layer_request,
)
from explainkit.analyzers.metric import metric
from explainkit.errors import ConfigError
from explainkit.information.api import FactorInformation, factor_information
from explainkit.information.factors import Factor, probe_factors, usable_factors
from explainkit.options import Option
from explainkit.report.jsonify import jsonable

__all__ = ["FactorAnalysis"]


class FactorAnalysis(Analyzer):
    """Information-theoretic factor analysis (Xu et al. 2018) with Gaussian-copula MI (Ince et al. 2017).

    Parameters
    ----------
    layer : str or list of str, optional
        Layers to analyse (give several for a layer × factor map). Default: the run's ``--layer``,
        else the model's last spatial layer.
    pooling : {"mean", "max"}
        Spatial aggregation of conv maps into one value per unit.
    tokens : {"cls", "mean"}
        Aggregation of ViT token sequences.
    factors : list of str, optional
        Factors to analyse (default: all with two or more levels).
    components : int
        Leading principal components behind each layer's MI.
    permutations : int
        Label permutations of the max-statistic null.
    resamples : int
        Bootstrap resamples for the CIs.
    pairs : bool
        Co-information of every factor pair at layer level.
    alpha : float
        Family-wise error rate.
    top_units : int
        Most informative units listed per layer and factor.
    """

    name = "information"
    title = "Information-theoretic factor analysis"
    summary = ("mutual information (Gaussian copula, bias-corrected) between layers/units and generative "
               "factors, with family-wise permutation tests")
    requires = frozenset({"module_hooks", "concepts"})
    options: ClassVar[Mapping[str, Option]] = {
        "layer": Option("str", many=True, or_one=True,
                        help="layer(s) to analyse; several give a layer x factor map (default: the run's --layer)"),
        "pooling": Option("choice", choices=POOLINGS, help="spatial aggregation of conv maps into one value per unit"),
        "tokens": Option("choice", choices=TOKEN_OPTIONS, help="aggregation of ViT tokens: CLS token or patch mean"),
        "factors": Option("str", many=True, help="factors to analyse (default: all with two or more levels)"),
        "components": Option("int", low=1, help="leading principal components behind each layer's MI"),
        "permutations": Option("int", low=1, help="label permutations of the max-statistic null"),
        "resamples": Option("int", low=0, help="bootstrap resamples for the CIs (0: none)"),
        "pairs": Option("bool", help="co-information of every factor pair at layer level"),
        "alpha": Option("float", low=0, high=1, low_open=True, high_open=True, help="family-wise error rate"),
        "top_units": Option("int", low=0, help="most informative units listed per layer and factor"),
    }

    def __init__(self, layer: str | list[str] | None = None, pooling: str = "mean", tokens: str = "cls",
                 factors: list[str] | None = None, components: int = 8, permutations: int = 500,
                 resamples: int = 200, pairs: bool = True, alpha: float = 0.05, top_units: int = 5) -> None:
        self.layer = layer
        self.pooling = pooling
        self.tokens = tokens
        self.factors = factors
        self.components = components
        self.permutations = permutations
        self.resamples = resamples
        self.pairs = pairs
        self.alpha = alpha
        self.top_units = top_units

    def _factors(self, ctx: RunContext) -> tuple[list[Factor], dict[str, str]]:
        """The factors to analyse and those left out (with the reason).

        A named factor that cannot be estimated, or none left, is a configuration error.
        """
        usable, skipped = usable_factors(probe_factors(ctx.data, self.factors))
        if self.factors is not None and skipped:
            name, why = next(iter(skipped.items()))
            raise ConfigError(f"factor {name!r} cannot be estimated: {why}")
        if not usable:
            raise ConfigError(f"no factor can be estimated: {'; '.join(f'{k}: {v}' for k, v in skipped.items())}")
        return usable, skipped

    def validate(self, ctx: RunContext) -> None:
        """The factors must exist in the probe set and be estimable; the layers asked for in the model."""
        try:
            self._factors(ctx)
            check_layers(ctx.handle, self.layer, ctx.layer)
        except ConfigError as exc:
            raise ConfigError(f"information: {exc}") from None

    def prepare(self, ctx: RunContext) -> None:
        """Read the factors and build one activation pooler per layer."""
        self.factors_, self.skipped_factors_ = self._factors(ctx)
        self.poolers_ = build_poolers(ctx.handle, layer_names(ctx.handle, self.layer, ctx.layer),
                                      pooling=self.pooling, tokens=self.tokens)

    def pass_request(self, ctx: RunContext) -> PassRequest | None:
        """The layers' outputs, recorded by the runner's shared pass."""
        return layer_request(self.poolers_)

    def map(self, ctx: RunContext, batch: Batch) -> RecordState:
        """Pooled activations of one batch (from the shared pass)."""
        acts = batch.layer_values(self.poolers_)
        return RecordState.from_batch(batch.indices, **{f"act:{name}": a for name, a in acts.items()})

    def map_cache_key(self, ctx: RunContext) -> dict[str, Any]:
        """Pooled activations depend on the layers, pooling and token handling only."""
        return {"layers": list(self.poolers_), "pooling": self.pooling, "tokens": self.tokens}

    def finalize(self, ctx: RunContext, state: RecordState) -> Section:
        """Estimate, test and tabulate."""
        idx = state.indices()
        learn_layouts(ctx.handle, self.poolers_, ctx.load_images(idx[:1]))
        factors = [f.subset(idx) for f in self.factors_]
        acts = {name: state.stacked(f"act:{name}").astype(np.float64) for name in self.poolers_}
        seed = int(ctx.rng(self.name).integers(0, 2**31))
        result = factor_information(acts, factors, components=self.components, permutations=self.permutations,
                                    resamples=self.resamples, pairs=self.pairs, seed=seed)
        return self._section(ctx, result, factors, seed)

    def _section(self, ctx: RunContext, res: FactorInformation, factors: list, seed: int) -> Section:
        artifacts = set(ctx.data.artifact_concepts)
        layers, heat, sig = [], [], []
        for info in res.layers:
            cells = []
            for j, f in enumerate(res.factors):
                unit_p = info.unit_p[:, j]
                order = np.argsort(-np.nan_to_num(info.unit_mi[:, j], nan=-np.inf), kind="stable")
                top = [{"unit": int(u), "mi": metric(info.unit_mi[u, j], tuple(info.unit_ci[u, j]), n=res.n,
                                                     unit="bits", higher_is_better=None, p_fwer=info.unit_p[u, j])}
                       for u in order[: self.top_units]]
                cells.append({
                    "factor": f,
                    "mi": metric(info.layer_mi[j], tuple(info.layer_ci[j]), n=res.n, unit="bits",
                                 higher_is_better=None, p_fwer=info.layer_p[j],
                                 share_of_entropy=info.layer_mi[j] / res.entropy[j] if res.entropy[j] else None,
                                 shuffle_bias=info.layer_bias[j]),
                    "significant": bool(info.layer_p[j] < self.alpha),
                    "reason": None if np.isfinite(info.layer_mi[j]) else
                    f"not estimated: a level has at most {info.components} images (the layer MI's dimension)",
                    "n_significant_units": int(np.sum(unit_p < self.alpha)),
                    "top_units": top,
                })
            heat.append([c["mi"]["share_of_entropy"] for c in cells])
            sig.append([c["significant"] for c in cells])
            layers.append({"layer": info.layer, "representation": self.poolers_[info.layer].describe(),
                           "n_units": int(info.unit_mi.shape[0]), "components": info.components,
                           "variance_explained": info.variance_explained, "factors": cells,
                           "pairs": [{**p, "unit": "bits", "ci_method": "percentile bootstrap"} for p in info.pairs],
                           "units": {"mi_bits": info.unit_mi.tolist(), "p_fwer": info.unit_p.tolist()}})
        findings = self._findings(layers, artifacts)
        min_p = len(res.factors) / (res.permutations + 1)
        if min_p >= self.alpha:
            findings.append(Finding(
                "warning", f"with {res.permutations} permutations and {len(res.factors)} factors the smallest "
                f"family-wise p is {min_p:.3g} >= alpha {self.alpha}: nothing can be significant; use at least "
                f"{math.ceil(len(res.factors) / self.alpha)} permutations", self.name,
                {"permutations": res.permutations, "factors": len(res.factors)}))
        best = max(((lay["layer"], c) for lay in layers for c in lay["factors"] if c["significant"]),
                   key=lambda t: t[1]["mi"]["value"], default=None)
        summary = {"layers": len(layers), "factors": res.factors,
                   "significant_cells": int(sum(map(sum, sig))),
                   "strongest": f"{best[0]} / {best[1]['factor']}" if best else None,
                   "strongest_mi": best[1]["mi"] if best else None}
        data = {
            "method": "information-theoretic factor analysis (Xu et al. 2018): mutual information between "
                      "representations and generative factors, Gaussian-copula estimators (Ince et al. 2017)",
            "estimators": {
                "unit": "GCMI, Gaussian model per factor level on the copula-normalised unit, analytic bias "
                        "correction (a lower bound on the MI); ties broken at random (seeded)",
                "layer": f"GCMI, Gaussian mixture over factor levels on the layer's {self.components} leading "
                         "principal components (copula-normalised), unscented-transform mixture entropy, minus the "
                         "mean of the permutation null (shuffle bias correction)",
            },
            "test": {"method": "max-statistic permutation test (Westfall-Young single step): per factor over every "
                               "unit of every layer (units) and over the layers (layer MI); same permutations for "
                               "all layers", "permutations": res.permutations,
                     "correction": "family-wise within each factor, Bonferroni over the factors",
                     "alpha": self.alpha, "smallest_attainable_p": min(1.0, min_p),
                     "ci": f"percentile bootstrap over images ({res.resamples} resamples)",
                     "seed": seed},
            "factors": [{"name": f.name, "levels": list(f.levels), "source": f.source,
                         "entropy_bits": float(res.entropy[j]), "artifact": f.name in artifacts}
                        for j, f in enumerate(factors)],
            "skipped_factors": [{"name": k, "reason": v} for k, v in self.skipped_factors_.items()],
            "heatmap": {"rows": [lay["layer"] for lay in layers], "cols": res.factors, "values": heat,
                        "significant": sig, "unit": "layer MI as a share of the factor's entropy"},
            "layers": layers,
            "notes": "MI is in bits; a factor's entropy is the most a representation can carry about it. Unit MI "
                     "is a lower bound; layer MI reads only the leading components. Co-information > 0: the pair's "
                     "synergy dominates, < 0: redundancy (for independent factors it equals I(F1; F2 | X) >= 0, "
                     "so clearly negative values there show estimator limits).",
        }
        return self.section(summary=jsonable(summary), data=jsonable(data), findings=findings)

    def _findings(self, layers: list[dict], artifacts: set[str]) -> list[Finding]:
        out = []
        for lay in layers:
            for c in lay["factors"]:
                if c["factor"] in artifacts and c["significant"]:
                    mi = c["mi"]
                    out.append(Finding(
                        "warning",
                        f"layer '{lay['layer']}' carries information about artifact factor '{c['factor']}': "
                        f"{mi['value']:.3f} bits [95% CI {mi['ci_low']:.3f}, {mi['ci_high']:.3f}] "
                        f"({100 * (mi['share_of_entropy'] or 0):.0f}% of its entropy), family-wise "
                        f"p={mi['p_fwer']:.2g}; "
                        f"{c['n_significant_units']} of {lay['n_units']} units individually", self.name,
                        {"layer": lay["layer"], "factor": c["factor"]}))
        return out
