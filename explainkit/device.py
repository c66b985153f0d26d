"""Where the model runs: validate a device string before anything loads onto it."""

from __future__ import annotations

import torch

from explainkit.errors import ConfigError

__all__ = ["resolve_device"]


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
