"""Image-folder probe sets with labels, concept tables and masks.

Layouts (the task, :attr:`ProbeSet.task`, follows from the layout)
------------------------------------------------------------------
* class subfolders: ``root/<class>/<image>``; class names are the sorted folder names
  (classification);
* a flat folder with ``labels.csv`` (``path,label``), optional ``classes.txt`` fixing the order
  (classification);
* a folder with a multi-hot ``labels.csv``: ``path,<label>,<label>,...``, one 0/1 column per label in
  the model's output order (multi-label; a label may not be called ``label``, which marks the
  single-label table; a ``classes.txt``, if present, must list the same names in the same order);
* a flat folder with label maps ``labels/<image stem>.png`` and ``classes.txt`` (segmentation): one
  class index per pixel (8- or 16-bit grey, or palette indices as in Pascal VOC; RGB colour maps are
  refused), of exactly the image's size, values ``0 .. K-1`` for the ``K`` lines of ``classes.txt``
  (``K`` ≤ 255) or :data:`LABEL_IGNORE` (255) for pixels that count for no class;
* a flat folder without labels (unlabelled probe set).

``masks``, ``artifacts`` and ``labels`` are reserved folder names (never class folders).

Optional files in ``root``: ``concepts.csv`` (``path,<concept>,...`` with 0/1 values),
``descriptions.json`` (INVERT-style concept descriptions; ``"artifact": true`` marks spurious
cues), or an INVERT-style label matrix ``concepts.npy`` (N×C, rows in sorted path order) next to
the description file, and ``masks/<name>/<image path>.png`` binary masks.

Bad rows (missing or unreadable images, non-binary values, duplicate paths, masks that are not the
size of their image, missing label maps, label maps of the wrong size or with values out of range)
raise a :class:`~explainkit.errors.DataError` naming the row, unless ``skip_bad=True``, in which case
they are dropped and listed in :attr:`ProbeSet.skipped`.

Everything read from the folder must stay inside it: table paths with ``..`` or absolute paths are
refused, and so are images, masks, label maps, tables and class folders that are symlinks resolving
outside the folder, unless ``follow_symlinks=True`` (``--follow-symlinks``). Images of any PIL mode are read by
value range (:func:`explainkit.pixels.to_rgb`: 16-bit scaled, alpha composited on white).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from explainkit.data.tables import (
    BadRow,
    is_multihot_labels,
    read_concepts_csv,
    read_descriptions,
    read_labels_csv,
)
from explainkit.errors import DataError
from explainkit.pixels import to_rgb

__all__ = ["IMAGE_EXTENSIONS", "LABEL_IGNORE", "TASKS", "ProbeSet"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
#: The value of a label-map pixel that belongs to no class (borders, "void"; as Pascal VOC).
LABEL_IGNORE = 255
#: The tasks a probe set can label.
TASKS = ("classification", "segmentation", "multilabel")
_LABEL_MAP_DIR = "labels"
_RESERVED_DIRS = {"masks", "artifacts", _LABEL_MAP_DIR}
#: PIL modes whose pixel values are class indices as stored (grey, palette indices, 16/32-bit grey).
_INDEX_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L")
Image.MAX_IMAGE_PIXELS = 64_000_000


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


@dataclass
class ProbeSet:
    """A labelled (or unlabelled) set of probe images with optional concepts and masks.

    Attributes
    ----------
    root : Path
        The folder.
    ids : list of str
        Relative POSIX paths, sorted; the stable sample ids.
    labels : ndarray
        (N,) int64 class index per image, -1 when unknown (always -1 for segmentation and
        multi-label probe sets).
    class_names : tuple of str or None
        Class names in index order (the label columns of a multi-label set, the lines of
        ``classes.txt`` of a segmentation set).
    multilabels : ndarray or None
        (N, L) bool multi-hot labels of a multi-label probe set (column ``l`` = ``class_names[l]``).
    concept_names : tuple of str
        Concept columns (empty without a concept table).
    concepts : ndarray or None
        (N, C) bool concept table.
    descriptions : list of dict
        One INVERT-style description per concept (``name``, optional ``definition``, ``artifact``).
    skipped : list of BadRow
        Rows dropped with ``skip_bad=True``.
    label_map_digests : list of str
        SHA-256 of each image's label map (empty unless it is a segmentation probe set).
    """

    #: The kind of sample (analyzers declare the kinds they read in ``Analyzer.inputs``).
    kind: ClassVar[str] = "images"

    root: Path
    ids: list[str]
    labels: np.ndarray
    class_names: tuple[str, ...] | None = None
    concept_names: tuple[str, ...] = ()
    concepts: np.ndarray | None = None
    descriptions: list[dict] = field(default_factory=list)
    skipped: list[BadRow] = field(default_factory=list)
    digests: list[str] = field(default_factory=list, repr=False)
    image_sizes: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)
    multilabels: np.ndarray | None = None
    label_map_digests: list[str] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_labels(self) -> bool:
        """Whether every image has a class label."""
        return len(self) > 0 and bool(np.all(self.labels >= 0))

    @property
    def has_label_maps(self) -> bool:
        """Whether every image has a label map ``labels/<image stem>.png`` (segmentation)."""
        return len(self) > 0 and len(self.label_map_digests) == len(self)

    @property
    def task(self) -> str | None:
        """``"segmentation"``, ``"multilabel"``, ``"classification"``, or ``None`` when unlabelled."""
        if self.has_label_maps:
            return "segmentation"
        if self.multilabels is not None:
            return "multilabel"
        return "classification" if self.has_labels else None

    def label_map(self, i: int) -> np.ndarray:
        """Label map of image ``i``: (H, W) int64 class indices, :data:`LABEL_IGNORE` = no class.

        Raises
        ------
        DataError
            No label maps in this probe set, or the file changed since it was verified.
        """
        if not self.has_label_maps:
            raise DataError("this probe set has no label maps (labels/<image stem>.png with classes.txt)")
        sid = self.ids[i]
        problem, arr = _read_label_map(self.root, sid, self.image_sizes.get(sid), len(self.class_names or ()))
        if problem:
            raise DataError(problem)
        return arr

    @property
    def artifact_concepts(self) -> tuple[str, ...]:
        """Concepts marked ``"artifact": true`` in the descriptions."""
        return tuple(d["name"] for d in self.descriptions if d.get("artifact"))

    def path(self, i: int) -> Path:
        """Absolute path of image ``i``."""
        return self.root / self.ids[i]

    def load_image(self, i: int) -> Image.Image:
        """Image ``i`` as an 8-bit RGB PIL image at its own resolution (:func:`explainkit.pixels.to_rgb`)."""
        try:
            with Image.open(self.path(i)) as im:
                return to_rgb(im)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"cannot read image {self.ids[i]}: {exc}") from None

    def mask_names(self) -> list[str]:
        """Names of the mask folders under ``root/masks``."""
        return _mask_names(self.root)

    def mask(self, i: int, name: str) -> np.ndarray | None:
        """Binary mask ``name`` of image ``i`` at image resolution, or ``None`` if absent.

        A mask is read by value range (:func:`explainkit.pixels.to_rgb`, transparent = outside) and
        thresholded at half intensity; one that is not the size of its image raises a
        :class:`DataError` (resizing it would invent evidence).
        """
        sid = self.ids[i]
        problem, mask = _read_mask(self.root, name, sid, self.image_sizes.get(sid))
        if problem:
            raise DataError(problem)
        return mask

    def concept_index(self, name: str) -> int:
        """Column of concept ``name``."""
        try:
            return self.concept_names.index(name)
        except ValueError:
            raise DataError(
                f"no concept {name!r} in the probe set (have: {', '.join(self.concept_names) or 'none'})"
            ) from None

    def manifest_hash(self) -> str:
        """SHA-256 over ids, image bytes, labels and concept rows (what the results depend on)."""
        h = hashlib.sha256()
        h.update(repr((self.class_names, self.concept_names)).encode())
        for i, sid in enumerate(self.ids):
            row = self.concepts[i].tobytes() if self.concepts is not None else b""
            if self.multilabels is not None:
                row += b"|" + self.multilabels[i].tobytes()
            if self.label_map_digests:
                row += b"|" + self.label_map_digests[i].encode()
            h.update(f"{sid}\t{self.digests[i]}\t{int(self.labels[i])}\t".encode() + row + b"\n")
        return h.hexdigest()

    def subset(self, indices: Sequence[int]) -> ProbeSet:
        """A probe set with the images at ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64)
        return replace(
            self,
            ids=[self.ids[i] for i in idx],
            labels=self.labels[idx],
            concepts=None if self.concepts is None else self.concepts[idx],
            digests=[self.digests[i] for i in idx],
            multilabels=None if self.multilabels is None else self.multilabels[idx],
            label_map_digests=[self.label_map_digests[i] for i in idx] if self.label_map_digests else [],
        )

    def iter_batches(self, batch_size: int, indices: Sequence[int] | None = None
                     ) -> Iterator[tuple[np.ndarray, list[Image.Image]]]:
        """Yield ``(indices, images)`` chunks of at most ``batch_size`` images."""
        if batch_size < 1:
            raise DataError("batch size must be at least 1")
        order = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            yield chunk, [self.load_image(int(i)) for i in chunk]

    def describe(self) -> dict[str, Any]:
        """JSON-ready provenance (``task`` only for segmentation and multi-label probe sets)."""
        extra = {"task": self.task} if self.task in ("segmentation", "multilabel") else {}
        return {**extra,
            "root": str(self.root),
            "n_images": len(self),
            "n_classes": len(self.class_names) if self.class_names else 0,
            "class_names": list(self.class_names) if self.class_names else None,
            "concepts": list(self.concept_names),
            "artifact_concepts": list(self.artifact_concepts),
            "masks": self.mask_names(),
            "manifest_sha256": self.manifest_hash(),
            "skipped": [vars(b) for b in self.skipped],
        }

    @classmethod
    def from_folder(
        cls,
        root: str | Path,
        *,
        labels: str | Path | None = None,
        concepts: str | Path | None = None,
        descriptions: str | Path | None = None,
        skip_bad: bool = False,
        follow_symlinks: bool = False,
    ) -> ProbeSet:
        """Read a probe folder (see the module docstring for layouts).

        Parameters
        ----------
        root : str or Path
            The folder.
        labels : str or Path, optional
            ``labels.csv`` (``path,label`` or multi-hot); default ``root/labels.csv`` when present.
        concepts : str or Path, optional
            ``concepts.csv`` or an N×C ``.npy`` label matrix; default ``root/concepts.csv`` (or
            ``root/concepts.npy``) when present.
        descriptions : str or Path, optional
            INVERT-style description JSON; default ``root/descriptions.json`` when present.
        skip_bad : bool
            Drop bad rows (recorded in :attr:`skipped`) instead of raising.
        follow_symlinks : bool
            Read images, masks and tables that are symlinks resolving outside ``root`` (refused by
            default).

        Returns
        -------
        ProbeSet
            The probe set.

        Raises
        ------
        DataError
            Bad layout, tables or images (naming the row).
        """
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"probe data folder {root} does not exist")
        skipped: list[BadRow] = []
        inside = _Containment(root, follow_symlinks)

        def on_bad(bad: BadRow) -> None:
            if not skip_bad:
                raise DataError(bad.message() + " (use --skip-bad to drop bad rows)")
            if bad.path not in {b.path for b in skipped}:  # one entry per image
                skipped.append(bad)

        labels_path = Path(labels) if labels else inside.default_file("labels.csv")
        class_dirs = sorted(
            p for p in root.iterdir()
            if p.is_dir() and not p.name.startswith((".", "_")) and p.name not in _RESERVED_DIRS
        )
        map_dir = root / _LABEL_MAP_DIR
        if map_dir.is_symlink() and (problem := inside.problem(map_dir)):
            raise DataError(problem)
        if map_dir.is_dir() and labels_path.is_file():
            raise DataError(f"{root} has both label maps ({_LABEL_MAP_DIR}/) and {labels_path.name}: "
                            "a probe set is either segmentation or labelled per image")
        multi_of: dict[str, np.ndarray] = {}
        if labels_path.is_file() and is_multihot_labels(labels_path):
            table = read_concepts_csv(labels_path, on_bad, noun="label")
            multi_of = _existing_images(root, labels_path.name, table.rows, on_bad)
            class_names = tuple(table.names)
            names_file = inside.default_file("classes.txt")
            if names_file.is_file() and _class_names(names_file) != class_names:
                raise DataError(f"classes.txt does not list the label columns of {labels_path.name} in their order")
            ids = sorted(multi_of)
            label_arr = np.full(len(ids), -1, dtype=np.int64)
        elif labels_path.is_file():
            label_of = _existing_images(root, labels_path.name, read_labels_csv(labels_path, on_bad), on_bad)
            names_file = inside.default_file("classes.txt")
            if names_file.is_file():
                class_names = _class_names(names_file)
                unknown = sorted(set(label_of.values()) - set(class_names))
                if unknown:
                    raise DataError(f"labels.csv uses classes missing from classes.txt: {', '.join(unknown[:5])}")
            else:
                class_names = tuple(sorted(set(label_of.values())))
            ids = sorted(label_of)
            label_arr = np.array([class_names.index(label_of[i]) for i in ids], dtype=np.int64)
        elif labels:
            raise DataError(f"labels file {labels_path} does not exist")
        elif map_dir.is_dir():
            if class_dirs:
                raise DataError(f"label maps ({_LABEL_MAP_DIR}/) need the images at the top of {root}; "
                                f"found folder(s) {', '.join(p.name for p in class_dirs[:3])}")
            names_file = inside.default_file("classes.txt")
            if not names_file.is_file():
                raise DataError(f"label maps ({_LABEL_MAP_DIR}/) need classes.txt: one class name per line, "
                                "line k names the pixel value k")
            class_names = _class_names(names_file)
            if not 0 < len(class_names) <= LABEL_IGNORE:
                raise DataError(f"classes.txt lists {len(class_names)} classes; label maps allow 1 to "
                                f"{LABEL_IGNORE} ({LABEL_IGNORE} is the ignore value)")
            ids = sorted(f.name for f in root.iterdir() if _is_image(f))
            label_arr = np.full(len(ids), -1, dtype=np.int64)
        elif class_dirs:
            class_names = tuple(p.name for p in class_dirs)
            ids, lab = [], []
            for k, d in enumerate(class_dirs):
                for f in sorted(d.iterdir()):
                    if _is_image(f):
                        ids.append(f"{d.name}/{f.name}")
                        lab.append(k)
            label_arr = np.array(lab, dtype=np.int64)
        else:
            class_names = None
            ids = sorted(f.name for f in root.iterdir() if _is_image(f))
            label_arr = np.full(len(ids), -1, dtype=np.int64)
        if not ids:
            raise DataError(f"no images found in {root} (extensions: {', '.join(IMAGE_EXTENSIONS)})")

        keep, digests, sizes = _verify_images(root, ids, on_bad, inside)
        ids = [ids[i] for i in keep]
        label_arr = label_arr[keep]
        keep = _verify_masks(root, ids, sizes, on_bad, inside)
        ids, label_arr, digests = [ids[i] for i in keep], label_arr[keep], [digests[i] for i in keep]
        map_digest_of = {}
        if map_dir.is_dir():
            map_digest_of = _verify_label_maps(root, ids, sizes, len(class_names), on_bad, inside)
            keep = [i for i, sid in enumerate(ids) if sid in map_digest_of]
            ids, label_arr, digests = [ids[i] for i in keep], label_arr[keep], [digests[i] for i in keep]

        desc_path = Path(descriptions) if descriptions else inside.default_file("descriptions.json")
        descs = read_descriptions(desc_path) if desc_path.is_file() else []
        if descriptions and not desc_path.is_file():
            raise DataError(f"descriptions file {desc_path} does not exist")
        concept_names, concept_arr, ids, label_arr, digests = _read_concepts(
            inside, concepts, descs, ids, label_arr, digests, on_bad
        )
        if not ids:
            raise DataError(f"no usable images left in {root} after skipping bad rows")
        return cls(root=root, ids=ids, labels=label_arr, class_names=class_names,
                   concept_names=concept_names, concepts=concept_arr, descriptions=descs,
                   skipped=skipped, digests=digests, image_sizes={sid: sizes[sid] for sid in ids},
                   multilabels=np.stack([multi_of[s] for s in ids]) if multi_of else None,
                   label_map_digests=[map_digest_of[s] for s in ids] if map_digest_of else [])


class _Containment:
    """Refuses paths under the probe root that resolve outside it (symlinks), unless told to follow them."""

    def __init__(self, root: Path, follow: bool) -> None:
        self.root = root
        self.real = root.resolve()
        self.follow = follow

    def problem(self, path: Path) -> str | None:
        """Why ``path`` may not be read, or ``None``."""
        try:
            real = path.resolve(strict=path.is_symlink())
        except (OSError, RuntimeError) as exc:
            return f"cannot resolve {path.relative_to(self.root).as_posix()} (a broken symlink or a loop: {exc})"
        if self.follow or real == self.real or self.real in real.parents:
            return None
        return (f"{path.relative_to(self.root).as_posix()} resolves outside the probe folder (a symlink); "
                "pass --follow-symlinks to read it")

    def default_file(self, name: str) -> Path:
        """``root/name`` for an optional table, refused when it is a symlink out of the folder."""
        path = self.root / name
        problem = self.problem(path) if path.is_symlink() else None
        if problem:
            raise DataError(problem)
        return path


def _existing_images(root: Path, table: str, rows: dict[str, Any], on_bad) -> dict[str, Any]:
    """The rows of a table whose image file exists (the others go to ``on_bad``)."""
    for p in [p for p in rows if not _is_image(root / p)]:
        on_bad(BadRow(table, 0, p, "image file not found"))
    return {p: v for p, v in rows.items() if _is_image(root / p)}


def _class_names(path: Path) -> tuple[str, ...]:
    """The non-empty lines of ``classes.txt``, refusing duplicates."""
    names = tuple(x.strip() for x in _read_text(path).splitlines() if x.strip())
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{path.name} lists class(es) twice: {', '.join(dup[:5])}")
    return names


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path.name}: {exc}") from None


def _verify_images(root: Path, ids: list[str], on_bad, inside: _Containment
                   ) -> tuple[list[int], list[str], dict[str, tuple[int, int]]]:
    keep, digests, sizes = [], [], {}
    for i, sid in enumerate(ids):
        problem = inside.problem(root / sid)
        if problem:
            on_bad(BadRow("images", 0, sid, problem))
            continue
        try:
            data = (root / sid).read_bytes()
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as im:
                    im.verify()
                with Image.open(io.BytesIO(data)) as im:
                    im.load()
                    sizes[sid] = im.size
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
                Image.DecompressionBombWarning) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            on_bad(BadRow("images", 0, sid, f"unreadable image ({reason})"))
            continue
        keep.append(i)
        digests.append(hashlib.sha256(data).hexdigest())
    return keep, digests, sizes


def _mask_names(root: Path) -> list[str]:
    d = root / "masks"
    return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []


def _read_mask(root: Path, name: str, sid: str, size: tuple[int, int] | None,
               inside: _Containment | None = None) -> tuple[str | None, np.ndarray | None]:
    """``(problem, mask)`` of mask ``name`` of image ``sid``: ``(None, None)`` when it is absent."""
    p = root / "masks" / name / Path(sid).with_suffix(".png")
    if not (p.is_file() or p.is_symlink()):
        return None, None
    rel = p.relative_to(root).as_posix()
    problem = inside.problem(p) if inside is not None else None
    if problem:
        return problem, None
    try:
        with Image.open(p) as im:
            if size is not None and im.size != tuple(size):
                return (f"mask {rel} is {im.size[0]}x{im.size[1]} but its image {sid} is {size[0]}x{size[1]}; "
                        "a mask must have its image's size"), None
            return None, np.asarray(to_rgb(im, background=(0, 0, 0)).convert("L")) > 127
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        return f"cannot read mask {rel}: {exc}", None


def _read_label_map(root: Path, sid: str, size: tuple[int, int] | None, n_classes: int,
                    inside: _Containment | None = None) -> tuple[str | None, np.ndarray | None]:
    """``(problem, label map)`` of image ``sid``: (H, W) int64, values < ``n_classes`` or :data:`LABEL_IGNORE`."""
    p = root / _LABEL_MAP_DIR / Path(sid).with_suffix(".png")
    rel = p.relative_to(root).as_posix()
    if not (p.is_file() or p.is_symlink()):
        return f"image {sid} has no label map {rel}", None
    problem = inside.problem(p) if inside is not None else None
    if problem:
        return problem, None
    try:
        with Image.open(p) as im:
            if size is not None and im.size != tuple(size):
                return (f"label map {rel} is {im.size[0]}x{im.size[1]} but its image {sid} is {size[0]}x{size[1]}; "
                        "a label map must have its image's size"), None
            if im.mode not in _INDEX_MODES:
                return (f"label map {rel} is a {im.mode} image; a label map holds one class index per pixel "
                        "(8- or 16-bit grey, or a palette PNG)"), None
            arr = np.asarray(im).astype(np.int64)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        return f"cannot read label map {rel}: {exc}", None
    bad = (arr >= n_classes) & (arr != LABEL_IGNORE) | (arr < 0)
    if bad.any():
        v = int(arr[bad].flat[0])
        return (f"label map {rel} holds value {v} (at {int(bad.sum())} pixel(s)); classes.txt lists {n_classes} "
                f"classes, so values must be 0..{n_classes - 1} or {LABEL_IGNORE} (ignore)"), None
    return None, arr


def _verify_label_maps(root: Path, ids: list[str], sizes: dict[str, tuple[int, int]], n_classes: int, on_bad,
                       inside: _Containment) -> dict[str, str]:
    """SHA-256 of the label map of each image whose map is present, inside the folder, sized and in range."""
    digests = {}
    for sid in ids:
        problem, arr = _read_label_map(root, sid, sizes.get(sid), n_classes, inside)
        if problem:
            on_bad(BadRow(_LABEL_MAP_DIR, 0, sid, problem))
            continue
        digests[sid] = hashlib.sha256(arr.tobytes()).hexdigest()
    return digests


def _verify_masks(root: Path, ids: list[str], sizes: dict[str, tuple[int, int]], on_bad,
                  inside: _Containment) -> list[int]:
    """Indices of the images whose masks (if any) are readable, inside the folder and of their size."""
    masks = root / "masks"
    if masks.is_symlink():
        problem = inside.problem(masks)
        if problem:
            raise DataError(problem)
    keep = []
    for i, sid in enumerate(ids):
        problem = next((pr for name in _mask_names(root)
                        if (pr := _read_mask(root, name, sid, sizes.get(sid), inside)[0])), None)
        if problem:
            on_bad(BadRow("masks", 0, sid, problem))
            continue
        keep.append(i)
    return keep


def _read_concepts(inside: _Containment, concepts, descs, ids, label_arr, digests, on_bad):
    csv_path = Path(concepts) if concepts else inside.default_file("concepts.csv")
    npy_path = Path(concepts) if concepts else inside.default_file("concepts.npy")
    if concepts and not Path(concepts).is_file():
        raise DataError(f"concepts file {concepts} does not exist")
    if csv_path.suffix == ".csv" and csv_path.is_file():
        table = read_concepts_csv(csv_path, on_bad)
        names = table.names
        id_set = set(ids)
        for p in table.rows:
            if p not in id_set:
                on_bad(BadRow(csv_path.name, 0, p, "no such (readable) image in the probe set"))
        keep = []
        for i, sid in enumerate(ids):
            if sid in table.rows:
                keep.append(i)
            else:
                on_bad(BadRow(csv_path.name, 0, sid, "image has no row in the concept table"))
        ids = [ids[i] for i in keep]
        label_arr = label_arr[keep]
        digests = [digests[i] for i in keep]
        matrix = np.stack([table.rows[s] for s in ids]) if ids else np.zeros((0, len(names)), bool)
    elif npy_path.suffix == ".npy" and npy_path.is_file():
        if not descs:
            raise DataError(f"{npy_path.name} has no column names: add an INVERT-style descriptions.json")
        try:
            matrix = np.load(npy_path, allow_pickle=False)
        except (OSError, ValueError, EOFError, SyntaxError) as exc:
            raise DataError(f"cannot read {npy_path.name}: {exc}") from None
        if matrix.ndim != 2 or matrix.shape[0] != len(ids):
            raise DataError(
                f"{npy_path.name} has shape {matrix.shape}; expected ({len(ids)}, C) rows in sorted path order"
            )
        if not np.isin(matrix, (0, 1)).all():
            raise DataError(f"{npy_path.name} holds non-binary values")
        matrix = matrix.astype(bool)
        names = [d["name"] for d in descs]
    else:
        if descs:
            raise DataError("descriptions.json given without a concept table (concepts.csv or concepts.npy)")
        return (), None, ids, label_arr, digests
    if descs:
        desc_names = [d["name"] for d in descs]
        offsets = [d.get("offset") for d in descs]
        if len(descs) != len(names):
            raise DataError(f"descriptions has {len(descs)} entries for {len(names)} concept columns")
        for col, (n, dn, off) in enumerate(zip(names, desc_names, offsets)):
            if n not in (dn, off):
                raise DataError(
                    f"concept column {col} is {n!r} but descriptions entry {col} is {dn!r}; columns must align"
                )
    if matrix.shape[1] != len(names):
        raise DataError("concept table width does not match its names")
    return tuple(names), matrix, ids, label_arr, digests
