"""``Report``: the versioned JSON document every run produces, and its renderings."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from explainkit._io import atomic_write_text, atomic_writer
from explainkit.errors import ConfigError
from explainkit.report.html import render_body, render_html
from explainkit.report.jsonify import jsonable

__all__ = ["SCHEMA_VERSION", "Report"]

#: Version of the report's JSON schema (``explainkit/report/schema/report.schema.json``).
SCHEMA_VERSION = "1.1"


class Report:
    """A run's results: JSON is the source of truth; HTML, text and JUnit are rendered from it.

    Parameters
    ----------
    data : dict
        The report document (see the JSON Schema).

    Examples
    --------
    >>> report = explainkit.analyze(handle, "probe/", analyzers=["performance"])  # doctest: +SKIP
    >>> report.section("performance")["summary"]["accuracy"]["value"]  # doctest: +SKIP
    0.97
    """

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = jsonable(data)
        self.source: Path | None = None  # the file it was loaded from

    @property
    def status(self) -> str:
        """``"ok"`` or ``"findings"`` (or a check status)."""
        return self.data["status"]

    @property
    def sections(self) -> list[dict[str, Any]]:
        """One dict per analyzer, in run order."""
        return self.data["sections"]

    @property
    def findings(self) -> list[dict[str, Any]]:
        """All findings, most severe first."""
        return self.data["findings"]

    def section(self, analyzer: str) -> dict[str, Any]:
        """The section of ``analyzer``."""
        for s in self.sections:
            if s["analyzer"] == analyzer:
                return s
        raise KeyError(f"no section {analyzer!r} in this report (have: {[s['analyzer'] for s in self.sections]})")

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the JSON document."""
        return copy.deepcopy(self.data)

    def to_json(self, indent: int | None = 1) -> str:
        """Strict JSON text (no NaN)."""
        return json.dumps(self.data, indent=indent, allow_nan=False, ensure_ascii=False)

    def to_html(self) -> str:
        """The self-contained HTML document.

        Raises
        ------
        ConfigError
            For a report loaded from a file whose content does not fit the templates (naming the file).
        """
        if self.source is None:
            return render_html(self.data)
        try:
            return render_html(self.data)
        except Exception as exc:  # a hand-edited or foreign report: data that no template expects
            raise ConfigError(f"{self.source}: cannot be rendered: {exc}") from None

    def _repr_html_(self) -> str:
        return render_body(self.data)

    def save(self, out_dir: str | Path, *, html: bool = True) -> dict[str, Path]:
        """Write ``report.json`` (and ``report.html``) atomically into ``out_dir``.

        Parameters
        ----------
        out_dir : str or Path
            Output folder (created).
        html : bool
            Also write the HTML rendering.

        Returns
        -------
        dict of str to Path
            ``{"json": ..., "html": ...}``.
        """
        out = Path(out_dir)
        page = self.to_html() if html else None  # render before writing anything
        with atomic_writer(out / "report.json", "w") as fh:  # streamed: never the whole text in memory
            json.dump(self.data, fh, indent=1, allow_nan=False, ensure_ascii=False)
        paths = {"json": out / "report.json"}
        if page is not None:
            paths["html"] = atomic_write_text(out / "report.html", page)
        return paths

    @classmethod
    def load(cls, path: str | Path) -> Report:
        """Read a ``report.json``, checking the shape of everything the renderers read.

        Raises
        ------
        ConfigError
            Unreadable or invalid JSON, a foreign or future schema version, or a key of the wrong
            shape (the message names it, e.g. ``'sections[0].summary'``).
        """
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read report {path}: {exc}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
        except RecursionError:
            raise ConfigError(f"{path} is nested too deeply to be a report") from None
        version = data.get("schema_version") if isinstance(data, dict) else None
        if not isinstance(version, str) or version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
            raise ConfigError(f"{path} is not an explainkit report of schema {SCHEMA_VERSION}")
        problem = _shape_problem(data)
        if problem:
            raise ConfigError(f"{path}: {problem}")
        report = cls(data)
        report.source = Path(path)
        return report

    def __repr__(self) -> str:
        names = ", ".join(s["analyzer"] for s in self.sections)
        return f"<Report {self.data.get('kind')} status={self.status} sections=[{names}]>"


_OBJECT, _LIST, _STR = dict, list, str
#: The shape every report has (key → type), at the top level and per section and finding.
_TOP = {"kind": _STR, "status": _STR, "provenance": _OBJECT, "sections": _LIST, "findings": _LIST, "assets": _OBJECT}
_SECTION = {"analyzer": _STR, "title": _STR, "params": _OBJECT, "summary": _OBJECT, "data": _OBJECT,
            "findings": _LIST}
_FINDING = {"severity": _STR, "message": _STR, "analyzer": _STR}


def _shape_problem(data: dict[str, Any]) -> str | None:
    """The first key whose value has the wrong type (``'sections[1].summary' must be an object``)."""
    names = {dict: "an object", list: "a list", str: "a string"}

    def check(obj: Any, shape: dict[str, type], prefix: str) -> str | None:
        if not isinstance(obj, dict):
            return f"{prefix.rstrip('.')!r} must be an object"
        for key, kind in shape.items():
            if not isinstance(obj.get(key), kind):
                return f"{prefix + key!r} must be {names[kind]}"
        return None

    problem = check(data, _TOP, "")
    for i, section in enumerate(data.get("sections", []) if problem is None else []):
        problem = problem or check(section, _SECTION, f"sections[{i}].")
        for j, finding in enumerate(section.get("findings", []) if problem is None else []):
            problem = problem or check(finding, _FINDING, f"sections[{i}].findings[{j}].")
    for j, finding in enumerate(data.get("findings", []) if problem is None else []):
        problem = problem or check(finding, _FINDING, f"findings[{j}].")
    return problem
