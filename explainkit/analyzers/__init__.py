"""Analyzers and their registry. Importing this package registers the built-in analyzers."""

from explainkit.analyzers import performance
from explainkit.analyzers.base import Analyzer, Batch, Finding, RecordState, RunContext, Section
from explainkit.analyzers.registry import (
    get_analyzer,
    get_analyzer_class,
    list_analyzers,
    register_analyzer,
)
from explainkit.prototypes import analyzer as prototypes  # noqa: F401  (registers "prototypes")

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
    "performance",
    "register_analyzer",
]
