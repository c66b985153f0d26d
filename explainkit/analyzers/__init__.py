"""The analyzer contract, the analyzer registry and the ``performance`` analyzer.

Method families (``explainkit.cam``, ``explainkit.invert``, ``explainkit.prototypes``, ...) hold their
own analyzers; the registry finds them through its table of built-ins and the ``explainkit.analyzers``
entry-point group, so this package never imports them.
"""

from explainkit.analyzers.base import Analyzer, Batch, Finding, RecordState, RunContext, Section
from explainkit.analyzers.registry import (
    get_analyzer,
    get_analyzer_class,
    list_analyzers,
    register_analyzer,
)

__all__ = [
    "Analyzer",
    "Batch",
    "Finding",
    "RecordState",
    "RunContext",
    "Section",
    "get_analyzer",
    "get_analyzer_class",
    "list_analyzers",
    "register_analyzer",
]
