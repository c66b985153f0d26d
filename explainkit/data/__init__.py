"""Probe sets: the image-folder reader with labels, concept tables and masks (:class:`ProbeSet`)."""

from explainkit.data.probe import IMAGE_EXTENSIONS, ProbeSet

__all__ = ["IMAGE_EXTENSIONS", "ProbeSet"]
