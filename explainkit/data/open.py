"""One entry to probe data: a folder of images (:class:`ProbeSet`) or of volumes (:class:`VolumeSet`).

The kind is decided from the folder's files, never guessed from a model: a folder whose top level
holds volume files (``.npy``, ``.nii``, ``.nii.gz``; ``concepts.npy`` is a concept table, not a
volume) and no image is a volume folder; one holding both is refused, so that a stray file can
never turn half of a probe set into something else.
"""

from __future__ import annotations

from pathlib import Path

from explainkit.data.probe import IMAGE_EXTENSIONS, ProbeSet
from explainkit.data.volumes import VolumeSet, volume_id
from explainkit.errors import ConfigError, DataError

__all__ = ["Probe", "is_volume_folder", "open_probe"]

#: What :func:`open_probe` returns.
Probe = ProbeSet | VolumeSet
#: Top-level files with a volume extension that are tables of an image probe set, not volumes.
_TABLES = {"concepts.npy"}


def is_volume_folder(root: str | Path) -> bool:
    """Whether ``root`` is a volume folder (volume files at its top level and no image).

    Raises
    ------
    DataError
        The folder holds both images and volumes.
    """
    root = Path(root)
    if not root.is_dir():
        return False
    files = [p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    volumes = sorted(p.name for p in files if volume_id(p) and p.name not in _TABLES)
    images = sorted(p.name for p in files if p.suffix.lower() in IMAGE_EXTENSIONS)
    if volumes and images:
        raise DataError(f"{root} holds both images ({images[0]}, ...) and volumes ({volumes[0]}, ...); "
                        "a probe folder holds one kind")
    return bool(volumes)


def open_probe(root: str | Path, *, concepts: str | Path | None = None, descriptions: str | Path | None = None,
               skip_bad: bool = False, follow_symlinks: bool = False) -> Probe:
    """Read a probe folder of images or of volumes (see the module docstring).

    Parameters
    ----------
    root : str or Path
        The folder.
    concepts, descriptions, skip_bad
        As :meth:`ProbeSet.from_folder` (images only: a volume folder refuses them).
    follow_symlinks : bool
        Read files that are symlinks resolving outside ``root``.

    Returns
    -------
    ProbeSet or VolumeSet
        The probe data.

    Raises
    ------
    ConfigError
        Image-only options given for a volume folder.
    DataError
        Bad layout or files.
    """
    if not is_volume_folder(root):
        return ProbeSet.from_folder(root, concepts=concepts, descriptions=descriptions, skip_bad=skip_bad,
                                    follow_symlinks=follow_symlinks)
    given = [name for name, v in (("--concepts", concepts), ("--descriptions", descriptions),
                                  ("--skip-bad", skip_bad)) if v]
    if given:
        raise ConfigError(f"{', '.join(given)}: not read for a volume folder ({root} holds volumes)")
    return VolumeSet.from_folder(root, follow_symlinks=follow_symlinks)
