"""List the globals a pickle stream imports, and how it uses them, statically (nothing is executed).

This is only used to *classify* a checkpoint and to word a refusal message. The safety barrier
itself is always torch's weights-only unpickler, so a global this scanner missed would still be
refused when loading.

The scanner runs the pickle machine symbolically over :func:`pickletools.genops`: strings, globals
and the memo are tracked, everything else is an opaque value, and each opcode pops and pushes what
``pickletools`` documents for it. That tells how every global is used: as a class that objects are
created from without calling it (``NEWOBJ``/``NEWOBJ_EX``, which is how ``torch.save`` stores an
``nn.Module``), or as a callable that unpickling would call (``REDUCE``, ``INST``, ``OBJ``: every
code-execution payload). Only the former are ever worth suggesting to ``--allow-classes``.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickletools
import zipfile
from collections.abc import Mapping
from pathlib import Path

__all__ = ["CALLED", "INSTANTIATED", "global_uses", "globals_in_pickle", "globals_in_torch_file",
           "uses_in_torch_file"]

#: How a global is used: created from with ``cls.__new__`` (no call) ...
INSTANTIATED = "instantiated"
#: ... or called (``REDUCE``, ``INST``, ``OBJ``) or used in any other way.
CALLED = "called"

_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
               "BINSTRING", "STRING"}
_MARK = object()


class _Global:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


def global_uses(data: bytes) -> dict[str, frozenset[str]]:
    """Map ``module.name`` of every global in ``data`` to how it is used.

    Parameters
    ----------
    data : bytes
        One or more pickle streams back to back (the legacy torch format holds several).

    Returns
    -------
    dict of str to frozenset of str
        Dotted name → subset of {:data:`INSTANTIATED`, :data:`CALLED`}; a global that is only
        pushed (or only reached through an unresolvable ``STACK_GLOBAL``) counts as called.
    """
    uses: dict[str, set[str]] = {}
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        start = stream.tell()
        try:
            _scan_one(stream, uses)
        except ValueError:
            # Not a pickle any more (raw storage bytes follow in the legacy format).
            break
        if stream.tell() == start:
            break
    return {name: frozenset(kinds or {CALLED}) for name, kinds in uses.items()}


def globals_in_pickle(data: bytes) -> list[str]:
    """Sorted, de-duplicated ``module.name`` of every global referenced by the pickles in ``data``."""
    return sorted(global_uses(data))


def _use(uses: dict[str, set[str]], value: object, kind: str) -> None:
    if isinstance(value, _Global):
        uses[value.name].add(kind)


def _pop_to_mark(stack: list) -> list:
    items: list = []
    while stack and stack[-1] is not _MARK:
        items.append(stack.pop())
    if stack:
        stack.pop()
    return items[::-1]


def _scan_one(stream: io.BytesIO, uses: dict[str, set[str]]) -> None:
    stack: list = []
    memo: dict[int, object] = {}

    def pop() -> object:
        return stack.pop() if stack else None

    def found(name: str) -> _Global:
        uses.setdefault(name, set())
        return _Global(name)

    for opcode, arg, _pos in pickletools.genops(stream):
        name = opcode.name
        if name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            g = found(_canonical(module, attr))
            if name == "INST":
                _pop_to_mark(stack)
                uses[g.name].add(CALLED)
                stack.append(None)
            else:
                stack.append(g)
        elif name == "STACK_GLOBAL":
            attr, module = pop(), pop()
            ok = isinstance(module, str) and isinstance(attr, str)
            stack.append(found(_canonical(module, attr) if ok else "<unresolved STACK_GLOBAL>"))
        elif name in _STRING_OPS:
            stack.append(arg.decode("latin-1") if isinstance(arg, bytes) else arg)
        elif name == "MARK":
            stack.append(_MARK)
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1] if stack else None
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = stack[-1] if stack else None
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(int(arg)))
        elif name == "REDUCE":
            pop()
            _use(uses, pop(), CALLED)
            stack.append(None)
        elif name in ("NEWOBJ", "NEWOBJ_EX"):
            pop()
            if name == "NEWOBJ_EX":
                pop()
            _use(uses, pop(), INSTANTIATED)
            stack.append(None)
        elif name == "OBJ":
            items = _pop_to_mark(stack)
            if items:
                _use(uses, items[0], CALLED)
            stack.append(None)
        elif name == "DUP":
            stack.append(stack[-1] if stack else None)
        elif name == "STOP":
            return
        else:
            _generic(opcode, stack, uses)


def _generic(opcode: pickletools.OpcodeInfo, stack: list, uses: dict[str, set[str]]) -> None:
    """Pop and push what ``pickletools`` documents; a global consumed here counts as called."""
    before, after = opcode.stack_before, opcode.stack_after
    if pickletools.stackslice in before:
        for item in _pop_to_mark(stack):
            _use(uses, item, CALLED)
        for _ in range(before.index(pickletools.markobject)):
            _use(uses, stack.pop() if stack else None, CALLED)
    else:
        for _ in before:
            _use(uses, stack.pop() if stack else None, CALLED)
    stack.extend(_MARK if item is pickletools.markobject else None for item in after)


def _canonical(module: str, attr: str) -> str:
    """Map Python 2 names (protocol <= 2 pickles) to Python 3 ones, as ``pickle`` does."""
    if (module, attr) in _compat_pickle.NAME_MAPPING:
        module, attr = _compat_pickle.NAME_MAPPING[(module, attr)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{attr}"


def uses_in_torch_file(path: str | Path, legacy: bool) -> Mapping[str, frozenset[str]]:
    """:func:`global_uses` of a ``torch.save`` file (zip ``data.pkl`` or the legacy stream).

    Parameters
    ----------
    path : str or Path
        The checkpoint.
    legacy : bool
        True for the pre-zip format.

    Returns
    -------
    mapping of str to frozenset of str
        Dotted name → how it is used.
    """
    path = Path(path)
    if legacy:
        return global_uses(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        pkl = next(n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1)
        return global_uses(zf.read(pkl))


def globals_in_torch_file(path: str | Path, legacy: bool) -> list[str]:
    """Sorted dotted names of the globals a ``torch.save`` file references."""
    return sorted(uses_in_torch_file(path, legacy))
