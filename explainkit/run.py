"""The runners: stream a probe set through analyzers and build a :class:`Report`; discover cues.

The serial backend is the reference: any other backend must reproduce its JSON. :func:`discover`
runs the ``discovery`` analyzer and writes the gate policy that would test what it found.
"""

from __future__ import annotations

import os
import random
import time
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from explainkit.adapters.input_kind import bind_input
from explainkit.adapters.layers import resolve_layer
from explainkit.analyzers.base import Analyzer, Finding, Round, RoundRequest, RunContext, TimeBudget, require
from explainkit.analyzers.registry import get_analyzer, get_analyzer_class, list_analyzers
from explainkit.backends import Backend, Outcome, RunPlan, get_backend, guard, label_map
from explainkit.backends.passes import merge_requests, rows_per_pass
from explainkit.backends.plan import validate_output
from explainkit.backends.progress import DEFAULT_INTERVAL_S, Progress
from explainkit.cache import ActivationCache
from explainkit.config import parse_duration
from explainkit.data.open import Probe, open_probe
from explainkit.data.probe import TASKS, ProbeSet
from explainkit.data.volumes import VolumeSet
from explainkit.device import AUTOCAST_DTYPES, resolve_device
from explainkit.discovery.policy import PolicyDraft, draft_policy, policy_context, write_policy
from explainkit.errors import CapabilityError, ConfigError, DataError, RuntimeAnalysisError
from explainkit.gate.policy import parse_policy
from explainkit.loading.handle import ModelHandle
from explainkit.loading.loaders import wrap
from explainkit.options import Option, check_values
from explainkit.outputs import StagedDir
from explainkit.report.build import build_report
from explainkit.report.report import Report

__all__ = ["TASK_OPTION", "AnalyzerSpec", "DiscoveryResult", "analyze", "build_analyzers", "discover", "resolve_device",
           "resolve_task"]

#: An analyzer given by name, ``(name, params)``, ``{"name": ..., **params}`` or an instance.
AnalyzerSpec = str | tuple[str, Mapping[str, Any]] | Mapping[str, Any] | Analyzer
#: Most follow-up rounds a run makes (a safety net; sample stages double, so few are ever needed).
MAX_ROUNDS = 12
#: Share of a time budget kept for finalize (reports, sanity checks) when rounds are planned.
FINALIZE_RESERVE = 0.15
#: ``analyze(task=...)`` / ``--task``: what the model's outputs mean, when not read from the probe set.
TASK_OPTION = Option("choice", None, choices=TASKS,
                     help="the model's task; default: from the probe set (label maps: segmentation; a multi-hot "
                          "labels.csv: multilabel; otherwise classification); must agree with a labelled probe set")
_LAYOUTS = {"segmentation": "label maps labels/<image>.png", "multilabel": "a multi-hot labels.csv",
            "classification": "one class per image"}


def resolve_task(probe: Probe, task: str | None = None) -> str:
    """The task of a run: ``task`` when given (checked against the probe set), else the probe set's.

    Parameters
    ----------
    probe : ProbeSet
        The probe set (its layout says the task: :attr:`ProbeSet.task`).
    task : str, optional
        ``"classification"``, ``"segmentation"`` or ``"multilabel"`` (:data:`TASK_OPTION`).

    Returns
    -------
    str
        The task; ``"classification"`` for an unlabelled probe set without ``task``.

    Raises
    ------
    ConfigError
        An unknown task; :class:`DataError` when it contradicts the probe set's labels.
    """
    check_values("analyze", {"task": TASK_OPTION}, {"task": task})
    found = probe.task
    if task is not None and found is not None and task != found:
        raise DataError(f"task {task!r} does not fit the probe set, which is labelled for {found} "
                        f"({_LAYOUTS[found]}); {task} needs {_LAYOUTS[task]}")
    return task or found or "classification"


def _select(analyzers: Sequence[AnalyzerSpec] | None, params: Mapping[str, Mapping[str, Any]] | None,
            handle: ModelHandle, probe: Probe, task: str) -> tuple[list[Analyzer], list[Finding]]:
    """The analyzers of a run, checked against model, data, task and kind of sample; the defaults left out."""
    runnable = [n for n in list_analyzers() if not (a := get_analyzer_class(n)()).missing_requirements(handle, probe)
                and a.task_problem(task) is None]
    skipped = []
    if analyzers is None:
        analyzers = []
        for n in list_analyzers():
            cls = get_analyzer_class(n)
            if cls.run_by_default and probe.kind not in cls.inputs:
                skipped.append(_kind_skipped(n, probe.kind))
                continue
            if not cls.run_by_default or cls().missing_requirements(handle, probe):
                continue
            if (problem := cls().task_problem(task)) is not None:
                skipped.append(Finding("info", f"{n} skipped: {problem}", n, {"reason": problem}))
                continue
            analyzers.append((n, (params or {}).get(n, {})))
    instances = build_analyzers(analyzers)
    for a in instances:
        a.check_params()
    for a in instances:
        require(a, handle, probe, runnable)
        if (problem := a.task_problem(task)) is not None:
            raise CapabilityError(f"analyzer {a.name!r} cannot run here: {problem}; analyzers that can: "
                                  f"{', '.join(runnable) or 'none'}")
    return instances, skipped


def build_analyzers(specs: Iterable[AnalyzerSpec]) -> list[Analyzer]:
    """Instantiate analyzers from specs; one analyzer per name.

    Parameters
    ----------
    specs : iterable
        Names, ``(name, params)`` pairs, dicts with a ``name`` key, or instances.

    Returns
    -------
    list of Analyzer
        The analyzers, in order.
    """
    out: list[Analyzer] = []
    for spec in specs:
        if isinstance(spec, Analyzer):
            out.append(spec)
        elif isinstance(spec, str):
            out.append(get_analyzer(spec))
        elif isinstance(spec, tuple) and len(spec) == 2:
            out.append(get_analyzer(spec[0], **dict(spec[1])))
        elif isinstance(spec, Mapping) and "name" in spec:
            params = {k: v for k, v in spec.items() if k != "name"}
            out.append(get_analyzer(str(spec["name"]), **params))
        else:
            raise ConfigError(f"cannot read analyzer spec {spec!r}")
    names = [a.name for a in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"analyzer(s) listed twice: {', '.join(dup)}")
    if not out:
        raise ConfigError("no analyzer selected")
    return out


def _open_cache(cache: bool | str | Path | None) -> ActivationCache | None:
    if cache in (None, False):
        return None
    store = ActivationCache(None if cache is True else cache)
    if store.root.exists() and not store.root.is_dir():
        raise ConfigError(f"--cache-dir {store.root} is not a folder")
    return store


def _keep_runnable(instances: list[Analyzer], ctx: RunContext, step: str, explicit: bool,
                   skipped: list[Finding]) -> list[Analyzer]:
    """Run one lifecycle step (``"validate"`` or ``"prepare"``) of every analyzer; those it lets run.

    A default analyzer that cannot run on this model and data (a :class:`ConfigError`, e.g. Grad-CAM
    on a model without spatial layers) is left out with an info finding appended to ``skipped``; one
    the user asked for (``explicit``) fails the run.
    """
    kept = []
    for a in instances:
        try:
            guard(a, step, getattr(a, step), ctx)
        except ConfigError as exc:
            if explicit:
                raise
            skipped.append(Finding("info", f"{a.name} skipped: it cannot run on this model and data ({exc})",
                                   a.name, {"reason": str(exc)}))
            continue
        kept.append(a)
    if not kept:
        raise ConfigError("none of the default analyzers can run here: " + "; ".join(f.message for f in skipped))
    return kept


def _kind_skipped(name: str, kind: str) -> Finding:
    """The info finding of a default analyzer left out because it does not read this kind of sample."""
    reads = sorted(get_analyzer_class(name).inputs)
    return Finding("info", f"{name} skipped: it reads {' or '.join(reads)}, and these probe data are {kind}",
                   name, {"reason": f"reads {' or '.join(reads)}, not {kind}"})


def _seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def analyze(
    handle: ModelHandle | nn.Module,
    data: Probe | str | Path,
    analyzers: Sequence[AnalyzerSpec] | None = None,
    *,
    out: str | Path | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    seed: int = 0,
    layer: str | None = None,
    progress: bool | None = None,
    config: Mapping[str, Any] | None = None,
    asset_budget_bytes: int | None = None,
    backend: str = "serial",
    backend_options: Mapping[str, Any] | None = None,
    cache: bool | str | Path | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    time_budget: float | str | None = None,
    progress_interval: float = DEFAULT_INTERVAL_S,
    autocast: str | None = None,
    task: str | None = None,
) -> Report:
    """Run analyzers over a probe set and return the report.

    Parameters
    ----------
    handle : ModelHandle or torch.nn.Module
        The model (modules are wrapped with :func:`explainkit.wrap`; give preprocessing there).
    data : ProbeSet, VolumeSet or path
        The probe images, or volumes ((C, D, H, W) ``.npy`` / NIfTI files, see
        :mod:`explainkit.data.volumes`) for a volume model; a path is read by
        :func:`explainkit.data.open.open_probe`. On volumes the analyzers that read images only are
        left out with an info finding saying so.
    analyzers : sequence, optional
        Names, ``(name, params)``, ``{"name": ..., **params}`` or instances. By default every
        analyzer marked ``run_by_default`` whose requirements the model and data meet; a default
        analyzer whose check fails (e.g. Grad-CAM on a model without spatial layers) is left out
        with an info finding, while one named here fails the run.
    out : str or Path, optional
        Folder for ``report.json``, ``report.html`` and ``samples/``. It is checked before any model
        pass (a new folder, an empty one, or a previous explainkit output), built beside itself and
        swapped in when the run succeeds (:class:`explainkit.outputs.StagedDir`): a failed run leaves
        the previous outputs as they were, and nothing of an earlier run survives a new one.
    device : str or torch.device
        Where the model runs.
    batch_size : int
        Images per batch.
    seed : int
        Seeds every random choice (analyzers derive their generators from it).
    layer : str, optional
        Default target layer for layer-based analyzers that were not given one.
    progress : bool or None
        Progress on stderr: ``None`` a bar on a terminal and one line per phase at most every
        ``progress_interval`` seconds otherwise (CI logs); ``True`` a bar even when not a terminal;
        ``False`` nothing.
    config : mapping, optional
        The resolved configuration to record in the report.
    asset_budget_bytes : int, optional
        Size budget for embedded images.
    backend : str
        ``"serial"`` (the reference), ``"torchrun"`` (run under ``torchrun``; every rank maps its
        shard, rank 0 writes the report) or ``"ray"`` (Ray Data actors; extra ``explainkit[ray]``).
    backend_options : mapping, optional
        Backend parameters, e.g. ``{"workers": 4, "gpus_per_worker": 1}`` for Ray.
    cache : bool, str or Path, optional
        Reuse per-batch states of analyzers that allow it (INVERT's pooled activations) across runs:
        ``True`` uses :func:`explainkit.cache.default_cache_dir`, a path names the folder (shared by
        every worker), ``None``/``False`` (default) caches nothing.
    params : mapping, optional
        Analyzer name → parameters for the analyzers picked by default (the config file's
        ``[analyzer.NAME]`` tables when ``analyzers`` is not given).
    time_budget : float or str, optional
        Wall-clock budget of the whole run in seconds, or text such as ``"10m"``: analyzers size
        their samples (metric stages, sanity checks, prototype images) to fit and report what they
        cut. ``None``: sample sizes follow the precision rules only (deterministic).
    progress_interval : float
        Least seconds between two progress lines when stderr is not a terminal.
    autocast : {"bfloat16", "float16"}, optional
        Run model passes under CUDA autocast (statistics stay float32); ignored on the CPU.
    task : {"classification", "segmentation", "multilabel"}, optional
        What the model's outputs mean (:func:`resolve_task`; default: from the probe set's layout).
        Default analyzers that cannot read such outputs are left out with an info finding saying why;
        one named in ``analyzers`` fails the run.

    Returns
    -------
    Report
        The report.

    Raises
    ------
    ConfigError, DataError, CapabilityError
        Before anything runs (exit code 2).
    RuntimeAnalysisError
        When the model or an analyzer fails while running (exit code 3).
    """
    t0 = time.perf_counter()
    budget = None if time_budget is None else TimeBudget(parse_duration(time_budget))
    if batch_size < 1:
        raise ConfigError("batch size must be at least 1")
    if autocast is not None and autocast not in AUTOCAST_DTYPES:
        raise ConfigError(f"autocast must be one of {', '.join(AUTOCAST_DTYPES)}, not {autocast!r}")
    if not progress_interval >= 0:
        raise ConfigError("progress interval must be >= 0 seconds")
    runner = get_backend(backend, **(backend_options or {}))
    token, owner = runner.output_role()
    staged = StagedDir(out, token=token, owner=owner) if out is not None else None  # before any model pass
    store = _open_cache(cache)
    handle = wrap(handle) if not isinstance(handle, ModelHandle) else handle
    probe = data if isinstance(data, ProbeSet | VolumeSet) else open_probe(data)
    handle = bind_input(handle, probe)
    task = resolve_task(probe, task)
    explicit = analyzers is not None
    instances, task_skipped = _select(analyzers, params, handle, probe, task)
    handle.require_preprocessing()
    if layer is not None:
        layer = resolve_layer(handle.module, layer)[0]
    dev = resolve_device(device)
    labels_to_outputs, label_mapping = label_map(handle, probe)
    prep = handle.require_preprocessing()
    shape = (prep.channels, *prep.input_size)
    with staged or nullcontext():
        ctx = RunContext(handle=handle, data=probe, device=dev, seed=seed, batch_size=batch_size,
                         out_dir=staged.path if staged else None, config=dict(config or {}), layer=layer,
                         cache=store, budget=budget, autocast=autocast,
                         pass_rows=rows_per_pass(batch_size, shape, dev, gradients=False),
                         grad_rows=rows_per_pass(batch_size, shape, dev, gradients=True), task=task)
        skipped: list[Finding] = list(task_skipped)
        instances = _keep_runnable(instances, ctx, "validate", explicit, skipped)  # no model pass yet
        validate_output(handle, probe, dev, task)  # the first one: (B, K) logits, (B, K, H, W) for segmentation
        instances = _keep_runnable(instances, ctx, "prepare", explicit, skipped)
        _seed_all(seed)
        timings: dict[str, float] = {"setup": time.perf_counter() - t0}
        requests = {a.name: guard(a, "pass_request", a.pass_request, ctx) for a in instances}
        plan = RunPlan(handle=handle, probe=probe, analyzers=instances, label_map=labels_to_outputs,
                       progress=progress, passes=merge_requests(list(requests.values())),
                       pass_rows=ctx.gradient_rows, progress_interval=progress_interval, task=task)
        outcome = runner.run(plan, ctx)
        _add_timings(timings, outcome, "")
        states = _rounds(runner, plan, ctx, outcome, requests, timings)
        sections = []
        for a in instances:
            t = time.perf_counter()
            step = Progress(f"finalize {a.name}", 0, enabled=progress if outcome.is_writer else False,
                            interval=progress_interval)
            sections.append(guard(a, "finalize", a.finalize, ctx, states[a.name]))
            step.close()
            timings[f"{a.name}:finalize"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        report = build_report(
            kind="analysis", sections=sections, handle=handle, data=probe, seed=seed, device=dev,
            batch_size=batch_size, timings=timings,
            config={"autocast": autocast, **dict(config or {}), "backend": outcome.describe,
                    **({"task": task} if task != "classification" else {}),  # classification reports stay as they were
                    "cache": None if store is None else str(store.root),
                    "time_budget_s": None if budget is None else budget.seconds},
            label_mapping=label_mapping, asset_budget_bytes=asset_budget_bytes, findings=skipped,
        )
        if staged is not None and outcome.is_writer:
            report.save(staged.path)
            staged.commit()
    return report


def _add_timings(timings: dict[str, float], outcome: Outcome, suffix: str) -> None:
    for key, value in outcome.timings.items():
        name = f"{key}{suffix}"
        timings[name] = timings.get(name, 0.0) + value


def _rounds(runner: Backend, plan: RunPlan, ctx: RunContext, outcome: Outcome,
            requests: Mapping[str, Any], timings: dict[str, float]) -> dict[str, Any]:
    """Follow-up rounds until no analyzer asks for more (:meth:`Analyzer.next_round`); the merged states."""
    states = dict(outcome.states)
    planners = [a for a in plan.analyzers if type(a).next_round is not Analyzer.next_round]
    for number in range(1, MAX_ROUNDS + 1):
        allowance = None
        if ctx.budget is not None and planners:
            left = ctx.budget.remaining() - FINALIZE_RESERVE * ctx.budget.seconds
            allowance = max(0.0, left) / len(planners)
        wanted: dict[str, RoundRequest] = {}
        for a in planners:
            req = guard(a, "next_round", a.next_round, ctx, states[a.name], number, allowance)
            if req is not None and req.indices:
                wanted[a.name] = req
        if not wanted:
            break
        members = [a for a in plan.analyzers if a.name in wanted]
        indices = np.array(sorted({int(i) for r in wanted.values() for i in r.indices}), dtype=np.int64)
        sub = replace(
            plan, analyzers=members, indices=indices, phase=f"round {number} ({', '.join(wanted)})",
            passes=merge_requests([requests.get(a.name) for a in members]))
        more = runner.run(sub, replace(ctx, round=Round(number, wanted)))
        _add_timings(timings, more, ":rounds")
        for a in members:
            states[a.name] = guard(a, "merge", a.merge, states[a.name], more.states[a.name])
    return states


@dataclass
class DiscoveryResult:
    """What :func:`discover` produced.

    Attributes
    ----------
    report : Report
        The report with the ``discovery`` section.
    policy : PolicyDraft or None
        The generated policy (``None`` when no candidate could be turned into a check).
    paths : dict of str to Path
        Files written (``json``, ``html``, ``policy``).
    """

    report: Report
    policy: PolicyDraft | None
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def candidates(self) -> list[dict[str, Any]]:
        """The candidates, best first."""
        return self.report.section("discovery")["data"]["candidates"]

    @property
    def significant(self) -> list[dict[str, Any]]:
        """The significant candidates, best first."""
        return [c for c in self.candidates if c["significant"]]

    def __repr__(self) -> str:
        top = self.candidates[0]["cue"] if self.candidates else None
        return (f"<DiscoveryResult {len(self.candidates)} candidates, {len(self.significant)} significant, "
                f"top {top!r}>")


def _validate_policy(text: str, folder: Path) -> None:
    try:
        parse_policy(tomllib.loads(text), base_dir=folder, name="policy.toml", text=text)
    except (ConfigError, tomllib.TOMLDecodeError) as exc:
        raise RuntimeAnalysisError(f"the generated policy is invalid (a bug): {exc}") from exc


def discover(
    handle: ModelHandle | nn.Module,
    data: Probe | str | Path,
    *,
    out: str | Path | None = None,
    params: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    seed: int = 0,
    layer: str | None = None,
    progress: bool | None = None,
    config: Mapping[str, Any] | None = None,
    asset_budget_bytes: int | None = None,
    backend: str = "serial",
    backend_options: Mapping[str, Any] | None = None,
    policy_top: int = 5,
) -> DiscoveryResult:
    """Rank candidate spurious cues of a model on a probe set; write the report and a policy testing them.

    Parameters
    ----------
    handle : ModelHandle or torch.nn.Module
        The model (modules are wrapped with :func:`explainkit.wrap`; give preprocessing there).
    data : ProbeSet or path
        Labelled probe images (a concept table, object masks and artifact marks add sources).
    out : str or Path, optional
        Folder for ``report.json``, ``report.html``, ``policy.toml`` and ``members/`` (each file
        written atomically).
    params : mapping, optional
        Parameters of the ``discovery`` analyzer (``tau``, ``alpha``, ``correction``, ``sources``, ...).
    device, batch_size, seed, layer, progress, config, asset_budget_bytes, backend, backend_options
        As for :func:`analyze` (``layer`` is the embedding layer).
    policy_top : int
        Cue groups the policy covers.

    Returns
    -------
    DiscoveryResult
        The report, the policy draft and the written paths.

    Examples
    --------
    >>> result = explainkit.discover(handle, "probe/", out="discover-out")  # doctest: +SKIP
    >>> result.candidates[0]["cue"], result.candidates[0]["p_adj"]  # doctest: +SKIP
    ('stamp', 2.4e-36)
    """
    if policy_top < 1:
        raise ConfigError("policy_top must be at least 1")
    probe = data if isinstance(data, ProbeSet | VolumeSet) else open_probe(data)
    report = analyze(handle, probe, [("discovery", dict(params or {}))], device=device, batch_size=batch_size,
                     seed=seed, layer=layer, progress=progress,
                     config={**dict(config or {}), "policy_top": policy_top},
                     asset_budget_bytes=asset_budget_bytes, backend=backend, backend_options=backend_options)
    section = report.section("discovery")
    folder = Path(out) if out is not None else Path.cwd()
    draft = draft_policy(section["data"]["candidates"], policy_context(probe, folder), top=policy_top,
                         alpha=section["params"]["alpha"], seed=seed, source=f"explainkit discover on {probe.root}")
    for c in section["data"]["candidates"]:
        c["checks"] = draft.checks.get(c["id"], []) if draft else []
    section["data"]["policy"] = {"file": "policy.toml" if draft else None, "top": policy_top,
                                 "note": None if draft else "no candidate could be turned into a check"}
    result = DiscoveryResult(report=report, policy=draft)
    if out is not None and (backend != "torchrun" or os.environ.get("RANK", "0") == "0"):
        if draft is not None:
            result.paths["policy"] = write_policy(draft, folder, _validate_policy)
        result.paths.update(report.save(folder))
    return result
