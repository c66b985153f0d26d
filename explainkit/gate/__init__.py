"""The spurious-correlation gate: policy files, interventional checks, and CI outputs.

>>> result = explainkit.check(handle, "policy.toml", out="gate-out", junit="junit.xml")  # doctest: +SKIP
>>> result.exit_code, result.status  # doctest: +SKIP
(1, 'fail')

Modules: :mod:`~explainkit.gate.policy` (TOML schema and validation), :mod:`~explainkit.gate.kinds`
(one module per check kind, and their registry), :mod:`~explainkit.gate.decision` (PASS / FAIL /
INCONCLUSIVE, minimal detectable effect, exit codes), :mod:`~explainkit.gate.runner`
(:func:`check`), and the outputs :mod:`~explainkit.gate.junit`, :mod:`~explainkit.gate.annotations`
(GitHub) and :mod:`~explainkit.gate.text`.
"""

from explainkit.gate.kinds import CheckKind, Measurement, get_check_kind, list_check_kinds, register_check_kind
from explainkit.gate.policy import CheckSpec, GateDefaults, Policy, Waiver, load_policy, parse_policy
from explainkit.gate.runner import GateResult, check

__all__ = [
    "CheckKind",
    "CheckSpec",
    "GateDefaults",
    "GateResult",
    "Measurement",
    "Policy",
    "Waiver",
    "check",
    "get_check_kind",
    "list_check_kinds",
    "load_policy",
    "parse_policy",
    "register_check_kind",
]
