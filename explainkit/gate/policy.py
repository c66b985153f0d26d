"""The gate's policy file (TOML, versioned): parsing and validation with errors naming key and line.

Layout (``version = 1``)::

    version = 1
    [defaults]            # alpha, seed, on_inconclusive, multiplicity, ci, n_resamples,
                          # min_images, max_images, time_budget_s
    [[checks]]            # id, kind, data, severity, tau, target_class, ... + the kind's own keys
    [[waivers]]           # check, reason, expires (a date), owner

Paths are relative to the policy file's folder. Every error is one line such as
``policy.toml line 14: check #2 ('spurious.x'): unknown key 'taux' (allowed: ...)``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from explainkit.config import _line_of
from explainkit.errors import ConfigError
from explainkit.gate.kinds import get_check_kind, list_check_kinds
from explainkit.options import REQUIRED, Option

__all__ = ["CHECK_OPTIONS", "DEFAULT_OPTIONS", "POLICY_VERSION", "WAIVER_OPTIONS", "CheckSpec", "GateDefaults",
           "Policy", "Waiver", "load_policy", "parse_policy"]

#: The policy schema version this explainkit reads.
POLICY_VERSION = 1
_TOP_KEYS = ("version", "defaults", "checks", "waivers")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]*")
_HEADER = re.compile(r"^[ \t]*\[\[?[ \t]*([^\]\s]+)[ \t]*\]\]?", re.MULTILINE)

#: Keys of ``[defaults]``.
DEFAULT_OPTIONS: dict[str, Option] = {
    "alpha": Option("float", 0.05, low=0, high=1, low_open=True, high_open=True,
                    help="significance level of the tests, after the multiplicity correction"),
    "seed": Option("int", 0, low=0,
                   help="seed of every random choice: image sample, placements, control pixels, bootstrap"),
    "on_inconclusive": Option("choice", "warn", ("warn", "fail"),
                              help="whether an INCONCLUSIVE gating check fails the run"),
    "multiplicity": Option("choice", "holm", ("holm", "bh", "by", "none"),
                           help="correction across the policy's checks: holm (family-wise error), bh, by (false "
                                "discovery rate), none"),
    "ci": Option("float", 0.95, low=0.5, high=1, high_open=True, help="confidence level of the intervals"),
    "n_resamples": Option("int", 2000, low=100, high=1_000_000, help="bootstrap resamples"),
    "min_images": Option("int", 10, low=2, help="fewer images than this is INCONCLUSIVE"),
    "max_images": Option("int", 200, low=1, help="images per check (a seeded random sample when more exist)"),
    "time_budget_s": Option("float", None, low=0, low_open=True,
                            help="seconds per check; images run in a random order, so a cut sample is still random, "
                                 "but it is INCONCLUSIVE, never PASS"),
}

#: Keys every check accepts (kinds add their own).
CHECK_OPTIONS: dict[str, Option] = {
    "id": Option("str", REQUIRED, help="stable id (letters, digits, . _ : -): JUnit test name, annotation title, "
                                       "waivers"),
    "kind": Option("choice", REQUIRED, list_check_kinds, help="the check's kind (see the table of kinds)"),
    "data": Option("dir", REQUIRED, help="probe image folder: an explainkit probe set (class folders or a flat folder; "
                                      "concepts.csv, masks/<concept>/ where the kind needs them)"),
    "severity": Option("choice", None, ("error", "warning"),
                       help="error gates the run, warning is only reported (default: the kind's, below)"),
    "tau": Option("float", None, low=0, low_open=True,
                  help="materiality threshold, in the effect's unit (default: the kind's)"),
    "target_class": Option("class", None, help="class name or output index"),
    "seed": Option("int", None, low=0, help="overrides the defaults' seed"),
    "max_images": Option("int", None, low=1, help="overrides the defaults' max_images"),
    "time_budget_s": Option("float", None, low=0, low_open=True, help="overrides the defaults' time_budget_s"),
    "description": Option("str", "", help="free text shown in reports"),
}

#: Keys of a ``[[waivers]]`` table.
WAIVER_OPTIONS: dict[str, Option] = {
    "check": Option("str", REQUIRED, help="id of a check in this policy (one waiver per check)"),
    "reason": Option("str", REQUIRED, help="why (shown in every output)"),
    "expires": Option("date", REQUIRED, help="the waiver holds through this day; expired, it fails the run"),
    "owner": Option("str", None, help="who answers for it"),
}


@dataclass(frozen=True)
class GateDefaults:
    """The ``[defaults]`` table (see :data:`DEFAULT_OPTIONS`)."""

    alpha: float = 0.05
    seed: int = 0
    on_inconclusive: str = "warn"
    multiplicity: str = "holm"
    ci: float = 0.95
    n_resamples: int = 2000
    min_images: int = 10
    max_images: int = 200
    time_budget_s: float | None = None


@dataclass(frozen=True)
class CheckSpec:
    """One validated ``[[checks]]`` entry, with defaults filled in.

    Attributes
    ----------
    id, kind, severity : str
        Identity; ``severity`` is ``"error"`` (gating) or ``"warning"``.
    data : Path
        Absolute probe folder.
    tau : float
        Materiality threshold in the kind's effect unit.
    seed, max_images : int
        Randomness and sample size.
    time_budget_s : float or None
        Wall-clock budget of the check.
    target_class : str, int or None
        Class name or output index.
    description : str
        Free text.
    options : dict
        The kind's own keys, parsed (paths absolute).
    line : int or None
        Line of the ``[[checks]]`` header in the policy file.
    """

    id: str
    kind: str
    severity: str
    data: Path
    tau: float
    seed: int
    max_images: int
    time_budget_s: float | None
    target_class: str | int | None = None
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    line: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (paths as strings)."""
        out = {k: getattr(self, k) for k in ("id", "kind", "severity", "tau", "seed", "max_images",
                                             "time_budget_s", "target_class", "description", "line")}
        out["data"] = str(self.data)
        out["options"] = {k: str(v) if isinstance(v, Path) else v for k, v in self.options.items()}
        return out


@dataclass(frozen=True)
class Waiver:
    """A ``[[waivers]]`` entry: the check still runs, but does not gate until ``expires``."""

    check: str
    reason: str
    expires: dt.date
    owner: str | None = None
    line: int | None = None

    def expired(self, today: dt.date) -> bool:
        """Whether the waiver's date has passed (it is valid through ``expires``)."""
        return today > self.expires

    def to_dict(self, today: dt.date | None = None) -> dict[str, Any]:
        """JSON-ready, with ``expired`` when ``today`` is given."""
        out: dict[str, Any] = {"check": self.check, "reason": self.reason, "expires": self.expires.isoformat(),
                               "owner": self.owner, "line": self.line}
        if today is not None:
            out["expired"] = self.expired(today)
        return out


@dataclass(frozen=True)
class Policy:
    """A validated policy.

    Attributes
    ----------
    source : str
        The policy file (or ``"<mapping>"``).
    base_dir : Path
        Folder relative paths were resolved against.
    defaults : GateDefaults
        Gate-wide settings.
    checks : tuple of CheckSpec
        The checks, in file order.
    waivers : tuple of Waiver
        Waivers, in file order.
    sha256 : str
        Hash of the policy file's bytes (of its canonical JSON for mappings).
    version : int
        Schema version (1).
    """

    source: str
    base_dir: Path
    defaults: GateDefaults
    checks: tuple[CheckSpec, ...]
    waivers: tuple[Waiver, ...] = ()
    sha256: str = ""
    version: int = POLICY_VERSION

    def waiver_for(self, check_id: str) -> Waiver | None:
        """The waiver of ``check_id``, if any."""
        return next((w for w in self.waivers if w.check == check_id), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (recorded in the report's provenance)."""
        return {"source": self.source, "sha256": self.sha256, "version": self.version,
                "defaults": dict(vars(self.defaults)), "checks": [c.to_dict() for c in self.checks],
                "waivers": [w.to_dict() for w in self.waivers]}


class _Locator:
    """Finds the line of a key inside the n-th ``[table]`` / ``[[table]]`` of the policy text."""

    def __init__(self, name: str, text: str | None) -> None:
        self.name = name
        self.text = text
        self.headers = [(m.start(), m.group(1)) for m in _HEADER.finditer(text)] if text else []

    def _region(self, table: str | None, index: int) -> tuple[int, int] | None:
        if self.text is None:
            return None
        if table is None:
            return 0, self.headers[0][0] if self.headers else len(self.text)
        starts = [i for i, (_, name) in enumerate(self.headers) if name == table]
        if index >= len(starts):
            return None
        k = starts[index]
        end = self.headers[k + 1][0] if k + 1 < len(self.headers) else len(self.text)
        return self.headers[k][0], end

    def line(self, key: str | None, table: str | None = None, index: int = 0) -> int | None:
        """1-based line of ``key`` (of the table header when ``key`` is None), or None."""
        region = self._region(table, index)
        if region is None or self.text is None:
            return None
        start, end = region
        offset = self.text.count("\n", 0, start)
        if key is None:
            return offset + 1
        found = _line_of(self.text[start:end], key)
        return None if found is None else offset + found

    def error(self, message: str, key: str | None = None, table: str | None = None, index: int = 0,
              context: str = "") -> ConfigError:
        """A :class:`ConfigError` prefixed with the file, the line and the context."""
        line = self.line(key, table, index)
        where = f"{self.name}{f' line {line}' if line else ''}"
        return ConfigError(f"{where}: {context + ': ' if context else ''}{message}")


def _read_table(table: Any, options: Mapping[str, Option], loc: _Locator, base_dir: Path, *,
                table_name: str | None, index: int, context: str) -> dict[str, Any]:
    """Parse one table against ``options``: unknown keys, missing required keys and bad values raise."""
    if not isinstance(table, Mapping):
        raise loc.error(f"expected a table, not {type(table).__name__}", None, table_name, index, context)
    for key in table:
        if key not in options:
            raise loc.error(f"unknown key {key!r} (allowed: {', '.join(options)})", key, table_name, index, context)
    out: dict[str, Any] = {}
    for key, opt in options.items():
        if key not in table:
            if opt.required:
                raise loc.error(f"missing required key {key!r}", None, table_name, index, context)
            out[key] = opt.default
            continue
        try:
            out[key] = opt.parse(table[key], key, base_dir)
        except ConfigError as exc:
            raise loc.error(str(exc), key, table_name, index, context) from None
    return out


def _parse_check(i: int, table: Any, defaults: GateDefaults, loc: _Locator, base_dir: Path) -> CheckSpec:
    ident = table.get("id") if isinstance(table, Mapping) else None
    context = f"check #{i + 1}" + (f" ({ident!r})" if isinstance(ident, str) else "")
    kind_name = table.get("kind") if isinstance(table, Mapping) else None
    if kind_name is None:
        raise loc.error("missing required key 'kind'", None, "checks", i, context)
    if kind_name not in list_check_kinds():
        raise loc.error(f"kind must be one of {', '.join(list_check_kinds())}, not {kind_name!r}", "kind",
                        "checks", i, context)
    kind = get_check_kind(kind_name)
    values = _read_table(table, {**CHECK_OPTIONS, **kind.options}, loc, base_dir, table_name="checks", index=i,
                         context=context)
    if not _ID.fullmatch(values["id"]):
        raise loc.error(f"id {values['id']!r} may hold only letters, digits and . _ : -", "id", "checks", i, context)
    if kind.needs_target and values["target_class"] is None:
        raise loc.error(f"kind {kind_name!r} needs target_class (a class name or index)", None, "checks", i,
                        context)
    own = {k: values[k] for k in kind.options}
    try:
        kind.validate_options(own)
    except ConfigError as exc:
        raise loc.error(str(exc), None, "checks", i, context) from None
    return CheckSpec(
        id=values["id"], kind=kind_name, severity=values["severity"] or kind.default_severity,
        data=values["data"], tau=values["tau"] if values["tau"] is not None else kind.default_tau(own),
        seed=defaults.seed if values["seed"] is None else values["seed"],
        max_images=values["max_images"] or defaults.max_images,
        time_budget_s=values["time_budget_s"] if values["time_budget_s"] is not None else defaults.time_budget_s,
        target_class=values["target_class"], description=values["description"], options=own,
        line=loc.line(None, "checks", i),
    )


def parse_policy(data: Mapping[str, Any], *, base_dir: str | Path = ".", name: str = "policy",
                 text: str | None = None, sha256: str | None = None) -> Policy:
    """Validate a policy given as a mapping (the parsed TOML).

    Parameters
    ----------
    data : mapping
        ``{"version": 1, "defaults": {...}, "checks": [...], "waivers": [...]}``.
    base_dir : str or Path
        Folder that relative paths are resolved against.
    name : str
        Name used in error messages.
    text : str, optional
        The TOML source, for line numbers in errors.
    sha256 : str, optional
        Hash to record; default: of the canonical JSON of ``data``.

    Returns
    -------
    Policy
        The validated policy.

    Raises
    ------
    ConfigError
        One line naming the file, line, check and key.
    """
    loc = _Locator(name, text)
    base = Path(base_dir).resolve()
    if not isinstance(data, Mapping):
        raise loc.error("a policy is a table with version, [defaults], [[checks]] and [[waivers]]")
    for key in data:
        if key not in _TOP_KEYS:
            raise loc.error(f"unknown key {key!r} (allowed: {', '.join(_TOP_KEYS)})", key)
    version = data.get("version")
    if version is None:
        raise loc.error(f"missing required key 'version' (write version = {POLICY_VERSION} at the top)")
    if version != POLICY_VERSION or isinstance(version, bool):
        raise loc.error(f"unsupported policy version {version!r}; this explainkit reads version = {POLICY_VERSION}",
                        "version")
    defaults = GateDefaults(**_read_table(data.get("defaults", {}), DEFAULT_OPTIONS, loc, base,
                                          table_name="defaults", index=0, context="[defaults]"))
    raw_checks = data.get("checks")
    if not isinstance(raw_checks, list) or not raw_checks:
        raise loc.error("the policy has no checks: add at least one [[checks]] table", "checks")
    checks: list[CheckSpec] = []
    for i, table in enumerate(raw_checks):
        spec = _parse_check(i, table, defaults, loc, base)
        if any(c.id == spec.id for c in checks):
            raise loc.error(f"duplicate check id {spec.id!r}", "id", "checks", i, f"check #{i + 1}")
        checks.append(spec)
    waivers: list[Waiver] = []
    raw_waivers = data.get("waivers", [])
    if not isinstance(raw_waivers, list):
        raise loc.error("waivers must be [[waivers]] tables", "waivers")
    ids = [c.id for c in checks]
    for i, table in enumerate(raw_waivers):
        context = f"waiver #{i + 1}"
        values = _read_table(table, WAIVER_OPTIONS, loc, base, table_name="waivers", index=i, context=context)
        if values["check"] not in ids:
            raise loc.error(f"waiver for unknown check {values['check']!r} (checks: {', '.join(ids)})", "check",
                            "waivers", i, context)
        if any(w.check == values["check"] for w in waivers):
            raise loc.error(f"second waiver for check {values['check']!r}", "check", "waivers", i, context)
        waivers.append(Waiver(**values, line=loc.line(None, "waivers", i)))
    if sha256 is None:
        canonical = json.dumps(data, sort_keys=True, default=str).encode()
        sha256 = hashlib.sha256(canonical).hexdigest()
    return Policy(source=name, base_dir=base, defaults=defaults, checks=tuple(checks), waivers=tuple(waivers),
                  sha256=sha256)


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file.

    Parameters
    ----------
    path : str or Path
        The TOML file.

    Returns
    -------
    Policy
        The validated policy (relative paths resolved against the file's folder).

    Raises
    ------
    ConfigError
        Unreadable file, TOML syntax error, or invalid content (one line, naming key and line).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read policy file {path}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path.name}: invalid TOML: {exc}") from None
    policy = parse_policy(data, base_dir=path.resolve().parent, name=path.name, text=text,
                          sha256=hashlib.sha256(raw).hexdigest())
    return Policy(source=str(path), base_dir=policy.base_dir, defaults=policy.defaults, checks=policy.checks,
                  waivers=policy.waivers, sha256=policy.sha256)
