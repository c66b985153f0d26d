"""The parts of a report that analyzers produce: a :class:`Section` per analyzer and its :class:`Finding` s."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Finding", "Section"]


@dataclass
class Finding:
    """Something a reviewer should see first (shown in the report summary).

    Attributes
    ----------
    severity : str
        ``"info"``, ``"warning"`` or ``"error"``.
    message : str
        One sentence, with numbers.
    analyzer : str
        Who found it.
    evidence : dict
        Numbers backing the message.
    """

    severity: str
    message: str
    analyzer: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"severity": self.severity, "message": self.message, "analyzer": self.analyzer,
                "evidence": self.evidence}


@dataclass
class Section:
    """An analyzer's result: a JSON section, image assets and findings.

    Attributes
    ----------
    analyzer : str
        Registry name.
    title : str
        Human title.
    params : dict
        The analyzer's parameters (``get_params()``).
    summary : dict
        Headline numbers (shown in the report summary).
    data : dict
        Everything else (JSON-ready; numbers say their units and direction).
    findings : list of Finding
        Reviewer-facing conclusions.
    assets : dict of str to str
        Asset id → data URI, referenced from ``data`` by id.
    """

    analyzer: str
    title: str
    params: dict[str, Any]
    summary: dict[str, Any]
    data: dict[str, Any]
    findings: list[Finding] = field(default_factory=list)
    assets: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready section (assets are stored report-wide, not here)."""
        return {"analyzer": self.analyzer, "title": self.title, "params": self.params,
                "summary": self.summary, "data": self.data,
                "findings": [f.to_dict() for f in self.findings]}
