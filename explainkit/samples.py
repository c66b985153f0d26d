"""Per-sample outputs (e.g. heatmaps) in shard files keyed by sample id, next to the report.

Any backend may write them: each call writes one content-addressed ``.npz`` shard (named by a hash
of the ids it holds) atomically, so workers never collide and reruns overwrite identical files.
Only summaries go into the JSON/HTML report; :func:`read_samples` gathers the shards back.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from explainkit._io import atomic_write_bytes

__all__ = ["read_samples", "write_samples"]


def write_samples(out_dir: Path | None, analyzer: str, ids: Sequence[str], **arrays: np.ndarray) -> Path | None:
    """Write per-sample arrays (first axis = ``len(ids)``) to ``out_dir/samples/<analyzer>/``.

    Parameters
    ----------
    out_dir : Path or None
        The run's output folder; nothing is written when ``None``.
    analyzer : str
        Analyzer name (sub-folder).
    ids : sequence of str
        Sample ids, one per row.
    **arrays : ndarray
        Arrays with ``len(ids)`` rows, e.g. ``heatmap=(B, H, W)``.

    Returns
    -------
    Path or None
        The shard written.
    """
    if out_dir is None or not ids:
        return None
    for name, arr in arrays.items():
        if len(arr) != len(ids):
            raise ValueError(f"{name} has {len(arr)} rows for {len(ids)} ids")
    key = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:20]
    buf = io.BytesIO()
    np.savez_compressed(buf, ids=np.asarray(ids, dtype=str), **{k: np.asarray(v) for k, v in arrays.items()})
    return atomic_write_bytes(Path(out_dir) / "samples" / analyzer / f"{key}.npz", buf.getvalue())


def read_samples(out_dir: str | Path, analyzer: str) -> dict[str, dict[str, np.ndarray]]:
    """Gather every shard of ``analyzer``: sample id → {array name → row}."""
    folder = Path(out_dir) / "samples" / analyzer
    out: dict[str, dict[str, np.ndarray]] = {}
    for shard in sorted(folder.glob("*.npz")):
        with np.load(shard, allow_pickle=False) as data:
            names = [n for n in data.files if n != "ids"]
            for j, sid in enumerate(data["ids"].tolist()):
                out[sid] = {n: data[n][j] for n in names}
    return out
