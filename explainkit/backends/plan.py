"""What every backend runs: map a shard of the probe set through the analyzers, batch by batch."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from explainkit._prefetch import prefetch
from explainkit.adapters.targets import check_logits
from explainkit.analyzers.base import Analyzer, Batch, PassRequest, RunContext
from explainkit.backends.mapcache import MapCache
from explainkit.backends.passes import merge_requests, run_passes
from explainkit.backends.progress import DEFAULT_INTERVAL_S, Progress
from explainkit.data.probe import ProbeSet
from explainkit.device import release_host_memory
from explainkit.errors import DataError, ExplainkitError, RuntimeAnalysisError
from explainkit.hooks import eval_mode
from explainkit.loading.handle import ModelHandle

_log = logging.getLogger(__name__)

__all__ = ["Outcome", "RunPlan", "guard", "label_map", "make_batch", "map_shard", "merge_states", "shard_indices",
           "validate_output"]


@dataclass
class RunPlan:
    """The checked, ready-to-run description of an analysis (picklable for remote workers).

    ``passes`` are the merged shared-pass requests per target (:func:`~explainkit.backends.passes.
    merge_requests`; ``None``: merged from the analyzers' own requests), run in chunks of ``pass_rows``
    rows; ``indices`` restricts a follow-up round to some samples (``None``: every sample); ``phase``
    names the pass in progress lines; ``task`` is what the outputs mean (``segmentation``:
    :attr:`Batch.logits` holds (B, K, H, W) scores).
    """

    handle: ModelHandle
    probe: ProbeSet
    analyzers: list[Analyzer]
    label_map: np.ndarray | None
    progress: bool | None = None
    passes: dict[str, PassRequest] | None = None
    pass_rows: int | None = None
    indices: np.ndarray | None = None
    phase: str = "analyze"
    progress_interval: float = DEFAULT_INTERVAL_S
    task: str = "classification"

    def sample_indices(self) -> np.ndarray:
        """The samples this plan maps, in order."""
        if self.indices is None:
            return np.arange(len(self.probe), dtype=np.int64)
        return np.asarray(self.indices, dtype=np.int64)


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
    """Call an analyzer step; unexpected exceptions become a :class:`RuntimeAnalysisError` naming it.

    The C heap's free pages go back to the system after each step (:func:`release_host_memory`), so
    that what a step freed (an autograd graph, a model copy) is not kept beside what the next allocates.
    """
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
    finally:
        release_host_memory()


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


def _forward(handle: ModelHandle, inputs: torch.Tensor, passes: dict[str, PassRequest] | None = None,
             labels: torch.Tensor | None = None, *, rows: int | None = None, amp: str | None = None
             ) -> tuple[Any, dict[str, Any]]:
    """The batch's shared pass (:func:`run_passes`; the plain forward pass without requests), errors mapped."""
    try:
        return run_passes(handle, inputs, passes or {}, labels, rows=rows, amp=amp)
    except ExplainkitError:
        raise
    except Exception as exc:
        raise RuntimeAnalysisError(f"the model failed on a batch of {len(inputs)} images: {exc}") from exc


def validate_output(handle: ModelHandle, probe: ProbeSet, device: torch.device, task: str = "classification") -> None:
    """Check once, before any analysis, that the model gives (B, K) logits for probe images.

    One forward pass on the first (up to) two images: the output must hold one floating-point
    tensor of shape (B, K) (or (B,)), selected as :func:`explainkit.adapters.select_logits` says
    (``--output-key`` for dicts and tuples), with K equal to the number of the model's class names,
    or at least the probe set's classes when the model has none. A ``segmentation`` task needs
    (B, K, H, W) scores instead (a dict's ``"out"`` as torchvision returns it), and a 4-D output of
    any other task is refused as what it is (:func:`explainkit.adapters.check_logits`).

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
    dense = task == "segmentation"
    if handle.class_names:
        check_logits(output, len(indices), len(handle.class_names), dense=dense)
    elif probe.class_names:
        check_logits(output, len(indices), len(probe.class_names), "classes of the probe set", at_least=True,
                     dense=dense)
    else:
        check_logits(output, len(indices), dense=dense)


def make_batch(handle: ModelHandle, probe: ProbeSet, indices: np.ndarray, images: list,
               inputs: torch.Tensor, label_map: np.ndarray | None,
               passes: dict[str, PassRequest] | None = None, *, rows: int | None = None,
               amp: str | None = None, dense: bool = False) -> Batch:
    """Run the batch's shared pass (the plain forward pass when nothing else is requested) and package it.

    ``dense``: the model gives (B, K, H, W) class scores (a segmentation task), kept as the batch's logits.
    """
    labels = probe.labels[indices]
    if label_map is not None:
        labels = np.where(labels >= 0, label_map[np.clip(labels, 0, None)], -1)
    label_t = torch.as_tensor(labels, dtype=torch.long)
    output, results = _forward(handle, inputs, passes, label_t, rows=rows, amp=amp)
    logits = check_logits(output, len(images), dense=dense)
    if not torch.isfinite(logits).all():
        finite = torch.isfinite(logits).flatten(1).all(1)
        bad = [probe.ids[int(indices[i])] for i in torch.nonzero(~finite).flatten()[:3]]
        raise RuntimeAnalysisError(f"the model produced non-finite outputs (NaN/inf) for {', '.join(bad)}")
    return Batch(
        indices=indices, ids=[probe.ids[int(i)] for i in indices], inputs=inputs, images=images,
        labels=label_t, concepts=None if probe.concepts is None else probe.concepts[indices],
        output=output, logits=logits, passes=results,
    )


def map_shard(plan: RunPlan, ctx: RunContext, indices: Sequence[int], *, desc: str | None = None
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
    desc : str, optional
        Progress label (default: the plan's phase).

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
    cache = MapCache(plan, ctx if ctx.round is None else dataclasses.replace(ctx, cache=None))  # rounds: never
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
    passes = plan.passes if plan.passes is not None else merge_requests(
        [guard(a, "pass_request", a.pass_request, ctx) for a in plan.analyzers])
    cuda = ctx.device.type == "cuda"
    fmt = torch.channels_last if cuda and probe.kind == "images" else None  # a 4-D memory format: images only

    def staged(images: list) -> torch.Tensor:
        x = prep(images)
        return x.pin_memory() if cuda else x

    loaded = prefetch((chunk, ids, hits, images, staged(images)) for chunk, ids, hits in todo
                      for _, images in probe.iter_batches(ctx.batch_size, chunk))
    handle.to(ctx.device)
    if fmt is not None:
        handle.module.to(memory_format=fmt)
    progress = Progress(desc or plan.phase, sum(len(c) for c, _, _ in todo), enabled=plan.progress,
                        interval=plan.progress_interval)
    with eval_mode(handle.module):
        for chunk, ids, hits, images, inputs in loaded:
            t = time.perf_counter()
            x = inputs.to(ctx.device, non_blocking=True)
            batch = make_batch(handle, probe, chunk, images, x.contiguous(memory_format=fmt) if fmt
                               else x, plan.label_map, passes, rows=plan.pass_rows, amp=ctx.autocast,
                               dense=plan.task == "segmentation")
            timings["forward"] += time.perf_counter() - t
            for a in plan.analyzers:
                t = time.perf_counter()
                part = hits.get(a.name)
                if part is None:
                    part = guard(a, "map", a.map, ctx, batch)
                    cache.put(a.name, ids, part)
                states[a.name] = a.merge(states[a.name], part)
                timings[a.name] += time.perf_counter() - t
            progress.update(len(chunk))
    progress.close()
    return states, timings


def merge_states(plan: RunPlan, parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Merge per-shard states analyzer by analyzer, in the given (deterministic) order."""
    merged = dict(parts[0])
    for part in parts[1:]:
        for a in plan.analyzers:
            merged[a.name] = guard(a, "merge", a.merge, merged[a.name], part[a.name])
    return merged
