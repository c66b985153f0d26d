"""Volume probe data: ``.npy`` arrays (and NIfTI through nibabel, an optional extra) as (C, D, H, W).

Layout of a volume folder: ``root/<id>.npy`` (or ``.nii`` / ``.nii.gz``), an optional ``labels.csv``
(``path,label``, as image probe sets; class names sorted unless ``classes.txt`` fixes the order), and
optional masks ``root/masks/<name>/<id>.npy`` (any volume format; a voxel is inside when its value
is > 0) of the volume's spatial shape.

Axis conventions:

* ``.npy``: a 3-D array is (D, H, W) with one channel; a 4-D array is (C, D, H, W) as stored.
* NIfTI: voxel axes (i, j, k[, t]) are read as W = i, H = j, D = k and channels = t, i.e. the
  array is transposed to (t, k, j, i); the header's scaling (``scl_slope``/``scl_inter``) is applied,
  the affine is not (the model sees the stored voxel grid).

Safety: ``.npy`` files are read with ``allow_pickle=False`` (object arrays are refused) and the
header is checked (real numeric dtype, 3 or 4 axes, at most :data:`MAX_VOXELS` values) before any
data is read; non-finite values are refused. Files that are symlinks resolving outside the folder are
refused unless ``follow_symlinks=True``.

A :class:`VolumeSet` is also a probe set for ``explainkit analyze``: it has the reading interface
the runner and the analyzers use (``kind``, ``ids``, ``labels``, ``load_image``, ``iter_batches``,
``mask``, ``describe``; no concept table), and the model sees its volumes as stored
(:class:`explainkit.loading.volume_input.VolumeInput`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from explainkit.data.probe import ProbeSet, _Containment
from explainkit.data.tables import BadRow, read_labels_csv
from explainkit.errors import DataError

__all__ = ["MAX_VOXELS", "VOLUME_EXTENSIONS", "VolumeSet", "read_volume", "read_volume_mask", "read_volume_shape",
           "volume_id"]

VOLUME_EXTENSIONS = (".npy", ".nii", ".nii.gz")
#: Most values one volume may hold (channels x voxels), checked from the header before reading.
MAX_VOXELS = 64_000_000


def volume_id(path: Path) -> str | None:
    """The extension a volume file has (one of :data:`VOLUME_EXTENSIONS`), or ``None``."""
    name = path.name.lower()
    return next((ext for ext in sorted(VOLUME_EXTENSIONS, key=len, reverse=True) if name.endswith(ext)), None)


def _check_header(shape: Sequence[int], dtype: np.dtype, where: str) -> None:
    if dtype.kind not in "biuf":
        raise DataError(f"{where}: values of dtype {dtype} are not a real-valued volume")
    if len(shape) not in (3, 4):
        raise DataError(f"{where}: expected a 3-D (D, H, W) or 4-D (C, D, H, W) volume, got shape {tuple(shape)}")
    if int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
        raise DataError(f"{where}: {tuple(shape)} holds more than {MAX_VOXELS} values")
    if min(shape) < 1:
        raise DataError(f"{where}: empty volume of shape {tuple(shape)}")


def _open_npy(path: Path) -> np.ndarray:
    """The header-checked array of a ``.npy`` file, memory-mapped (no voxel read yet)."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:  # object arrays need pickle: refused
        if "object" in str(exc).lower() or "pickle" in str(exc).lower():
            raise DataError(f"cannot read {path.name}: it holds Python objects (a pickle), and volumes are read "
                            "with allow_pickle=False") from None
        raise DataError(f"cannot read {path.name}: {exc}") from None
    except OSError as exc:
        raise DataError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path.name} is not a single .npy array")
    _check_header(arr.shape, arr.dtype, path.name)
    return arr


def _read_npy(path: Path) -> np.ndarray:
    vol = np.asarray(_open_npy(path), dtype=np.float32)
    return vol[None] if vol.ndim == 3 else vol


def _open_nifti(path: Path) -> tuple[Any, tuple[int, ...]]:
    """The lazily loaded NIfTI image and its header-checked voxel shape (i, j, k[, t])."""
    try:
        import nibabel
    except ImportError:
        raise DataError(f"{path.name}: reading NIfTI needs nibabel (pip install 'explainkit[nifti]')") from None
    try:
        img = nibabel.load(str(path))
        shape, dtype = tuple(int(s) for s in img.shape), np.dtype(img.get_data_dtype())
    except Exception as exc:  # nibabel raises many types on malformed headers
        raise DataError(f"cannot read {path.name} as NIfTI: {exc}") from None
    if len(shape) == 5 and shape[3] == 1:  # (i, j, k, 1, c): NIfTI's vector-valued voxels
        shape = shape[:3] + shape[4:]
    _check_header(shape, dtype, path.name)
    return img, shape


def _read_nifti(path: Path) -> np.ndarray:
    img, shape = _open_nifti(path)
    try:
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except Exception as exc:
        raise DataError(f"cannot read the voxels of {path.name}: {exc}") from None
    vol = data.transpose(2, 1, 0) if data.ndim == 3 else data.transpose(3, 2, 1, 0)
    return np.ascontiguousarray(vol[None] if vol.ndim == 3 else vol)


def read_volume_shape(path: str | Path) -> tuple[int, int, int, int]:
    """The (C, D, H, W) a volume file reads as, from its header alone.

    The checks of :func:`read_volume` that need no voxel run here: extension, pickles, dtype, rank, size.

    Raises
    ------
    DataError
        As :func:`read_volume`, except for non-finite values (found only when the voxels are read).
    """
    path = Path(path)
    ext = volume_id(path)
    if ext is None:
        raise DataError(f"{path.name}: a volume must be one of {', '.join(VOLUME_EXTENSIONS)}")
    if ext == ".npy":
        shape = tuple(int(s) for s in _open_npy(path).shape)
        return (1, *shape) if len(shape) == 3 else shape  # type: ignore[return-value]
    shape = _open_nifti(path)[1][::-1]  # (i, j, k[, t]) -> ([t,] k, j, i)
    return (1, *shape) if len(shape) == 3 else shape  # type: ignore[return-value]


def read_volume(path: str | Path) -> np.ndarray:
    """Read one volume file as (C, D, H, W) float32 (see the module docstring for axes and checks).

    Parameters
    ----------
    path : str or Path
        A ``.npy``, ``.nii`` or ``.nii.gz`` file.

    Returns
    -------
    ndarray
        (C, D, H, W) float32 values.

    Raises
    ------
    DataError
        Unknown extension, unreadable file, bad header, non-finite values.
    """
    path = Path(path)
    ext = volume_id(path)
    if ext is None:
        raise DataError(f"{path.name}: a volume must be one of {', '.join(VOLUME_EXTENSIONS)}")
    vol = _read_npy(path) if ext == ".npy" else _read_nifti(path)
    if not np.isfinite(vol).all():
        raise DataError(f"{path.name}: the volume holds NaN or infinite values")
    return vol


def read_volume_mask(path: str | Path, shape: Sequence[int]) -> np.ndarray:
    """A (D, H, W) bool mask (value > 0 inside) of exactly the spatial ``shape`` (never resized)."""
    vol = read_volume(path)
    if vol.shape[0] != 1 or vol.shape[1:] != tuple(shape):
        raise DataError(f"{Path(path).name}: mask of shape {vol.shape[1:]} ({vol.shape[0]} channel(s)) "
                        f"does not match its volume {tuple(shape)}")
    return vol[0] > 0


@dataclass
class VolumeSet:
    """A folder of volumes with optional labels and masks (see the module docstring).

    Attributes
    ----------
    root : Path
        The folder.
    ids : list of str
        File names of the volumes, sorted; the stable sample ids.
    labels : ndarray
        (N,) int64 class index, -1 when unknown.
    class_names : tuple of str or None
        Class names in index order.
    digests : list of str
        SHA-256 of each file.
    """

    #: The kind of sample (analyzers declare the kinds they read in ``Analyzer.inputs``).
    kind: ClassVar[str] = "volumes"
    #: Volume folders carry no concept table (the probe-set interface of the analyzers).
    concepts: ClassVar[None] = None
    concept_names: ClassVar[tuple[str, ...]] = ()
    artifact_concepts: ClassVar[tuple[str, ...]] = ()
    #: Volume folders label classes only (no multi-hot table, no label maps).
    multilabels: ClassVar[None] = None
    has_label_maps: ClassVar[bool] = False

    root: Path
    ids: list[str]
    labels: np.ndarray
    class_names: tuple[str, ...] | None = None
    digests: list[str] = field(default_factory=list, repr=False)
    follow_symlinks: bool = False

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_labels(self) -> bool:
        """Whether every volume has a class label."""
        return len(self) > 0 and bool(np.all(self.labels >= 0))

    @property
    def task(self) -> str | None:
        """``"classification"`` when every volume has a label, else ``None`` (as :attr:`ProbeSet.task`)."""
        return "classification" if self.has_labels else None

    @property
    def skipped(self) -> list:
        """Bad rows dropped (none: a bad volume always stops the run)."""
        return []

    def load(self, i: int) -> np.ndarray:
        """Volume ``i`` as (C, D, H, W) float32."""
        return read_volume(self._inside(self.root / self.ids[i]))

    def load_image(self, i: int) -> np.ndarray:
        """Sample ``i`` as the runner reads any probe sample: here the (C, D, H, W) float32 volume."""
        return self.load(i)

    #: ``(indices, volumes)`` chunks of at most ``batch_size`` (C, D, H, W) volumes: the image probe
    #: set's chunking, reading every sample through :meth:`load_image`.
    iter_batches = ProbeSet.iter_batches

    def subset(self, indices: Sequence[int]) -> VolumeSet:
        """A volume set with the volumes at ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64)
        return replace(self, ids=[self.ids[i] for i in idx], labels=self.labels[idx],
                       digests=[self.digests[i] for i in idx])

    def manifest_hash(self) -> str:
        """SHA-256 over class names, ids, file hashes and labels (what the results depend on)."""
        h = hashlib.sha256(repr(self.class_names).encode())
        for sid, digest, label in zip(self.ids, self.digests, self.labels):
            h.update(f"{sid}\t{digest}\t{int(label)}\n".encode())
        return h.hexdigest()

    def stack(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """(B, C, D, H, W) float32 volumes (all of one shape, else :class:`DataError`)."""
        order = range(len(self)) if indices is None else indices
        vols = [self.load(int(i)) for i in order]
        shapes = {v.shape for v in vols}
        if len(shapes) > 1:
            raise DataError(f"volumes of different shapes cannot form one batch: {sorted(shapes)}")
        return np.stack(vols) if vols else np.zeros((0, 1, 1, 1, 1), np.float32)

    def mask_names(self) -> list[str]:
        """Names of the mask folders under ``root/masks``."""
        base = self.root / "masks"
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []

    def mask(self, i: int, name: str, shape: Sequence[int] | None = None) -> np.ndarray | None:
        """Mask ``name`` of volume ``i``, or ``None`` when the file is absent.

        ``shape`` is the (D, H, W) the mask must have (default: volume ``i``'s own).
        """
        path = self.root / "masks" / name / self.ids[i]
        if not (path.exists() or path.is_symlink()):
            return None
        own = read_volume_shape(self._inside(self.root / self.ids[i]))[1:] if shape is None else shape
        return read_volume_mask(self._inside(path), own)

    def sample_shape(self) -> tuple[int, int, int, int]:
        """The (C, D, H, W) every volume has, from the file headers (no voxel read).

        Raises
        ------
        DataError
            A volume that cannot be read, or one of another shape than the first (named).
        """
        first = read_volume_shape(self._inside(self.root / self.ids[0]))
        for sid in self.ids[1:]:
            shape = read_volume_shape(self._inside(self.root / sid))
            if shape != first:
                raise DataError(f"{sid} is {shape} (C, D, H, W) but {self.ids[0]} is {first}: the volumes of a run "
                                "must have one shape (the model sees the stored voxel grid, never resized)")
        return first

    def _inside(self, path: Path) -> Path:
        problem = _Containment(self.root, self.follow_symlinks).problem(path)
        if problem:
            raise DataError(problem)
        return path

    def describe(self) -> dict[str, Any]:
        """JSON-ready provenance."""
        # n_images and skipped: the keys the report's provenance block reads for any probe data
        return {"root": str(self.root), "kind": self.kind, "n_images": len(self), "n_volumes": len(self),
                "class_names": list(self.class_names or []), "masks": self.mask_names(),
                "manifest_sha256": self.manifest_hash(), "skipped": []}

    @classmethod
    def from_folder(cls, root: str | Path, *, follow_symlinks: bool = False) -> VolumeSet:
        """Read a volume folder: its volume files, ``labels.csv`` and ``classes.txt`` if present.

        Raises
        ------
        DataError
            No volume, a bad labels row, a label row for a missing volume, a symlink out of the folder.
        """
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root} is not a folder")
        inside = _Containment(root, follow_symlinks)
        ids = sorted(p.name for p in root.iterdir()
                     if p.is_file() and volume_id(p) and not p.name.startswith("."))
        if not ids:
            raise DataError(f"no volume ({', '.join(VOLUME_EXTENSIONS)}) in {root}")
        digests = []
        for sid in ids:
            problem = inside.problem(root / sid)
            if problem:
                raise DataError(problem)
            digests.append(hashlib.sha256((root / sid).read_bytes()).hexdigest())
        labels = np.full(len(ids), -1, np.int64)
        names = None
        table = inside.default_file("labels.csv")
        if table.is_file():
            def bad(row: BadRow) -> None:
                raise DataError(row.message())

            by_path = read_labels_csv(table, bad)
            missing = sorted(set(by_path) - set(ids))
            if missing:
                raise DataError(f"labels.csv names volumes that are not in the folder: {', '.join(missing[:5])}")
            classes = inside.default_file("classes.txt")
            names = tuple(line.strip() for line in classes.read_text(encoding="utf-8").splitlines()
                          if line.strip()) if classes.is_file() else tuple(sorted(set(by_path.values())))
            unknown = sorted(set(by_path.values()) - set(names))
            if unknown:
                raise DataError(f"labels.csv uses classes missing from classes.txt: {', '.join(unknown)}")
            labels = np.asarray([names.index(by_path[s]) if s in by_path else -1 for s in ids], np.int64)
        return cls(root, ids, labels, names, digests, follow_symlinks)
