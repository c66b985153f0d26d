"""What every backend runs: map a shard of the probe set through the analyzers, batch by batch."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from explainkit._prefetch import prefetch
from explainkit.adapters.targets import check_logits
from explainkit.analyzers.base import Analyzer, Batch, RunContext
from explainkit.backends.mapcache import MapCache
from explainkit.data.probe import ProbeSet
from explainkit.errors import DataError, ExplainkitError, RuntimeAnalysisError
from explainkit.hooks import capture_layers, eval_mode
from explainkit.loading.handle import ModelHandle

_log = logging.getLogger(__name__)

__all__ = ["Outcome", "RunPlan", "guard", "label_map", "make_batch", "map_shard", "merge_states", "shard_indices",
           "validate_output"]


@dataclass
class RunPlan:
    """The checked, ready-to-run description of an analysis (picklable for remote workers)."""

    handle: ModelHandle
    probe: ProbeSet
    analyzers: list[Analyzer]
    label_map: np.ndarray | None
    progress: bool | None = None


@dataclass
class Outcome:
    """Merged analyzer states from a backend, plus timing and where the run happened."""

    states: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    is_writer: bool = True
    describe: dict[str, Any] = field(default_factory=lambda: {"name": "serial"})


def shard_indices(n: int, rank: int, world: int) -> np.ndarray:
    """Indices of shard ``rank`` of ``world``: every ``world``-th sample in sorted-id order.

    Shards are disjoint, cover every sample exactly once, and depend only on the sample order,
    never on timing (unlike ``DistributedSampler``, nothing is padded or dropped).
    """
    return np.arange(rank, n, world, dtype=np.int64)


def guard(analyzer: Analyzer, step: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Call an analyzer step; unexpected exceptions become a :class:`RuntimeAnalysisError` naming it."""
    try:
        return fn(*args)
    except ExplainkitError:
        raise
    except torch.cuda.OutOfMemoryError as exc:
        raise RuntimeAnalysisError(
            f"analyzer {analyzer.name!r} ran out of GPU memory in {step}; lower --batch-size"
        ) from exc
    except Exception as exc:
        raise RuntimeAnalysisError(
            f"analyzer {analyzer.name!r} failed in {step}: {type(exc).__name__}: {exc}") from exc


def label_map(handle: ModelHandle, data: ProbeSet) -> tuple[np.ndarray | None, str | None]:
    """Map probe-set class indices to model output indices by name.

    Returns
    -------
    label_map : ndarray or None
        (C,) model output index of each probe class (``None`` for an unlabelled probe set).
    how : str or None
        How the classes were matched, for provenance.

    Raises
    ------
    DataError
        A probe class the model does not know.
    """
    if data.class_names is None:
        return None, None
    if handle.class_names is None:
        _log.warning("model has no class names; assuming its outputs follow the probe set's sorted class folders")
        return np.arange(len(data.class_names)), "probe-set class order (model has no class names)"
    missing = [c for c in data.class_names if c not in handle.class_names]
    if missing:
        raise DataError(
            f"probe classes not among the model's class names: {', '.join(missing[:5])}"
        )
    return np.array([handle.class_names.index(c) for c in data.class_names]), "by class name"


#: Analyzer name → layer → ``(module, transform)`` (see :meth:`Analyzer.captures`).
Captures = dict[str, dict[str, tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]]]


def _forward(handle: ModelHandle, inputs: torch.Tensor, captures: Captures | None = None
             ) -> tuple[Any, dict[str, dict[str, torch.Tensor]]]:
    """The model output, and the captured layer outputs of the same pass (trimmed to the batch)."""
    flat = {f"{a}\x00{layer}": spec for a, layers in (captures or {}).items() for layer, spec in layers.items()}
    try:
        with torch.no_grad():
            if not flat:
                return handle.forward(inputs), {}
            with capture_layers(handle.module, {k: m for k, (m, _) in flat.items()}, detach=True,
                                transform={k: f for k, (_, f) in flat.items()}) as cap:
                output = handle.forward(inputs)
    except ExplainkitError:
        raise
    except Exception as exc:
        raise RuntimeAnalysisError(f"the model failed on a batch of {len(inputs)} images: {exc}") from exc
    captured: dict[str, dict[str, torch.Tensor]] = {}
    for k in flat:
        a, layer = k.split("\x00", 1)
        captured.setdefault(a, {})[layer] = cap[k][: inputs.shape[0]]
    return output, captured


def validate_output(handle: ModelHandle, probe: ProbeSet, device: torch.device) -> None:
    """Check once, before any analysis, that the model gives (B, K) logits for probe images.

    One forward pass on the first (up to) two images: the output must hold one floating-point
    tensor of shape (B, K) (or (B,)), selected as :func:`explainkit.adapters.select_logits` says
    (``--output-key`` for dicts and tuples), with K equal to the number of the model's class names,
    or at least the probe set's classes when the model has none.

    Raises
    ------
    ConfigError
        The output does not fit (exit code 2).
    RuntimeAnalysisError
        The model raised (exit code 3).
    """
    indices = np.arange(min(2, len(probe)))
    inputs = handle.preprocess([probe.load_image(int(i)) for i in indices]).to(device)
    handle.to(device)
    with eval_mode(handle.module):
        output, _ = _forward(handle, inputs)
    if handle.class_names:
        check_logits(output, len(indices), len(handle.class_names))
    elif probe.class_names:
        check_logits(output, len(indices), len(probe.class_names), "classes of the probe set", at_least=True)
    else:
        check_logits(output, len(indices))


def make_batch(handle: ModelHandle, probe: ProbeSet, indices: np.ndarray, images: list,
               inputs: torch.Tensor, label_map: np.ndarray | None, captures: Captures | None = None) -> Batch:
    """Run the plain forward pass for a batch and package what analyzers see.

    Layers named in ``captures`` are recorded during this same pass (``Batch.captured``).
    """
    output, captured = _forward(handle, inputs, captures)
    logits = check_logits(output, len(images))
    if not torch.isfinite(logits).all():
        bad = [probe.ids[int(indices[i])] for i in torch.nonzero(~torch.isfinite(logits).all(1)).flatten()[:3]]
        raise RuntimeAnalysisError(f"the model produced non-finite outputs (NaN/inf) for {', '.join(bad)}")
    labels = probe.labels[indices]
    if label_map is not None:
        labels = np.where(labels >= 0, label_map[np.clip(labels, 0, None)], -1)
    return Batch(
        indices=indices, ids=[probe.ids[int(i)] for i in indices], inputs=inputs, images=images,
        labels=torch.as_tensor(labels, dtype=torch.long),
        concepts=None if probe.concepts is None else probe.concepts[indices],
        output=output, logits=logits, captured=captured,
    )


def map_shard(plan: RunPlan, ctx: RunContext, indices: Sequence[int], *, desc: str = "analyze"
              ) -> tuple[dict[str, Any], dict[str, float]]:
    """Map the samples at ``indices`` through every analyzer and merge per analyzer.

    Parameters
    ----------
    plan : RunPlan
        What to run.
    ctx : RunContext
        The context of this worker (its device).
    indices : sequence of int
        The shard, in order.
    desc : str
        Progress-bar label.

    Returns
    -------
    states : dict
        Analyzer name → merged state of the shard.
    timings : dict
        Seconds spent in the forward pass and in each analyzer.
    """
    handle, probe = plan.handle, plan.probe
    timings = {"forward": 0.0, **{a.name: 0.0 for a in plan.analyzers}}
    states = {a.name: a.init_state(ctx) for a in plan.analyzers}
    indices = np.asarray(indices, dtype=np.int64)
    cache = MapCache(plan, ctx)
    todo = []
    for start in range(0, len(indices), ctx.batch_size):
        chunk = indices[start : start + ctx.batch_size]
        ids = [probe.ids[int(i)] for i in chunk]
        hits = {a.name: s for a in plan.analyzers if (s := cache.get(a.name, ids, chunk)) is not None}
        if len(hits) == len(plan.analyzers) and cache.covers(plan.analyzers):
            for a in plan.analyzers:
                states[a.name] = a.merge(states[a.name], hits[a.name])
        else:
            todo.append((chunk, ids, hits))
    prep = handle.require_preprocessing()
    captures = {a.name: c for a in plan.analyzers if (c := a.captures(ctx))}
    loaded = prefetch((chunk, ids, hits, images, prep(images)) for chunk, ids, hits in todo
                      for _, images in probe.iter_batches(ctx.batch_size, chunk))
    handle.to(ctx.device)
    with eval_mode(handle.module):
        for chunk, ids, hits, images, inputs in tqdm(
                loaded, total=len(todo), file=sys.stderr, desc=desc, unit="batch", leave=False,
                disable=None if plan.progress is None else not plan.progress):
            t = time.perf_counter()
            batch = make_batch(handle, probe, chunk, images, inputs.to(ctx.device), plan.label_map, captures)
            timings["forward"] += time.perf_counter() - t
            for a in plan.analyzers:
                t = time.perf_counter()
                part = hits.get(a.name)
                if part is None:
                    part = guard(a, "map", a.map, ctx, batch)
                    cache.put(a.name, ids, part)
                states[a.name] = a.merge(states[a.name], part)
                timings[a.name] += time.perf_counter() - t
    return states, timings


def merge_states(plan: RunPlan, parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Merge per-shard states analyzer by analyzer, in the given (deterministic) order."""
    merged = dict(parts[0])
    for part in parts[1:]:
        for a in plan.analyzers:
            merged[a.name] = guard(a, "merge", a.merge, merged[a.name], part[a.name])
    return merged
