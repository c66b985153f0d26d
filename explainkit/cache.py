"""A content-keyed cache of activations (or any array) shared by runs and safe for concurrent writers.

Keys hash everything the value depends on — model sha256, layer, data manifest hash, parameters —
so a rerun with a changed threshold reuses the expensive forward passes, while a changed model or
probe set never does. Writes are atomic renames of complete files: concurrent writers of the same
key write identical content and the last rename wins; readers never see a partial file.

The cache folder is untrusted input (it may be shared, or damaged): entries are read with
``allow_pickle=False`` only, and an entry that cannot be read is a miss with one warning, recomputed
and replaced by the caller.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from explainkit._io import atomic_write_bytes

__all__ = ["ActivationCache", "cache_key", "default_cache_dir", "module_fingerprint"]

_log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$EXPLAINKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/explainkit``, else ``~/.cache/explainkit``."""
    env = os.environ.get("EXPLAINKIT_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "explainkit"


def cache_key(**parts: Any) -> str:
    """SHA-256 of the JSON of ``parts`` (sorted keys); every part must be JSON-serialisable."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def module_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 of a module's class and state dict (names, dtypes, shapes, bytes): for in-memory models."""
    h = hashlib.sha256(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class ActivationCache:
    """Arrays stored under ``root/<key[:2]>/<key>.npz``.

    Parameters
    ----------
    root : str or Path, optional
        Cache folder (default :func:`default_cache_dir`).
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def path(self, key: str) -> Path:
        """Where the entry ``key`` is stored."""
        return self.root / key[:2] / f"{key}.npz"

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays stored under ``key``, or ``None`` (also, with a warning, for an unreadable entry)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except Exception as exc:  # truncated, not a zip, object arrays, ...: any damage is a miss
            _log.warning("ignoring unreadable cache entry %s (%s: %s); it will be recomputed and replaced", path,
                         type(exc).__name__, exc)
            return None

    def put(self, key: str, arrays: Mapping[str, np.ndarray]) -> Path:
        """Store ``arrays`` under ``key`` (atomic)."""
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
        return atomic_write_bytes(self.path(key), buf.getvalue())
