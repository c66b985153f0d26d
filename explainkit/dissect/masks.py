"""Concept masks at the model input's geometry, from mask folders, regions or image-level labels.

Network Dissection scores a unit against a pixel mask per concept and image. A probe set gives
them in three ways, resolved per concept (first match wins):

* ``pixels``: a mask folder named like the concept, ``masks/<concept>/<image>.png``; an image
  without a file does not show the concept (empty mask). Folders that are not concept-table
  columns (e.g. ``object``) are concepts of their own.
* ``region``: a concept-table column plus a region folder: the concept covers the region's mask
  (``"object"``) or its complement (``"~object"``) in the images where the table marks it. Regions
  come from the ``regions`` parameter or from a ``"region"`` key of the concept's
  ``descriptions.json`` entry (the synthetic worlds mark shape, colour and texture as ``object``
  and backgrounds as ``~object``).
* ``image``: a concept-table column without masks covers the whole image where it is marked —
  how the reference treats Broden's image-level (scene) labels.

Masks are resized and cropped exactly like the images (:meth:`Preprocessing.resize_mask`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from explainkit.data.probe import ProbeSet
from explainkit.errors import ConfigError, DataError
from explainkit.loading.preprocessing import Preprocessing

__all__ = ["MaskReader", "MaskSource", "mask_sources"]

KINDS = ("pixels", "region", "image")


@dataclass(frozen=True)
class MaskSource:
    """Where one concept's masks come from.

    Attributes
    ----------
    concept : str
        Concept name.
    kind : str
        ``"pixels"``, ``"region"`` or ``"image"`` (see the module docstring).
    folder : str or None
        The mask folder read (the concept's own, or the region's).
    inverted : bool
        Region only: the complement of the folder's mask.
    column : int or None
        Concept-table column (region and image kinds).
    """

    concept: str
    kind: str
    folder: str | None = None
    inverted: bool = False
    column: int | None = None

    def describe(self) -> str:
        """Human-readable origin, e.g. ``masks/object (complement) where the table marks it``."""
        if self.kind == "pixels":
            return f"pixel masks masks/{self.folder}/"
        if self.kind == "region":
            side = " (complement)" if self.inverted else ""
            return f"masks/{self.folder}/{side} in images the concept table marks"
        return "whole image where the concept table marks it (image-level label)"


def mask_sources(probe: ProbeSet, concepts: Sequence[str] | None = None,
                 regions: Mapping[str, str] | None = None) -> list[MaskSource]:
    """Resolve every concept's mask source.

    Parameters
    ----------
    probe : ProbeSet
        The probe set (concept table, descriptions, mask folders).
    concepts : sequence of str, optional
        Concepts to use; default: every concept-table column, then every mask folder that is not one.
    regions : mapping of str to str, optional
        Concept → region folder (``"~folder"`` for its complement); overrides descriptions.

    Returns
    -------
    list of MaskSource
        One per concept, in order.

    Raises
    ------
    ConfigError
        Unknown concepts or region folders, or no concept at all.
    """
    folders = probe.mask_names()
    table = list(probe.concept_names)
    available = table + [f for f in folders if f not in table]
    names = list(available if concepts is None else concepts)
    unknown = [c for c in names if c not in available]
    if unknown:
        raise ConfigError(f"unknown concept(s) {', '.join(unknown)}; available: {', '.join(available) or 'none'}")
    if not names:
        raise ConfigError("no concepts: the probe set has neither a concept table nor mask folders")
    declared = {d["name"]: d["region"] for d in probe.descriptions if isinstance(d.get("region"), str)}
    region_of = {**declared, **dict(regions or {})}
    bad = [c for c in (regions or {}) if c not in table]
    if bad:
        raise ConfigError(f"regions given for concept(s) not in the concept table: {', '.join(bad)}")
    out = []
    for name in names:
        if name in folders:
            out.append(MaskSource(name, "pixels", folder=name))
        elif name in region_of:
            spec = region_of[name]
            folder = spec[1:] if spec.startswith("~") else spec
            if folder not in folders:
                raise ConfigError(f"region {spec!r} of concept {name!r}: no folder masks/{folder}/ "
                                  f"(have: {', '.join(folders) or 'none'})")
            out.append(MaskSource(name, "region", folder=folder, inverted=spec.startswith("~"),
                                  column=table.index(name)))
        else:
            out.append(MaskSource(name, "image", column=table.index(name)))
    return out


class MaskReader:
    """Read the masks of every concept for probe images, at the model input's geometry.

    Parameters
    ----------
    probe : ProbeSet
        The probe set.
    preprocessing : Preprocessing
        How images become model inputs (masks are resized and cropped alike).
    sources : sequence of MaskSource
        From :func:`mask_sources`.
    """

    def __init__(self, probe: ProbeSet, preprocessing: Preprocessing, sources: Sequence[MaskSource]) -> None:
        self.probe = probe
        self.preprocessing = preprocessing
        self.sources = list(sources)
        self.size = tuple(int(s) for s in preprocessing.input_size)

    def _folder_mask(self, i: int, folder: str, image_size: tuple[int, int]) -> np.ndarray | None:
        raw = self.probe.mask(i, folder)
        if raw is None:
            return None
        if raw.shape != (image_size[1], image_size[0]):
            raise DataError(f"mask masks/{folder}/ of {self.probe.ids[i]} is {raw.shape[1]}x{raw.shape[0]} px, "
                            f"its image {image_size[0]}x{image_size[1]} px; masks must match their images")
        return self.preprocessing.resize_mask(raw)

    def __call__(self, indices: Sequence[int], image_sizes: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
        """Masks of the images at ``indices``.

        Parameters
        ----------
        indices : sequence of int
            B probe indices.
        image_sizes : sequence of tuple of int, optional
            (width, height) of each source image (read from the file header when missing).

        Returns
        -------
        ndarray
            (B, C, H, W) bool, C = len(sources), (H, W) the model input size.
        """
        h, w = self.size
        out = np.zeros((len(indices), len(self.sources), h, w), bool)
        for b, i in enumerate(indices):
            i = int(i)
            size = image_sizes[b] if image_sizes is not None else _image_size(self.probe, i)
            cache: dict[str, np.ndarray | None] = {}
            for c, src in enumerate(self.sources):
                marked = src.column is None or bool(self.probe.concepts[i, src.column])
                if not marked:
                    continue
                if src.kind == "image":
                    out[b, c] = True
                    continue
                if src.folder not in cache:
                    cache[src.folder] = self._folder_mask(i, src.folder, size)
                m = cache[src.folder]
                if src.inverted:
                    out[b, c] = True if m is None else ~m
                elif m is not None:
                    out[b, c] = m
        return out


def _image_size(probe: ProbeSet, i: int) -> tuple[int, int]:
    try:
        with Image.open(probe.path(i)) as im:
            return im.size
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read image {probe.ids[i]}: {exc}") from None
