"""Reports: the versioned JSON document, its JSON Schema, and the HTML rendering."""

from explainkit.report.assets import AssetStore
from explainkit.report.build import build_report
from explainkit.report.html import render_html
from explainkit.report.report import SCHEMA_VERSION, Report

__all__ = ["SCHEMA_VERSION", "AssetStore", "Report", "build_report", "render_html", "schema_path"]


def schema_path() -> str:
    """Path of the published JSON Schema of reports."""
    from importlib.resources import files

    return str(files("explainkit.report") / "schema" / "report.schema.json")
