"""Render the JSON report as one self-contained, offline HTML file (Jinja2, autoescaped).

Only ``data:image/png``, ``data:image/jpeg`` and ``data:image/webp`` base64 URIs are rendered as
images; any other asset (``javascript:``, ``https:``, SVG or HTML data URIs: a report JSON may come
from anywhere) is dropped with one warning.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from functools import cache
from typing import Any

import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined, TemplateNotFound, select_autoescape
from markupsafe import Markup

__all__ = ["EMBED_BYTES", "embedded_data", "register_section_template", "render_body", "render_html", "safe_assets"]

#: Largest JSON copy of the report embedded in the HTML page; above it the page embeds the report
#: without the sections' ``data`` (per-unit and per-image tables stay in ``report.json``).
EMBED_BYTES = 2 * 2**20

#: Analyzer name → Jinja source of its section (plugins without a template file; see
#: :func:`register_section_template`).
_SECTION_SOURCES: dict[str, str] = {}


def register_section_template(analyzer: str, source: str) -> None:
    """Render the sections of ``analyzer`` with the Jinja template ``source``.

    The analyzer registry calls this for classes with a ``template_source`` attribute; built-in
    analyzers have files under ``templates/sections/``.
    """
    _SECTION_SOURCES[analyzer] = source


_log = logging.getLogger(__name__)
_IMAGE_URI = re.compile(r"data:image/(?:png|jpeg|webp);base64,[A-Za-z0-9+/]*={0,2}")


def safe_assets(assets: Mapping[str, Any]) -> dict[str, str]:
    """The assets that are base64 PNG, JPEG or WebP data URIs; the others are dropped with a warning."""
    kept = {k: v for k, v in assets.items() if isinstance(v, str) and _IMAGE_URI.fullmatch(v)}
    dropped = sorted(str(k) for k in assets if k not in kept)
    if dropped:
        _log.warning("dropped %d asset(s) that are not data:image/png, jpeg or webp URIs: %s", len(dropped),
                     ", ".join(repr(k) for k in dropped[:5]))
    return kept


#: Largest confusion matrix shown whole in HTML; above it, only the labelled classes and an "other" column.
CONFUSION_CLASSES = 30


def confusion_view(confusion: Mapping[str, Any], max_classes: int = CONFUSION_CLASSES) -> dict[str, Any]:
    """The part of a (K, K) confusion matrix worth a table: classes that occur, the rest summed.

    Classes with neither a labelled image nor a prediction are left out. When more than
    ``max_classes`` remain (a 1,000-class model predicting all over a small probe set), the rows and
    columns are the labelled classes and one ``other`` column counts predictions of any other class;
    the whole matrix stays in ``report.json``.

    Parameters
    ----------
    confusion : mapping
        The ``confusion`` record of the performance section (``classes``, ``matrix`` rows = labels).
    max_classes : int
        Most classes shown.

    Returns
    -------
    dict
        ``columns`` (class names), ``rows`` (``(name, counts, other count, row total)``), ``other``
        (whether the ``other`` column exists), ``hidden`` (classes summed into it).
    """
    matrix = np.asarray(confusion["matrix"], dtype=np.int64).reshape(len(confusion["classes"]), -1)
    labelled = np.flatnonzero(matrix.sum(1))
    keep = np.flatnonzero(matrix.sum(1) + matrix.sum(0))
    if keep.size > max_classes:
        keep = labelled
    other = matrix.sum(1) - matrix[:, keep].sum(1)
    names = list(confusion["classes"])
    return {"columns": [names[j] for j in keep], "other": bool(other[keep].any()),
            "hidden": int((matrix.sum(0) > 0).sum() - (matrix.sum(0)[keep] > 0).sum()),
            "rows": [(names[i], matrix[i, keep].tolist(), int(other[i]), int(matrix[i].sum())) for i in keep]}


@cache
def _env() -> Environment:
    env = Environment(
        loader=PackageLoader("explainkit.report", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html", "j2"), default_for_string=True, default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["confusion_view"] = confusion_view
    return env


def _section_template(analyzer: str):
    env = _env()
    source = _SECTION_SOURCES.get(analyzer)
    if source:
        return env.from_string(source)
    try:
        return env.get_template(f"sections/{analyzer}.html.j2")
    except TemplateNotFound:
        return env.get_template("sections/_generic.html.j2")


def _context(report: dict[str, Any]) -> dict[str, Any]:
    assets = safe_assets(report.get("assets", {}))
    sections_html = []
    for i, section in enumerate(report.get("sections", [])):
        name = section["analyzer"]

        def asset(key: str, _name: str = name) -> str | None:
            return assets.get(f"{_name}:{key}") or assets.get(key)

        try:
            html = _section_template(name).render(section=section, asset=asset, report=report)
        except Exception as exc:
            raise RuntimeError(f"section {name!r} (sections[{i}]) does not fit its template: "
                               f"{type(exc).__name__}: {exc}") from exc
        sections_html.append(Markup(html))  # noqa: S704 - rendered by an autoescaping template

    def top_asset(key: str) -> str | None:
        return assets.get(key)

    prov = report.get("provenance", {})
    title = (prov.get("model") or {}).get("source") or "in-memory model"
    return {"report": report, "prov": prov, "section_html": sections_html, "asset": top_asset,
            "title": title, "data_without_assets": embedded_data(report)}


def embedded_data(report: dict[str, Any], limit: int = EMBED_BYTES) -> dict[str, Any]:
    """The copy of the report embedded in the HTML page: all of it but the assets, within ``limit`` bytes.

    A report whose JSON is larger (a ResNet-50's 2,048 units in several analyzers) is embedded without
    the sections' ``data``, with ``"data_omitted"`` naming where the full document is.
    """
    doc = {k: v for k, v in report.items() if k != "assets"}
    size = 0
    for chunk in json.JSONEncoder(separators=(",", ":"), default=str).iterencode(doc):  # stops at the limit
        size += len(chunk)
        if size > limit:
            break
    else:
        return doc
    return {**doc, "sections": [{k: v for k, v in s.items() if k != "data"} for s in doc.get("sections", [])],
            "data_omitted": f"section data above {limit // 2**20} MiB: see report.json next to this page"}


def render_html(report: dict[str, Any]) -> str:
    """The full HTML document for a JSON report dict.

    Parameters
    ----------
    report : dict
        A report as produced by :class:`explainkit.report.Report`.

    Returns
    -------
    str
        One offline HTML file (inline CSS and JS, images as data URIs, a Content-Security-Policy
        forbidding any network access).
    """
    return _env().get_template("report.html.j2").render(**_context(report))


def render_body(report: dict[str, Any]) -> str:
    """The report body with its scoped style, for notebooks (``Report._repr_html_``)."""
    env = _env()
    style = env.get_template("style.css.j2").render()
    body = env.get_template("body.html.j2").render(**_context(report))
    return f"<style>{style}</style>{body}"
