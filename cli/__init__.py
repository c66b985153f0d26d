"""Command-line interface (installed as ``explainkit.cli``; the ``explainkit`` console script)."""
