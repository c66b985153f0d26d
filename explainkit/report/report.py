"""``Report``: the versioned JSON document every run produces, and its renderings."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from explainkit._io import atomic_write_text
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
        """The self-contained HTML document."""
        return render_html(self.data)

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
        text = self.to_json()
        page = self.to_html() if html else None  # render before writing anything
        paths = {"json": atomic_write_text(out / "report.json", text)}
        if page is not None:
            paths["html"] = atomic_write_text(out / "report.html", page)
        return paths

    @classmethod
    def load(cls, path: str | Path) -> Report:
        """Read a ``report.json``; raises :class:`ConfigError` for foreign or future versions."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read report {path}: {exc}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
        version = data.get("schema_version") if isinstance(data, dict) else None
        if not isinstance(version, str) or version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
            raise ConfigError(f"{path} is not an explainkit report of schema {SCHEMA_VERSION}")
        return cls(data)

    def __repr__(self) -> str:
        names = ", ".join(s["analyzer"] for s in self.sections)
        return f"<Report {self.data.get('kind')} status={self.status} sections=[{names}]>"
