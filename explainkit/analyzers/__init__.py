"""Analyzers and their registry. Importing this package registers the built-in analyzers."""

from explainkit.analyzers import cam, performance
from explainkit.analyzers.base import Analyzer, Batch, Finding, RecordState, RunContext, Section
from explainkit.analyzers.registry import (
    get_analyzer,
    get_analyzer_class,
    list_analyzers,
    register_analyzer,
)
from explainkit.dissect import analyzer as dissect  # registers "dissect"
from explainkit.information import analyzer as information  # registers "information"
from explainkit.invert import analyzer as invert  # registers "invert"
from explainkit.prototypes import analyzer as prototypes  # registers "prototypes"
from explainkit.reliability import analyzer as reliability  # registers "reliability"
from explainkit.tcav import analyzer as tcav  # registers "tcav"

__all__ = [
    "Analyzer",
    "Batch",
    "Finding",
    "RecordState",
    "RunContext",
    "Section",
    "cam",
    "dissect",
    "get_analyzer",
    "get_analyzer_class",
    "information",
    "invert",
    "list_analyzers",
    "performance",
    "prototypes",
    "register_analyzer",
    "reliability",
    "tcav",
]
