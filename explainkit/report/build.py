"""Assemble the versioned JSON report from analyzer sections and run provenance (``analyze`` and ``check``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from explainkit.data.probe import ProbeSet
from explainkit.loading.handle import ModelHandle
from explainkit.provenance import versions
from explainkit.report.assets import AssetStore
from explainkit.report.report import SCHEMA_VERSION, Report
from explainkit.report.section import Finding, Section

__all__ = ["build_report"]

_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


def build_report(
    *,
    kind: str,
    sections: Sequence[Section],
    handle: ModelHandle,
    data: ProbeSet | None,
    seed: int,
    device: torch.device | str,
    batch_size: int,
    config: Mapping[str, Any],
    timings: Mapping[str, float],
    label_mapping: str | None = None,
    status: str | None = None,
    extra: Mapping[str, Any] | None = None,
    asset_budget_bytes: int | None = None,
    findings: Sequence[Finding] = (),
) -> Report:
    """Assemble the JSON report from sections (used by ``analyze`` and ``check``).

    Parameters
    ----------
    kind : str
        ``"analysis"`` or ``"check"``.
    sections : sequence of Section
        Analyzer results.
    handle, data : ModelHandle, ProbeSet or None
        For provenance.
    seed, device, batch_size, config, timings, label_mapping
        Run provenance.
    status : str, optional
        Overall status; default ``"findings"`` when any warning/error finding exists, else ``"ok"``.
    extra : mapping, optional
        More top-level keys (``checks``, ``exit_code``).
    asset_budget_bytes : int, optional
        Size budget of embedded images.
    findings : sequence of Finding
        Findings of the run itself (e.g. default analyzers left out), besides the sections' own.

    Returns
    -------
    Report
        The report.
    """
    store = AssetStore() if asset_budget_bytes is None else AssetStore(budget_bytes=asset_budget_bytes)
    findings = list(findings)
    for s in sections:
        for key, uri in s.assets.items():
            store.add(f"{s.analyzer}:{key}", uri)
        findings.extend(s.findings)
    findings.sort(key=lambda f: _SEVERITY_ORDER.get(f.severity, 9))
    if status is None:
        status = "findings" if any(f.severity in ("warning", "error") for f in findings) else "ok"
    doc = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "created_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "status": status,
        "provenance": {
            "versions": versions(),
            "model": handle.describe(),
            "data": data.describe() if data is not None else None,
            "seed": seed,
            "device": str(device),
            "batch_size": batch_size,
            "config": dict(config),
            "timings_s": {k: round(v, 4) for k, v in timings.items()},
            "label_mapping": label_mapping,
        },
        "findings": [f.to_dict() for f in findings],
        "sections": [s.to_dict() for s in sections],
        **(extra or {}),
        "assets": store.assets,
        "asset_budget": store.summary(),
    }
    return Report(doc)
