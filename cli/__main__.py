"""``python -m explainkit.cli``."""

from explainkit.cli.main import entry

entry()
