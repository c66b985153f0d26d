"""Output paths checked before any work, and output folders swapped in whole.

A file option (``--junit``, ``--html``) is checked with :func:`check_output_file` before the first
model pass; a run's output folder (``--out``) is built beside itself and swapped in when the run
succeeds (:class:`StagedDir`). Single files are written with :mod:`explainkit._io`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from pathlib import Path

from explainkit.errors import ConfigError

__all__ = ["StagedDir", "check_output_file"]


def _first_existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(".")


def check_output_file(path: str | Path, option: str) -> Path:
    """Check, before any work, that a file can be written at ``path``.

    Parameters
    ----------
    path : str or Path
        Where the file will go (its folders are created when written).
    option : str
        The option that named it, for the message (``--junit``, ``--html``).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ConfigError
        ``path`` is a folder, a parent is a file, or the nearest existing folder is not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; give a file name")
    _check_parent(path, option)
    return path


def _check_parent(path: Path, option: str) -> None:
    base = _first_existing(path.parent)
    if not base.is_dir():
        raise ConfigError(f"{option} {path}: {base} is not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: cannot write in {base}")


class StagedDir:
    """A run's output folder, built in a fresh sibling and swapped in when the run succeeds.

    Readers of ``target`` therefore see the previous complete outputs or the new complete ones,
    never a mix: a failed, interrupted or SIGTERM'd run removes its staging folder and leaves the
    previous outputs untouched, and a reused folder holds only the last run's files. On Linux the
    swap is one atomic ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames.

    Parameters
    ----------
    target : str or Path
        The output folder (``--out``). It may not exist yet, be empty, or hold a previous
        explainkit output (a ``report.json``); anything else is refused rather than replaced.
    option : str
        The option that named it, for messages.
    token : str, optional
        Names the staging folder; processes given the same token share it (torchrun ranks).
        Default: unique to this process.
    owner : bool
        Whether this process commits or removes the staging folder (torchrun: rank 0 only).

    Raises
    ------
    ConfigError
        On construction, before any work: ``target`` is a file, a foreign non-empty folder, or
        cannot be created.
    """

    def __init__(self, target: str | Path, option: str = "--out", token: str | None = None,
                 owner: bool = True) -> None:
        target = Path(os.path.abspath(target))
        if target.is_symlink() and target.is_dir():
            target = target.resolve()
        if not target.name:
            raise ConfigError(f"{option} {target}: the root folder cannot be an output folder")
        if target.exists() and not target.is_dir():
            raise ConfigError(f"{option} {target} is not a folder")
        if target.is_dir() and any(target.iterdir()) and not (target / "report.json").is_file():
            raise ConfigError(f"{option} {target} is not empty and holds no explainkit report; refusing to replace "
                              "it (choose a new or empty folder)")
        _check_parent(target, option)
        self.target = target
        self.owner = owner
        self.path = target.with_name(f".{target.name}.staging-{token or f'{os.getpid()}-{os.urandom(4).hex()}'}")
        self.committed = False

    def __enter__(self) -> StagedDir:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def commit(self) -> Path:
        """Swap the staging folder in as ``target``; returns ``target``."""
        if self.target.is_dir():
            if _exchange(self.path, self.target):
                shutil.rmtree(self.path, ignore_errors=True)
            else:
                old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}-{os.urandom(4).hex()}")
                os.rename(self.target, old)
                try:
                    os.rename(self.path, self.target)
                except BaseException:
                    os.rename(old, self.target)
                    raise
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.path, self.target)
        self.committed = True
        return self.target

    def __exit__(self, *exc: object) -> None:
        if self.owner and not self.committed:
            shutil.rmtree(self.path, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths with Linux ``renameat2``; ``False`` where that is unavailable."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))
