"""A worked example of an analyzer plugin: how often each channel of a layer is active.

For every image, each channel of the target layer is pooled over space (mean or max); a channel is
*active* on an image when its pooled value exceeds ``threshold``. The section reports, per channel,
the fraction of images it is active on (Wilson 95 % interval, n = images) and flags channels that
are never active ("dead" units). ``tests/test_toy_analyzer.py`` registers it and runs it on the demo
model; ARCHITECTURE.md ("A worked example") walks through it.

Run it from Python::

    import explainkit
    from toy_analyzer import ChannelActivity

    explainkit.register_analyzer(ChannelActivity)
    report = explainkit.analyze(handle, probe, [("channel_activity", {"threshold": 0.1})])

or ship it in a package of your own and declare it in the ``explainkit.analyzers`` entry-point group
(``channel_activity = "mypackage.toy_analyzer:ChannelActivity"``) to get ``explainkit analyze
--analyzer channel_activity:threshold=0.1`` and ``explainkit analyzers --params channel_activity``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from explainkit.adapters.layers import default_layer, resolve_layer
from explainkit.analyzers import Analyzer, Batch, Finding, RecordState, RunContext, Section
from explainkit.analyzers.metric import metric
from explainkit.errors import ConfigError
from explainkit.hooks import capture_layers
from explainkit.options import Option
from explainkit.stats import wilson_interval

__all__ = ["ChannelActivity", "pool"]


def pool(activation: torch.Tensor, mode: str) -> torch.Tensor:
    """Spatial pooling of a conv activation: (B, K, h, w) → (B, K) by ``"mean"`` or ``"max"``.

    The library part of the example: a function on tensors, usable without the runner.
    """
    if activation.ndim != 4:
        raise ConfigError(f"channel_activity needs a (B, K, h, w) conv activation, got shape {tuple(activation.shape)}")
    flat = activation.flatten(2)
    return flat.mean(dim=2) if mode == "mean" else flat.amax(dim=2)


class ChannelActivity(Analyzer):
    """How often each channel of a layer is active, with Wilson intervals, and which channels are dead.

    Parameters
    ----------
    layer : str, optional
        The conv layer (default: the run's ``--layer``, else the model's last spatial layer).
    pooling : {"mean", "max"}
        Spatial pooling of each channel's map.
    threshold : float
        Pooled activation above which a channel counts as active on an image.
    top_k : int
        Most often active channels listed in the section.
    """

    name = "channel_activity"
    title = "Channel activity (worked example)"
    summary = "fraction of images on which each channel of a layer is active, with Wilson CIs; dead channels"
    requires = frozenset({"module_hooks"})
    # One declaration per __init__ parameter: type, range or choices, help. The defaults are __init__'s.
    options: ClassVar[dict[str, Option]] = {
        "layer": Option("str", help="conv layer (default: the run's --layer, else the model's last spatial layer)"),
        "pooling": Option("choice", choices=("mean", "max"), help="spatial pooling of each channel's map"),
        "threshold": Option("float", help="pooled activation above which a channel counts as active"),
        "top_k": Option("int", low=1, help="most often active channels listed in the section"),
    }

    def __init__(self, layer: str | None = None, pooling: str = "mean", threshold: float = 0.0,
                 top_k: int = 5) -> None:
        # Parameters only: no checks, no work (get_params() is the provenance record).
        self.layer = layer
        self.pooling = pooling
        self.threshold = threshold
        self.top_k = top_k

    # -- before the first batch -------------------------------------------------------------------
    def _layer_name(self, ctx: RunContext) -> str:
        if self.layer is not None or ctx.layer is not None:
            return self.layer or ctx.layer  # type: ignore[return-value]
        size = tuple(ctx.handle.preprocessing.input_size) if ctx.handle.preprocessing else (224, 224)
        return default_layer(ctx.handle.module, size)

    def validate(self, ctx: RunContext) -> None:
        """The layer must exist in the model (no side effects)."""
        resolve_layer(ctx.handle.module, self._layer_name(ctx))

    def prepare(self, ctx: RunContext) -> None:
        """Resolve the layer once (state ends in ``_``)."""
        self.layer_name_, self.module_ = resolve_layer(ctx.handle.module, self._layer_name(ctx))

    # -- per batch: a mergeable state ---------------------------------------------------------------
    def map(self, ctx: RunContext, batch: Batch) -> RecordState:
        """(B, K) pooled activations of the batch, one record per image."""
        with torch.no_grad(), capture_layers(ctx.handle.module, {self.layer_name_: self.module_},
                                             detach=True, stop_early=True) as cap:
            cap.forward(ctx.handle.forward, batch.inputs)
            pooled = pool(cap[self.layer_name_], self.pooling).float().cpu().numpy()
        return RecordState.from_batch(batch.indices, pooled=list(pooled))

    # RecordState.merge (the default) is a union keyed by probe index: associative and commutative.

    # -- at the end: the section ---------------------------------------------------------------------
    def finalize(self, ctx: RunContext, state: RecordState) -> Section:
        """Per-channel active fractions (Wilson CIs), the top channels and the dead ones."""
        pooled = state.stacked("pooled")  # (N, K), rows in probe order whatever the partition
        n, k = pooled.shape
        active = (pooled > self.threshold).sum(axis=0)
        channels = [metric(a / n, wilson_interval(int(a), n), n=n, unit="fraction of images", channel=c)
                    for c, a in enumerate(active.tolist())]
        order = np.argsort(-active, kind="stable")[: self.top_k]
        dead = [c for c in range(k) if active[c] == 0]
        findings = []
        if dead:
            findings.append(Finding("info", f"{len(dead)} of {k} channels of {self.layer_name_} are never active "
                                    f"(pooled {self.pooling} > {self.threshold:g}) on {n} images", self.name,
                                    {"dead_channels": dead, "n_images": n}))
        return self.section(
            summary={"layer": self.layer_name_, "channels": k, "dead_channels": len(dead), "n_images": n},
            data={"layer": self.layer_name_, "active_fraction": channels,
                  "top_channels": [int(c) for c in order], "dead_channels": dead},
            findings=findings,
        )
