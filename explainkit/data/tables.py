"""Readers for the probe set's tables: ``labels.csv``, ``concepts.csv``, description JSON.

``labels.csv`` comes in two forms, told apart by its header: ``path,label`` (one class name per image)
or multi-hot ``path,<label>,<label>,...`` (one 0/1 column per label, read like ``concepts.csv``); see
:func:`is_multihot_labels`.

Each reader validates every row and raises :class:`~explainkit.errors.DataError` naming the file
and the row (1-based, header = row 1), unless the caller collects bad rows to skip them.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from explainkit.errors import DataError

__all__ = ["BadRow", "ConceptTable", "is_multihot_labels", "read_concepts_csv", "read_descriptions",
           "read_labels_csv"]


@dataclass(frozen=True)
class BadRow:
    """A row that failed validation."""

    file: str
    row: int
    path: str
    reason: str

    def message(self) -> str:
        """One-line description."""
        row = f" row {self.row}" if self.row else ""
        where = f" ({self.path})" if self.path else ""
        return f"{self.file}{row}{where}: {self.reason}"


@dataclass
class ConceptTable:
    """A boolean concept table keyed by relative image path."""

    names: list[str]
    rows: dict[str, np.ndarray] = field(default_factory=dict)


def _open_csv(path: Path) -> list[list[str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            return list(csv.reader(fh))
    except UnicodeDecodeError:
        raise DataError(f"{path.name} is not UTF-8 text") from None
    except csv.Error as exc:
        raise DataError(f"{path.name} is not valid CSV: {exc}") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None


def _normalise_path(raw: str) -> str:
    p = raw.strip().replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    return p


def _check_relative(p: str) -> str | None:
    if not p:
        return "empty path"
    if p.startswith("/") or ".." in p.split("/") or ":" in p.split("/")[0]:
        return f"path {p!r} must be relative to the probe folder and stay inside it"
    return None


def read_labels_csv(path: Path, on_bad: Callable[[BadRow], None]) -> dict[str, str]:
    """Read ``path,label`` rows (label = class name).

    Parameters
    ----------
    path : Path
        The CSV file.
    on_bad : callable
        Receives each bad row; it raises to stop or returns to skip the row.

    Returns
    -------
    dict of str to str
        Relative image path → class name.
    """
    rows = _open_csv(path)
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["path", "label"]:
        raise DataError(f"{path.name}: the header must be 'path,label'")
    out: dict[str, str] = {}
    for i, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 2:
            on_bad(BadRow(path.name, i, row[0] if row else "", f"expected 2 columns, got {len(row)}"))
            continue
        p, label = _normalise_path(row[0]), row[1].strip()
        problem = _check_relative(p) or ("empty label" if not label else None) or (
            "duplicate path" if p in out else None)
        if problem:
            on_bad(BadRow(path.name, i, p, problem))
            continue
        out[p] = label
    return out


def is_multihot_labels(path: Path) -> bool:
    """Whether ``labels.csv`` is multi-hot: its header's second column is not ``label``.

    A multi-hot table is ``path,<label>,<label>,...`` (so no label may be called ``label``); a
    single-label table is ``path,label``.
    """
    rows = _open_csv(path)
    header = [c.strip().lower() for c in rows[0]] if rows else []
    return len(header) >= 2 and header[0] == "path" and header[1] != "label"


def read_concepts_csv(path: Path, on_bad: Callable[[BadRow], None], *, noun: str = "concept") -> ConceptTable:
    """Read ``path,<concept>,...`` rows with 0/1 values (also a multi-hot ``labels.csv``).

    Parameters
    ----------
    path : Path
        The CSV file.
    on_bad : callable
        Receives each bad row; it raises to stop or returns to skip the row.
    noun : str
        What a column is, in messages (``"concept"``, ``"label"``).

    Returns
    -------
    ConceptTable
        Column names (header order) and one boolean row per path.
    """
    rows = _open_csv(path)
    if not rows or not rows[0] or rows[0][0].strip().lower() != "path":
        raise DataError(f"{path.name}: the first column must be 'path'")
    names = [c.strip() for c in rows[0][1:]]
    if not names:
        raise DataError(f"{path.name}: no {noun} columns")
    if any(not n for n in names):
        raise DataError(f"{path.name}: empty {noun} name in the header")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{path.name}: duplicate {noun} column(s) {', '.join(dup)}")
    table = ConceptTable(names)
    for i, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        p = _normalise_path(row[0])
        if len(row) != len(names) + 1:
            on_bad(BadRow(path.name, i, p, f"expected {len(names) + 1} columns, got {len(row)}"))
            continue
        values = [c.strip() for c in row[1:]]
        bad = next((f"non-binary value {v!r} in column {n!r}" for v, n in zip(values, names)
                    if v not in ("0", "1")), None)
        problem = _check_relative(p) or bad or ("duplicate path" if p in table.rows else None)
        if problem:
            on_bad(BadRow(path.name, i, p, problem))
            continue
        table.rows[p] = np.array([v == "1" for v in values], dtype=bool)
    return table


def read_descriptions(path: Path) -> list[dict]:
    """Read an INVERT-style description JSON: ``{"0": {"name": ..., ...}, "1": ...}`` or a list.

    Entries may carry ``definition``, ``offset`` and ``artifact`` (bool, marks a spurious cue).

    Parameters
    ----------
    path : Path
        The JSON file.

    Returns
    -------
    list of dict
        One entry per concept column, in column order.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path.name} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    except RecursionError:
        raise DataError(f"{path.name} is nested too deeply to be a description file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if isinstance(data, dict):
        try:
            keys = sorted(data, key=int)
        except ValueError:
            raise DataError(f"{path.name}: keys must be column numbers \"0\", \"1\", ...") from None
        if [int(k) for k in keys] != list(range(len(keys))):
            raise DataError(f"{path.name}: column numbers must run 0..{len(keys) - 1} without gaps")
        data = [data[k] for k in keys]
    if not isinstance(data, list) or not all(isinstance(e, dict) and isinstance(e.get("name"), str) for e in data):
        raise DataError(f"{path.name}: every entry needs a string 'name'")
    return data
