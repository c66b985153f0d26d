"""Exceptions and the public exit-code contract.

Every error a user can cause carries an exit code, so the command line maps it to a one-line
message and a documented status instead of a traceback.

=====  =========================================================================
Code   Meaning
=====  =========================================================================
0      ran; no gating check failed
1      ran; at least one gating check failed (findings)
2      usage or configuration error (bad flag, bad config, bad data, wrong layer)
3      runtime error (analyzer crashed, non-finite model outputs, out of memory)
4      model refused by the loading policy, or an unrecognised / corrupt model file
=====  =========================================================================
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "CapabilityError",
    "ConfigError",
    "DataError",
    "ExitCode",
    "ExplainkitError",
    "ModelRefusedError",
    "RuntimeAnalysisError",
]


class ExitCode(IntEnum):
    """Exit statuses of the ``explainkit`` command (a public contract)."""

    OK = 0
    FINDINGS = 1
    USAGE = 2
    RUNTIME = 3
    REFUSED = 4


class ExplainkitError(Exception):
    """Base class of all errors explainkit raises on purpose.

    The message is a single line meant for the user; ``exit_code`` is what the CLI returns.
    """

    exit_code: ExitCode = ExitCode.RUNTIME


class ConfigError(ExplainkitError, ValueError):
    """Bad parameters, options, configuration files, layer names or architecture specs."""

    exit_code = ExitCode.USAGE


class DataError(ConfigError):
    """Bad probe data: missing or unreadable images, malformed tables, misaligned concepts."""


class CapabilityError(ConfigError):
    """An analyzer needs something the model handle or the data does not provide."""


class ModelRefusedError(ExplainkitError):
    """The loading policy refused a model file, or its format is unknown or corrupt."""

    exit_code = ExitCode.REFUSED


class RuntimeAnalysisError(ExplainkitError, RuntimeError):
    """An analysis failed while running (non-finite outputs, a crashing analyzer, ...)."""

    exit_code = ExitCode.RUNTIME
