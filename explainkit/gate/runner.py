"""``explainkit.check``: run a policy's checks on a model and decide the gate.

Order of work: validate the policy and every check's data (errors here are usage errors, exit
code 2, before any model pass), run each check (a check that cannot run becomes ERROR, the others
still run), adjust the p-values across checks, decide each check, apply waivers, and build one
JSON report (kind ``"check"``) from which HTML, JUnit, annotations and the text summary are
rendered.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from explainkit._io import atomic_write_text
from explainkit.analyzers.base import RunContext
from explainkit.analyzers.metric import metric
from explainkit.backends.plan import validate_output
from explainkit.data.probe import ProbeSet
from explainkit.device import resolve_device
from explainkit.errors import CapabilityError, ConfigError, ExplainkitError
from explainkit.gate.decision import POWER, decide, finite_or_nan, gate_verdict, minimal_detectable_effect
from explainkit.gate.junit import to_junit_xml
from explainkit.gate.kinds import CheckContext, CheckKind, Measurement, get_check_kind
from explainkit.gate.policy import Policy, load_policy, parse_policy
from explainkit.hooks import eval_mode
from explainkit.loading.handle import ModelHandle
from explainkit.loading.loaders import wrap
from explainkit.outputs import StagedDir, check_output_file
from explainkit.report import Report
from explainkit.report.build import build_report
from explainkit.report.section import Finding, Section
from explainkit.stats import adjust_pvalues

__all__ = ["GateResult", "check"]

_log = logging.getLogger(__name__)
_SECTION = "gate"


@dataclass
class GateResult:
    """The outcome of :func:`check`: the JSON report and the decision derived from it.

    Attributes
    ----------
    report : Report
        The report (``kind == "check"``); ``report["checks"]`` holds one record per check.
    exit_code : int
        What ``explainkit check`` exits with (0 pass, 1 fail, 3 a gating check could not run).
    status : str
        ``pass``, ``fail``, ``inconclusive`` or ``error``.
    reasons : list of str
        The checks (and expired waivers) behind the status.
    paths : dict of str to Path
        Files written (``json``, ``html``, ``junit``).
    """

    report: Report
    exit_code: int
    status: str
    reasons: list[str]
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def checks(self) -> list[dict[str, Any]]:
        """One record per check, in policy order."""
        return self.report["checks"]

    @property
    def passed(self) -> bool:
        """Whether the gate lets the model through (exit code 0)."""
        return self.exit_code == 0

    def check(self, check_id: str) -> dict[str, Any]:
        """The record of ``check_id``."""
        for c in self.checks:
            if c["id"] == check_id:
                return c
        raise KeyError(f"no check {check_id!r} (have: {', '.join(c['id'] for c in self.checks)})")

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (a copy)."""
        return self.report.to_dict()

    def __repr__(self) -> str:
        states = ", ".join(f"{c['id']}={c['status'].upper()}" for c in self.checks)
        return f"<GateResult {self.status.upper()} exit={self.exit_code} [{states}]>"


def _as_policy(policy: Policy | Mapping[str, Any] | str | Path) -> Policy:
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, Mapping):
        return parse_policy(policy)
    return load_policy(policy)


def _measure(kind: CheckKind, cc: CheckContext) -> tuple[Measurement | None, str | None]:
    """Run one check; a check that cannot run returns its one-line error instead of raising."""
    cc.started = time.perf_counter()
    try:
        kind.ensure_runnable(cc)
        return kind.measure(cc), None
    except CapabilityError as exc:
        return None, str(exc)
    except ConfigError:
        raise
    except ExplainkitError as exc:
        return None, str(exc)
    except torch.cuda.OutOfMemoryError:
        return None, "out of GPU memory; lower --batch-size"
    except Exception as exc:  # a crash in one check must not hide the others' results
        _log.debug("check %s crashed", cc.spec.id, exc_info=True)
        return None, f"internal error: {type(exc).__name__}: {exc}"


def _record(kind: CheckKind, cc: CheckContext, m: Measurement | None, error: str | None, p_adj: float,
            policy: Policy, alpha_mde: float, today: dt.date, elapsed: float) -> dict[str, Any]:
    spec, d = cc.spec, policy.defaults
    if m is None:
        status, reason = "error", error or "the check did not run"
    else:
        status, reason = decide(m, p_adj=p_adj, alpha=d.alpha, tau=spec.tau, min_images=d.min_images)
    waiver = policy.waiver_for(spec.id)
    active = waiver is not None and not waiver.expired(today)
    target = None
    if spec.target_class is not None:
        try:
            target = {"requested": spec.target_class, "index": cc.target_index(), "name": cc.target_name()}
        except ConfigError:
            target = {"requested": spec.target_class}
    return {
        "id": spec.id, "kind": spec.kind, "title": kind.title, "severity": spec.severity,
        "gating": spec.severity == "error" and not active, "status": status, "reason": reason,
        "effect": metric(m.effect if m else None, m.ci if m else None, n=m.n if m else 0,
                         unit=m.unit if m else "", higher_is_better=False),
        "metrics": m.metrics if m else {},
        "p": m.p if m else None, "p_adj": p_adj, "correction": policy.defaults.multiplicity,
        "alpha": d.alpha, "ci_level": d.ci, "tau": spec.tau,
        "mde": minimal_detectable_effect(m.se, alpha_mde) if m else None,
        "mde_definition": f"effect detected with {POWER:.0%} power by the one-sided test at level {alpha_mde:.3g}",
        "n": m.n if m else 0, "n_planned": m.n_planned if m else 0, "truncated": bool(m and m.truncated),
        "seed": spec.seed, "test": m.test if m else {}, "notes": m.notes if m else [],
        "waiver": waiver.to_dict(today) if waiver else None, "line": spec.line, "description": spec.description,
        "target_class": target, "error": error,
        "provenance": {**kind.provenance(cc), "options": spec.to_dict()["options"], "max_images": spec.max_images,
                       "time_budget_s": spec.time_budget_s, "elapsed_s": round(elapsed, 4)},
        "details": m.details if m else {}, "examples": m.examples if m else [],
    }


def _findings(records: list[dict[str, Any]]) -> list[Finding]:
    out = []
    for c in records:
        waiver = c["waiver"]
        if waiver and waiver["expired"]:
            out.append(Finding("error", f"{c['id']}: waiver expired on {waiver['expires']} ({waiver['reason']})",
                               _SECTION, {"check": c["id"]}))
        if c["status"] == "pass":
            continue
        severe = c["gating"] and c["status"] in ("fail", "error")
        note = "" if c["gating"] or not waiver else f" (waived until {waiver['expires']}: {waiver['reason']})"
        out.append(Finding("error" if severe else "warning",
                           f"{c['id']} ({c['kind']}): {c['status'].upper()}: {c['reason']}{note}",
                           _SECTION, {"check": c["id"], "status": c["status"]}))
    return out


def check(
    handle: ModelHandle | nn.Module,
    policy: Policy | Mapping[str, Any] | str | Path,
    *,
    out: str | Path | None = None,
    junit: str | Path | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    progress: bool | None = None,
    today: dt.date | None = None,
    config: Mapping[str, Any] | None = None,
    asset_budget_bytes: int | None = None,
    follow_symlinks: bool = False,
) -> GateResult:
    """Run the checks of a policy on a model and decide the gate.

    Parameters
    ----------
    handle : ModelHandle or torch.nn.Module
        The model (modules are wrapped with :func:`explainkit.wrap`; give preprocessing there).
    policy : Policy, mapping or path
        A policy file (TOML), its parsed mapping (paths relative to the working directory), or a
        :class:`~explainkit.gate.policy.Policy`.
    out : str or Path, optional
        Folder for ``report.json`` and ``report.html``: checked before any model pass, built beside
        itself and swapped in at the end (a failed run leaves the previous outputs as they were).
    junit : str or Path, optional
        Where to write the JUnit XML (checked before any model pass; inside ``out`` it is swapped in
        with the report).
    device : str or torch.device
        Where the model runs.
    batch_size : int
        Rows per forward pass (clean, treated and control images together).
    progress : bool or None
        Progress bars on stderr; ``None``: only on a terminal.
    today : datetime.date, optional
        The date waivers are compared with (default: today).
    config : mapping, optional
        Resolved configuration to record (the CLI passes its options).
    asset_budget_bytes : int, optional
        Size budget of the report's example images.
    follow_symlinks : bool
        Read probe files that are symlinks resolving outside their folder.

    Returns
    -------
    GateResult
        The report, exit code, status and the reasons.

    Raises
    ------
    ConfigError, DataError
        Invalid policy or data (exit code 2), before any check runs.

    Examples
    --------
    >>> result = explainkit.check(handle, "policy.toml", out="gate-out")  # doctest: +SKIP
    >>> result.check("spurious.stamp")["status"]  # doctest: +SKIP
    'fail'
    """
    t0 = time.perf_counter()
    if batch_size < 1:
        raise ConfigError("batch size must be at least 1")
    staged = StagedDir(out) if out is not None else None  # output paths before any model pass
    if junit is not None:
        check_output_file(junit, "--junit")
    handle = wrap(handle) if not isinstance(handle, ModelHandle) else handle
    policy = _as_policy(policy)
    handle.require_preprocessing()
    dev = resolve_device(device)
    today = today or dt.date.today()
    probes: dict[Path, ProbeSet] = {}
    runs: list[tuple[CheckKind, CheckContext]] = []
    for spec in policy.checks:
        if spec.data not in probes:
            probes[spec.data] = ProbeSet.from_folder(spec.data, follow_symlinks=follow_symlinks)
        task = probes[spec.data].task or "classification"
        kind = get_check_kind(spec.kind)(spec, policy.defaults)
        if task not in kind.tasks:
            raise ConfigError(f"check {spec.id!r}: kind {spec.kind!r} measures the outputs of "
                              f"{' or '.join(sorted(kind.tasks))} models, and its probe set {spec.data} is labelled "
                              f"for {task}; use explainkit analyze for {task} models")
        ctx = RunContext(handle=handle, data=probes[spec.data], device=dev, seed=spec.seed, batch_size=batch_size,
                         task=task)
        cc = CheckContext(spec=spec, defaults=policy.defaults, run=ctx, progress=progress)
        kind.prepare(cc)
        runs.append((kind, cc))
    for probe in probes.values():  # the first model passes, once every policy and data check has passed
        validate_output(handle, probe, dev)
    timings: dict[str, float] = {"setup": time.perf_counter() - t0}
    handle.to(dev)
    measured = []
    with eval_mode(handle.module):
        for kind, cc in runs:
            m, error = _measure(kind, cc)
            timings[cc.spec.id] = time.perf_counter() - cc.started
            measured.append((m, error))
    pvals = finite_or_nan([m.p if m is not None else None for m, _ in measured])
    p_adj = adjust_pvalues(pvals, policy.defaults.multiplicity)
    n_tests = max(1, int(sum(1 for p in pvals if p == p)))
    alpha_mde = policy.defaults.alpha / (n_tests if policy.defaults.multiplicity != "none" else 1)
    records = [_record(kind, cc, m, error, float(p), policy, alpha_mde, today, timings[cc.spec.id])
               for (kind, cc), (m, error), p in zip(runs, measured, p_adj)]
    code, status, reasons = gate_verdict(records, on_inconclusive=policy.defaults.on_inconclusive, today=today)
    assets = {k: v for m, _ in measured if m is not None for k, v in m.assets.items()}
    counts = {s: sum(1 for c in records if c["status"] == s) for s in ("pass", "fail", "inconclusive", "error")}
    section = Section(
        analyzer=_SECTION, title="Spurious-correlation gate",
        params={"policy": policy.source, "policy_sha256": policy.sha256, **vars(policy.defaults)},
        summary={"status": status.upper(), "exit_code": code, **counts},
        data={"reasons": reasons, "today": today.isoformat(), "policy": policy.to_dict()},
        findings=_findings(records), assets=assets,
    )
    timings["total"] = time.perf_counter() - t0
    report = build_report(
        kind="check", sections=[section], handle=handle, data=None, seed=policy.defaults.seed, device=dev,
        batch_size=batch_size, config={**dict(config or {}), "policy": policy.source, "policy_sha256": policy.sha256},
        timings=timings, status=status, extra={"checks": records, "exit_code": code},
        asset_budget_bytes=asset_budget_bytes,
    )
    result = GateResult(report=report, exit_code=code, status=status, reasons=reasons)
    _write_outputs(result, staged, junit)
    return result


def _write_outputs(result: GateResult, staged: StagedDir | None, junit: str | Path | None) -> None:
    """Report (and JUnit inside ``out``) into the staging folder, swapped in; JUnit elsewhere after."""
    junit_inside = None
    if staged is not None and junit is not None:
        try:
            junit_inside = Path(junit).resolve().relative_to(staged.target.resolve())
        except ValueError:
            junit_inside = None
    with staged or nullcontext():
        if staged is not None:
            written = result.report.save(staged.path)
            if junit_inside is not None:
                atomic_write_text(staged.path / junit_inside, to_junit_xml(result.report.data))
            staged.commit()
            result.paths.update({k: staged.target / v.name for k, v in written.items()})
    if junit is not None:
        if junit_inside is None:
            atomic_write_text(junit, to_junit_xml(result.report.data))
        result.paths["junit"] = Path(junit)
