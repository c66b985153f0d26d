"""``explainkit.discover``: run the ``discovery`` analyzer and write its report and a gate policy."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from explainkit._io import atomic_write_text
from explainkit.datasets.probe import ProbeSet
from explainkit.discovery.policy import PolicyContext, PolicyDraft, draft_policy, typical_placement
from explainkit.errors import ConfigError, RuntimeAnalysisError
from explainkit.gate.policy import parse_policy
from explainkit.loading.handle import ModelHandle
from explainkit.report import Report
from explainkit.run import analyze

__all__ = ["DiscoveryResult", "discover"]

_MEMBERS = "members"


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


def _policy_context(probe: ProbeSet, policy_dir: Path, sample: int = 50) -> PolicyContext:
    """Templates, mask folders and, per concept with both, where its masks (up to ``sample``) put it."""
    templates = frozenset(c for c in probe.concept_names if (probe.root / "artifacts" / f"{c}.png").is_file())
    masks = frozenset(probe.mask_names())
    where = {}
    for c in templates & masks:
        found = []
        for i in range(len(probe)):
            m = probe.mask(i, c)
            if m is not None:
                found.append(m)
                if len(found) == sample:
                    break
        where[c] = typical_placement(found)
    return PolicyContext(policy_dir=policy_dir, data_dir=probe.root, templates=templates, masks=masks,
                         concepts=tuple(probe.concept_names), placements=where)


def _write_policy(draft: PolicyDraft, out: Path) -> Path:
    """Member files first (the policy refers to them), then the validated policy, each atomically."""
    members = out / _MEMBERS
    for rel, text in draft.files.items():
        atomic_write_text(out / rel, text)
    if members.is_dir():
        fresh = {(out / rel).name for rel in draft.files}
        for old in members.glob("discover.*.txt"):
            if old.name not in fresh:
                old.unlink()
    try:
        parse_policy(tomllib.loads(draft.text), base_dir=out, name="policy.toml", text=draft.text)
    except (ConfigError, tomllib.TOMLDecodeError) as exc:
        raise RuntimeAnalysisError(f"the generated policy is invalid (a bug): {exc}") from exc
    return atomic_write_text(out / "policy.toml", draft.text)


def discover(
    handle: ModelHandle | nn.Module,
    data: ProbeSet | str | Path,
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
        As for :func:`explainkit.analyze` (``layer`` is the embedding layer).
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
    ('stamp', 1e-39)
    """
    if policy_top < 1:
        raise ConfigError("policy_top must be at least 1")
    probe = data if isinstance(data, ProbeSet) else ProbeSet.from_folder(data)
    report = analyze(handle, probe, [("discovery", dict(params or {}))], device=device, batch_size=batch_size,
                     seed=seed, layer=layer, progress=progress,
                     config={**dict(config or {}), "policy_top": policy_top},
                     asset_budget_bytes=asset_budget_bytes, backend=backend, backend_options=backend_options)
    section = report.section("discovery")
    policy_dir = Path(out) if out is not None else Path.cwd()
    draft = draft_policy(section["data"]["candidates"], _policy_context(probe, policy_dir), top=policy_top,
                         alpha=section["params"]["alpha"], seed=seed,
                         source=f"explainkit discover on {probe.root}")
    for c in section["data"]["candidates"]:
        c["checks"] = draft.checks.get(c["id"], []) if draft else []
    section["data"]["policy"] = {"file": "policy.toml" if draft else None, "top": policy_top,
                                 "note": None if draft else "no candidate could be turned into a check"}
    result = DiscoveryResult(report=report, policy=draft)
    if out is not None and (backend != "torchrun" or os.environ.get("RANK", "0") == "0"):
        out = Path(out)
        if draft is not None:
            result.paths["policy"] = _write_policy(draft, out)
        result.paths.update(report.save(out))
    return result
