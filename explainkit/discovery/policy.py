"""Turn discovered candidates into a gate policy (``policy.toml``) with the checks that would test them.

Each cue group's lead (see :func:`explainkit.discovery.candidates.rank`) gets the checks that
proposers registered for its source return. Built-in proposers:

* a named artifact (a ``concept`` candidate, or an ``invert`` unit's artifact concepts):
  ``insertion`` when the probe folder has its template ``artifacts/<concept>.png`` (gating when the
  candidate is significant; pasted where its masks show it, see :func:`typical_placement`),
  ``removal`` when it has masks ``masks/<concept>/``;
* every candidate: ``slice_shift`` on its members (a file ``members/<check id>.txt`` next to the
  policy), which re-tests the slice's pull toward the target for other models.

Transform checks register more proposers with :func:`register_proposer` (for example a recolouring
check for a cluster described as "border bluer"). The writer needs no gate import: the policy text
is plain TOML, and :func:`write_policy` takes the validator (``explainkit.discover`` passes the
gate's parser).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from explainkit._io import atomic_write_text
from explainkit.data.probe import ProbeSet

__all__ = ["PolicyContext", "PolicyDraft", "Proposal", "draft_policy", "policy_context", "register_proposer",
           "to_toml", "typical_placement", "write_policy"]

_MEMBERS = "members"

_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


@dataclass
class Proposal:
    """One proposed check: its TOML table, and files it needs next to the policy.

    Attributes
    ----------
    check : dict
        The ``[[checks]]`` table (keys of the gate's policy; ``id`` and ``data`` are filled in).
    files : dict of str to str
        Path relative to the policy's folder → text.
    """

    check: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyContext:
    """What proposers may read about the probe folder and the policy's place.

    Attributes
    ----------
    policy_dir : Path
        Folder the policy is written to (its relative paths start here).
    data_dir : Path
        The probe folder.
    templates : frozenset of str
        Names ``c`` with a template ``artifacts/<c>.png`` in the probe folder.
    masks : frozenset of str
        Mask folders under ``masks/``.
    concepts : tuple of str
        Concept columns of the probe set.
    placements : dict of str to str
        Concept → where its masks put it (:func:`typical_placement`); absent: ``random``.
    """

    policy_dir: Path
    data_dir: Path
    templates: frozenset[str]
    masks: frozenset[str]
    concepts: tuple[str, ...]
    placements: Mapping[str, str] = field(default_factory=dict)

    def relative(self, path: Path) -> str:
        """``path`` relative to the policy's folder when possible, else absolute (POSIX separators)."""
        try:
            return Path(os.path.relpath(path.resolve(), self.policy_dir.resolve())).as_posix()
        except ValueError:  # another drive on Windows
            return path.resolve().as_posix()


#: ``proposer(candidate_record, context, check_id) -> proposals``.
Proposer = Callable[[Mapping[str, Any], PolicyContext, str], list[Proposal]]
_PROPOSERS: dict[str, list[Proposer]] = {}


def register_proposer(*sources: str) -> Callable[[Proposer], Proposer]:
    """Decorator adding a proposer for candidates of the given sources (``concept``, ``cluster``, ...)."""

    def add(fn: Proposer) -> Proposer:
        for source in sources:
            _PROPOSERS.setdefault(source, []).append(fn)
        return fn

    return add


def typical_placement(masks: Sequence[np.ndarray], share: float = 0.9) -> str:
    """Where an artifact sits in the images that carry it: ``corner:any``, ``center`` or ``random``.

    Parameters
    ----------
    masks : sequence of ndarray
        (H, W) bool masks of the artifact in some of the images carrying it.
    share : float
        Fraction of the masks that must agree.

    Returns
    -------
    str
        ``corner:any`` when at least ``share`` of the masks' centres lie in a corner cell of a 3×3
        grid, ``center`` when they lie in the middle cell, else ``random`` (an insertion check then
        pastes the artifact anywhere).
    """
    cells = []
    for m in masks:
        ys, xs = np.nonzero(m)
        if ys.size:
            h, w = m.shape
            cells.append((min(2, int(3 * ys.mean() / h)), min(2, int(3 * xs.mean() / w))))
    if not cells:
        return "random"
    corner = sum(1 for r, c in cells if r != 1 and c != 1) / len(cells)
    centre = sum(1 for r, c in cells if r == 1 and c == 1) / len(cells)
    return "corner:any" if corner >= share else "center" if centre >= share else "random"


def _artifact_concepts(candidate: Mapping[str, Any]) -> list[str]:
    if candidate["source"] == "concept":
        return [candidate["evidence"]["concept"]]
    if candidate["source"] == "invert":
        return list(candidate["evidence"].get("artifact_concepts", []))
    return []


@register_proposer("concept", "invert")
def _named_artifact(candidate: Mapping[str, Any], ctx: PolicyContext, check_id: str) -> list[Proposal]:
    """Insertion with the artifact's template, removal with its masks."""
    out = []
    for concept in _artifact_concepts(candidate):
        safe = _ID_UNSAFE.sub("_", concept)
        if concept in ctx.templates:
            out.append(Proposal({
                "id": f"{check_id}.insertion.{safe}", "kind": "insertion",
                "artifact": ctx.relative(ctx.data_dir / "artifacts" / f"{concept}.png"), "concept": concept,
                "placement": ctx.placements.get(concept, "random"), "repeats": 3, "control": "mean_patch",
                "target_class": candidate["target_class"],
                "severity": "error" if candidate["significant"] else "warning",
            }))
        if concept in ctx.masks:
            out.append(Proposal({"id": f"{check_id}.removal.{safe}", "kind": "removal", "concept": concept,
                                 "fill": "inpaint", "target_class": candidate["target_class"]}))
    return out


@register_proposer("concept", "cluster", "attribution", "invert")
def _members_shift(candidate: Mapping[str, Any], ctx: PolicyContext, check_id: str) -> list[Proposal]:
    """The slice's pull toward its target, on its member list (one path per line: paths with line breaks cannot)."""
    if any("\n" in m or "\r" in m for m in candidate["members"]):
        return []
    name = f"{_MEMBERS}/{check_id}.txt"
    header = (f"# members of discovered candidate {_comment(candidate['id'])}: {_comment(candidate['cue'])}\n"
              "# one probe-relative image path per line (chosen on the discovery split: re-testing the same "
              "model on these images is optimistic)\n")
    return [Proposal({"id": f"{check_id}.shift", "kind": "slice_shift", "members": name,
                      "target_class": candidate["target_class"], "tau": candidate["tau"]},
                     {name: header + "".join(f"{m}\n" for m in candidate["members"])})]


@dataclass
class PolicyDraft:
    """A generated policy: its text, the files next to it, and which checks test which candidate.

    Attributes
    ----------
    text : str
        The TOML document.
    files : dict of str to str
        Relative path → text (member lists).
    checks : dict of str to list of str
        Candidate id → ids of its checks.
    """

    text: str
    files: dict[str, str]
    checks: dict[str, list[str]]


def _comment(text: object) -> str:
    """One line, printable, safe inside a TOML comment."""
    return "".join(ch if ch.isprintable() else "?" for ch in str(text))[:200]


def draft_policy(candidates: Sequence[Mapping[str, Any]], ctx: PolicyContext, *, top: int, alpha: float, seed: int,
                 source: str = "") -> PolicyDraft | None:
    """The policy testing the leads of the best ``top`` cue groups, or ``None`` when nothing can be proposed.

    Parameters
    ----------
    candidates : sequence of dict
        The ``candidates`` of a discovery section, best first.
    ctx : PolicyContext
        The probe folder and where the policy goes.
    top : int
        Cue groups to cover. Significant groups are taken first; when none is significant the best
        groups are proposed all the same, every check as a warning.
    alpha : float
        The policy's significance level.
    seed : int
        The policy's seed.
    source : str
        Where the candidates came from (for the header comment).

    Returns
    -------
    PolicyDraft or None
        The document, or ``None`` when no candidate has a proposer.
    """
    leads = [c for c in candidates if c.get("group_lead", True)]
    chosen = [c for c in leads if c["significant"]][:top] or leads[:top]
    checks: list[dict[str, Any]] = []
    files: dict[str, str] = {}
    by_candidate: dict[str, list[str]] = {}
    data = ctx.relative(ctx.data_dir)
    used: set[str] = set()
    for c in chosen:
        base = "discover." + _ID_UNSAFE.sub("_", f"{c['source']}.{c['id'].split(':', 1)[-1]}")
        check_id, k = base, 1
        while check_id in used:
            k += 1
            check_id = f"{base}-{k}"
        used.add(check_id)
        for proposer in _PROPOSERS.get(c["source"], []):
            for p in proposer(c, ctx, check_id):
                table = {"id": p.check["id"], "description": _comment(
                    f"discovered: {c['cue']} -> {c['target_class']} (effect {c['effect']:+.3f} "
                    f"[{c['ci'][0]:.3f}, {c['ci'][1]:.3f}], p_adj {c['p_adj']:.2g})"),
                         **{k: v for k, v in p.check.items() if k != "id"}, "data": data}
                if not c["significant"]:
                    table["severity"] = "warning"
                checks.append(table)
                files.update(p.files)
                by_candidate.setdefault(c["id"], []).append(table["id"])
    if not checks:
        return None
    header = [
        "# Generated by `explainkit discover`: checks that would test the discovered candidate cues.",
        f"# From: {_comment(source)}" if source else "",
        f"# Written {dt.date.today().isoformat()}. Review before gating on it: a discovered cue is a "
        "hypothesis; insertion and removal test it by intervention,",
        "# slice_shift re-tests the slice's pull toward its target class (valid for other models; optimistic "
        "for the model that found it).",
        "" if any(c["significant"] for c in chosen) else
        "# No candidate was significant: the checks below are warnings.",
    ]
    doc = {"version": 1, "defaults": {"alpha": alpha, "seed": seed, "on_inconclusive": "warn"}, "checks": checks}
    return PolicyDraft("\n".join(h for h in header if h) + "\n" + to_toml(doc), files, by_candidate)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v).replace("\x7f", "\\u007f")
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _table(items: Iterable[tuple[str, Any]]) -> list[str]:
    return [f"{k} = {_value(v)}" for k, v in items if v is not None]


def to_toml(doc: Mapping[str, Any]) -> str:
    """A policy mapping (``version``, ``defaults``, ``checks``) as TOML text.

    Keys are bare (the policy's keys are identifiers); strings are JSON-escaped, which is valid TOML
    (plus an escape for DEL, which TOML forbids raw).
    """
    lines = _table((k, v) for k, v in doc.items() if not isinstance(v, Mapping | list))
    for key, value in doc.items():
        if isinstance(value, Mapping):
            lines += ["", f"[{key}]", *_table(value.items())]
        elif isinstance(value, list):
            for table in value:
                lines += ["", f"[[{key}]]", *_table(table.items())]
    return "\n".join(lines) + "\n"


def policy_context(probe: ProbeSet, policy_dir: Path, sample: int = 50) -> PolicyContext:
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


def write_policy(draft: PolicyDraft, out: Path, validate: Callable[[str, Path], None]) -> Path:
    """Write the member files, check the policy with ``validate(text, folder)``, then write ``policy.toml``.

    Each file is written atomically; member lists of earlier runs (``members/discover.*.txt``) that the
    new policy does not use are removed.

    Parameters
    ----------
    draft : PolicyDraft
        From :func:`draft_policy`.
    out : Path
        The policy's folder.
    validate : callable
        Raises when the text is not a valid policy (its relative paths resolve against ``out``).

    Returns
    -------
    Path
        ``out / "policy.toml"``.
    """
    for rel, text in draft.files.items():
        atomic_write_text(out / rel, text)
    members = out / _MEMBERS
    if members.is_dir():
        fresh = {(out / rel).name for rel in draft.files}
        for old in members.glob("discover.*.txt"):
            if old.name not in fresh:
                old.unlink()
    validate(draft.text, out)
    return atomic_write_text(out / "policy.toml", draft.text)
