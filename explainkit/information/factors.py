"""Generative factors of a probe set: from ``world.json`` (synthetic worlds) or the concept table.

* ``world.json`` (written by :func:`explainkit.datasets.synthetic.write_world`): one record per image,
  ``{"id": ..., "shape": ..., "colour": ..., ...}``; every key except ``id`` and ``label`` whose values
  are strings, numbers or booleans is a categorical factor.
* Otherwise the concept table: columns whose ``descriptions.json`` entries share a ``"factor"`` key
  and mark exactly one of them per image form one categorical factor; every other column is a binary
  factor named after the concept.

The file is data (untrusted): it is parsed as JSON, checked against the probe set's ids, and only
scalar values are used.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from explainkit.data.probe import ProbeSet
from explainkit.errors import ConfigError, DataError

__all__ = ["Factor", "probe_factors", "usable_factors"]

_SKIP_KEYS = {"id", "label"}
_MAX_WORLD_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Factor:
    """A discrete generative factor.

    Attributes
    ----------
    name : str
        Factor name.
    levels : tuple of str
        Level names, in code order.
    codes : ndarray
        (N,) int64 level of each probe image.
    source : str
        Where it came from (``world.json``, ``concept table``).
    """

    name: str
    levels: tuple[str, ...]
    codes: np.ndarray
    source: str

    def subset(self, rows: np.ndarray) -> Factor:
        """The factor on the images at ``rows``."""
        return Factor(self.name, self.levels, self.codes[rows], self.source)

    def smallest_level(self) -> int:
        """Images in the factor's rarest level (levels without images do not count)."""
        counts = np.bincount(self.codes)
        return int(counts[counts > 0].min())


def _encode(values: Sequence[str]) -> tuple[tuple[str, ...], np.ndarray]:
    levels = tuple(sorted(set(values)))
    index = {v: i for i, v in enumerate(levels)}
    return levels, np.array([index[v] for v in values], np.int64)


def _from_world(probe: ProbeSet) -> list[Factor] | None:
    path = probe.root / "world.json"
    if not path.is_file():
        return None
    if path.stat().st_size > _MAX_WORLD_BYTES:
        raise DataError(f"{path.name} is larger than {_MAX_WORLD_BYTES // 2**20} MiB")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {path.name}: {exc}") from None
    samples = doc.get("samples") if isinstance(doc, dict) else None
    if not isinstance(samples, list) or not all(isinstance(s, dict) and isinstance(s.get("id"), str) for s in samples):
        raise DataError(f"{path.name}: 'samples' must be a list of records with a string 'id'")
    by_id = {s["id"]: s for s in samples}
    missing = [i for i in probe.ids if i not in by_id]
    if missing:
        raise DataError(f"{path.name} has no record for {len(missing)} probe image(s), e.g. {missing[0]}")
    rows = [by_id[i] for i in probe.ids]
    keys = [k for k in rows[0] if k not in _SKIP_KEYS]
    out = []
    for key in keys:
        values = [r.get(key) for r in rows]
        if not all(isinstance(v, str | bool | int) or (isinstance(v, float) and np.isfinite(v)) for v in values):
            continue
        levels, codes = _encode([str(v) for v in values])
        out.append(Factor(str(key), levels, codes, "world.json"))
    return out


def _from_concepts(probe: ProbeSet) -> list[Factor]:
    if probe.concepts is None:
        raise ConfigError("the probe set has no generative factors: add world.json or a concept table")
    table = probe.concepts
    group: dict[str, list[int]] = {}
    for col, desc in enumerate(probe.descriptions):
        if isinstance(desc.get("factor"), str):
            group.setdefault(desc["factor"], []).append(col)
    out, used = [], set()
    for name, cols in group.items():
        block = table[:, cols]
        if len(cols) > 1 and np.all(block.sum(1) == 1):
            levels = tuple(probe.concept_names[c] for c in cols)
            out.append(Factor(name, levels, block.argmax(1).astype(np.int64), "concept table (one-hot columns)"))
            used.update(cols)
    for col, name in enumerate(probe.concept_names):
        if col not in used:
            out.append(Factor(name, ("absent", "present"), table[:, col].astype(np.int64), "concept table (column)"))
    return out


def probe_factors(probe: ProbeSet, names: Sequence[str] | None = None) -> list[Factor]:
    """The probe set's generative factors (see the module docstring).

    Parameters
    ----------
    probe : ProbeSet
        The probe set.
    names : sequence of str, optional
        Factors to keep (default: all with at least two levels).

    Returns
    -------
    list of Factor
        Factors in file/column order.

    Raises
    ------
    ConfigError
        Unknown factor names, or no factor at all.
    DataError
        A malformed ``world.json``.
    """
    factors = _from_world(probe)
    if factors is None:
        factors = _from_concepts(probe)
    available = [f.name for f in factors]
    if names is not None:
        unknown = [n for n in names if n not in available]
        if unknown:
            raise ConfigError(f"unknown factor(s) {', '.join(unknown)}; available: {', '.join(available)}")
        factors = [f for f in factors if f.name in names]
    factors = [f for f in factors if np.unique(f.codes).size >= 2]
    if not factors:
        raise ConfigError("no generative factor with at least two levels in this probe set")
    return factors


def usable_factors(factors: Sequence[Factor], min_level_images: int = 2) -> tuple[list[Factor], dict[str, str]]:
    """Split factors into those whose every level has ``min_level_images`` images and the others.

    A Gaussian per level needs at least two images (a continuous value in ``world.json``, e.g. a
    position, makes one level per image and cannot be estimated this way).

    Parameters
    ----------
    factors : sequence of Factor
        Candidate factors.
    min_level_images : int
        Images needed in each level.

    Returns
    -------
    usable : list of Factor
        Factors that can be estimated, in input order.
    skipped : dict of str to str
        Factor name → why it was left out.
    """
    usable, skipped = [], {}
    for f in factors:
        smallest = f.smallest_level()
        if smallest < min_level_images:
            skipped[f.name] = (f"{len(np.unique(f.codes))} levels, the rarest with {smallest} image(s); every level "
                               f"needs {min_level_images} (a continuous value must be binned first)")
        else:
            usable.append(f)
    return usable, skipped
