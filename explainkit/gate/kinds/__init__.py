"""Check kinds and their registry. Importing this package registers the built-in kinds."""

from explainkit.gate.kinds import attribution_mass, insertion, randomisation, removal, slice_gap, slice_shift
from explainkit.gate.kinds.base import (
    CheckContext,
    CheckKind,
    Measurement,
    get_check_kind,
    list_check_kinds,
    paired_measurement,
    register_check_kind,
)

__all__ = [
    "CheckContext",
    "CheckKind",
    "Measurement",
    "attribution_mass",
    "get_check_kind",
    "insertion",
    "list_check_kinds",
    "paired_measurement",
    "randomisation",
    "register_check_kind",
    "removal",
    "slice_gap",
    "slice_shift",
]
