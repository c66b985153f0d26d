"""Analyzers and their registry. Importing this package registers the built-in analyzers."""

from explainkit.analyzers import cam, performance
from explainkit.analyzers.base import Analyzer, Batch, Finding, RecordState, RunContext, Section
from explainkit.analyzers.registry import (
    get_analyzer,
    get_analyzer_class,
    list_analyzers,
    register_analyzer,
)
from explainkit.discovery import analyzer as discovery  # registers "discovery"
from explainkit.invert import analyzer as invert  # registers "invert"
from explainkit.prototypes import analyzer as prototypes  # registers "prototypes"

__all__ = [
    "Analyzer",
    "Batch",
    "Finding",
    "RecordState",
    "RunContext",
    "Section",
    "cam",
    "discovery",
    "get_analyzer",
    "get_analyzer_class",
    "invert",
    "list_analyzers",
    "performance",
    "prototypes",
    "register_analyzer",
]
