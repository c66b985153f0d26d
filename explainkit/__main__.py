"""``python -m explainkit`` (used by ``torchrun -m explainkit ...``)."""

from explainkit.cli.main import entry

entry()
