"""Where the model runs: validate a device string before anything loads onto it; autocast on CUDA."""

from __future__ import annotations

import contextlib

import torch

from explainkit.errors import ConfigError

__all__ = ["AUTOCAST_DTYPES", "autocast", "resolve_device"]

#: ``--autocast`` values and their dtypes (CUDA only).
AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast(device: torch.device, dtype: str | None) -> contextlib.AbstractContextManager:
    """Autocast for model passes on CUDA with ``dtype``; a no-op on other devices or without a dtype.

    Only the model's own operations run in lower precision; callers convert logits to float32
    before any softmax, score or statistic.
    """
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=AUTOCAST_DTYPES[dtype])


def resolve_device(device: str | torch.device) -> torch.device:
    """Validate a device string (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"bad device {device!r}") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"device {device} requested but CUDA is not available here")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device mps requested but MPS is not available here")
    return dev
