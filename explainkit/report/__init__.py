"""Reports: the versioned JSON document, its JSON Schema, and the HTML rendering."""

from explainkit.report.assets import AssetStore
from explainkit.report.build import build_report
from explainkit.report.html import render_html
from explainkit.report.report import SCHEMA_VERSION, Report

__all__ = ["SCHEMA_VERSION", "AssetStore", "Report", "build_report", "render_html", "schema_path",
           "section_schema_path"]


def schema_path() -> str:
    """Path of the published JSON Schema of reports."""
    from importlib.resources import files

    return str(files("explainkit.report") / "schema" / "report.schema.json")


def section_schema_path(analyzer: str) -> str | None:
    """Path of the JSON Schema of an analyzer section's ``data``, or ``None`` when it has none."""
    from importlib.resources import files

    path = files("explainkit.report") / "schema" / "sections" / f"{analyzer}.schema.json"
    return str(path) if path.is_file() else None
