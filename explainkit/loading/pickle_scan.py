"""List the globals a pickle stream imports, statically (nothing is unpickled or executed).

This is only used to *classify* a checkpoint and to name what it needs in a refusal message. The
safety barrier itself is always torch's weights-only unpickler, so a global this scanner missed
would still be refused when loading.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickletools
import zipfile
from pathlib import Path

__all__ = ["globals_in_pickle", "globals_in_torch_file"]

_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
               "BINSTRING", "STRING"}


def globals_in_pickle(data: bytes) -> list[str]:
    """Return ``module.name`` for every global referenced by the pickles in ``data``.

    Parameters
    ----------
    data : bytes
        One or more pickle streams back to back (the legacy torch format holds several).

    Returns
    -------
    list of str
        Sorted, de-duplicated dotted names.
    """
    found: set[str] = set()
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        start = stream.tell()
        try:
            _scan_one(stream, found)
        except ValueError:
            # Not a pickle any more (raw storage bytes follow in the legacy format).
            break
        if stream.tell() == start:
            break
    return sorted(found)


def _scan_one(stream: io.BytesIO, found: set[str]) -> None:
    memo: dict[int, object] = {}
    recent: list[object] = []
    for opcode, arg, _pos in pickletools.genops(stream):
        name = opcode.name
        if name == "GLOBAL" or name == "INST":
            module, _, attr = str(arg).partition(" ")
            found.add(_canonical(module, attr))
            recent.append(None)
        elif name == "STACK_GLOBAL":
            if len(recent) >= 2 and isinstance(recent[-2], str) and isinstance(recent[-1], str):
                found.add(_canonical(recent[-2], recent[-1]))
            else:
                found.add("<unresolved STACK_GLOBAL>")
            recent.append(None)
        elif name in _STRING_OPS:
            recent.append(arg if isinstance(arg, str) else arg.decode("latin-1") if isinstance(arg, bytes) else arg)
        elif name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif name in {"PUT", "BINPUT", "LONG_BINPUT"}:
            memo[int(arg)] = recent[-1] if recent else None
        elif name in {"GET", "BINGET", "LONG_BINGET"}:
            recent.append(memo.get(int(arg)))
        else:
            recent.append(None)
        if name == "STOP":
            return


def _canonical(module: str, attr: str) -> str:
    """Map Python 2 names (protocol <= 2 pickles) to Python 3 ones, as ``pickle`` does."""
    if (module, attr) in _compat_pickle.NAME_MAPPING:
        module, attr = _compat_pickle.NAME_MAPPING[(module, attr)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{attr}"


def globals_in_torch_file(path: str | Path, legacy: bool) -> list[str]:
    """Globals referenced by a ``torch.save`` file (zip ``data.pkl`` or the legacy stream).

    Parameters
    ----------
    path : str or Path
        The checkpoint.
    legacy : bool
        True for the pre-zip format.

    Returns
    -------
    list of str
        Sorted dotted names.
    """
    path = Path(path)
    if legacy:
        return globals_in_pickle(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        pkl = next(n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1)
        return globals_in_pickle(zf.read(pkl))
