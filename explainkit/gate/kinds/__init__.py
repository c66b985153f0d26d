"""Check kinds, their registry and the helpers only kinds use (interventions, masks, saliency, artifacts).

The registry (:data:`~explainkit.gate.kinds.base.CHECK_KINDS`) lists the built-in kinds and imports
a kind's module when the registry is first read.
"""

from explainkit.gate.kinds.base import (
    CHECK_KINDS,
    CheckContext,
    CheckKind,
    Measurement,
    get_check_kind,
    list_check_kinds,
    paired_measurement,
    register_check_kind,
)

__all__ = [
    "CHECK_KINDS",
    "CheckContext",
    "CheckKind",
    "Measurement",
    "get_check_kind",
    "list_check_kinds",
    "paired_measurement",
    "register_check_kind",
]
