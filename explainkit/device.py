"""Where the model runs: validate a device string before anything loads onto it; autocast on CUDA; host memory."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Callable

import torch

from explainkit.errors import ConfigError

__all__ = ["AUTOCAST_DTYPES", "autocast", "release_host_memory", "resolve_device"]

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


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """The C library's ``malloc_trim`` (glibc), or ``None`` on other C libraries and systems."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
        return None


def release_host_memory() -> None:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim``; a no-op elsewhere).

    A CPU model pass allocates and frees hundreds of MB of activations in blocks of many sizes;
    glibc keeps the freed blocks in its arenas, so without a trim the process's resident memory
    grows with every differently sized pass (measured on a ResNet-50 at 224 px: +390 MB kept after
    one forward and backward of 4 images, given back by a trim). The runner calls this after each
    analyzer's step of a batch, so the peak stays near the live memory of one pass.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
