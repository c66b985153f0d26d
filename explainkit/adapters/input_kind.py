"""Whether a model reads images or volumes, decided from evidence, and the handle a run on volumes uses.

Evidence, in order: the kind of the probe data (:attr:`ProbeSet.kind` / :attr:`VolumeSet.kind`,
decided from its files) and the model's own layers: 3-D convolutions, normalisations and pooling
(``Conv3d``, ``BatchNorm3d``, ``MaxPool3d``, ...; TorchScript modules by their original class name)
take rank-5 (B, C, D, H, W) inputs, their 2-D counterparts rank-4 (B, C, H, W) ones. When the two
disagree the run stops with a :class:`ConfigError` naming a layer; when the layers say nothing (no
such layer, or both kinds) the first forward pass on the probe data decides (the runner's
:func:`~explainkit.backends.plan.validate_output`). Nothing is guessed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from torch import nn

from explainkit.errors import ConfigError, DataError
from explainkit.loading.handle import ModelHandle
from explainkit.loading.volume_input import VolumeInput

__all__ = ["InputEvidence", "bind_input", "input_evidence", "refuse_image_preprocessing"]

#: Layer classes that take (B, C, D, H, W) inputs.
VOLUME_LAYERS = frozenset({"Conv3d", "ConvTranspose3d", "LazyConv3d", "BatchNorm3d", "InstanceNorm3d", "MaxPool3d",
                           "AvgPool3d", "AdaptiveMaxPool3d", "AdaptiveAvgPool3d", "Dropout3d", "LPPool3d"})
#: Layer classes that take (B, C, H, W) inputs.
IMAGE_LAYERS = frozenset({"Conv2d", "ConvTranspose2d", "LazyConv2d", "BatchNorm2d", "InstanceNorm2d", "MaxPool2d",
                          "AvgPool2d", "AdaptiveMaxPool2d", "AdaptiveAvgPool2d", "Dropout2d", "LPPool2d"})


class _Samples(Protocol):
    kind: str
    ids: list[str]

    def sample_shape(self) -> tuple[int, ...]: ...


@dataclass(frozen=True)
class InputEvidence:
    """The model's layers that fix its input rank.

    Attributes
    ----------
    volume_layers, image_layers : tuple of str
        Dotted names of the 3-D and 2-D layers (convolutions, normalisations, pooling).
    first_channels : int or None
        Input channels of the first 3-D convolution (``None`` without one).
    """

    volume_layers: tuple[str, ...]
    image_layers: tuple[str, ...]
    first_channels: int | None = None

    @property
    def kind(self) -> str | None:
        """``"volumes"`` or ``"images"`` when the layers are all of one kind, else ``None`` (undecided)."""
        if self.volume_layers and not self.image_layers:
            return "volumes"
        if self.image_layers and not self.volume_layers:
            return "images"
        return None

    def describe(self) -> dict[str, Any]:
        """JSON-ready record (the report's provenance)."""
        return {"volume_layers": len(self.volume_layers), "image_layers": len(self.image_layers),
                "first": (self.volume_layers or self.image_layers or (None,))[0], "decided": self.kind}


def _class_name(module: nn.Module) -> str:
    return str(getattr(module, "original_name", None) or type(module).__name__)


def input_evidence(module: nn.Module) -> InputEvidence:
    """The 3-D and 2-D layers of ``module`` (see the module docstring).

    Parameters
    ----------
    module : torch.nn.Module
        The model (eager or TorchScript).

    Returns
    -------
    InputEvidence
        What its layers say about its input rank.
    """
    volume, image, channels = [], [], None
    for name, m in module.named_modules():
        cls = _class_name(m)
        if cls in VOLUME_LAYERS:
            volume.append(name)
            if channels is None and cls == "Conv3d" and hasattr(m, "in_channels"):
                channels = int(m.in_channels)
        elif cls in IMAGE_LAYERS:
            image.append(name)
    return InputEvidence(tuple(volume), tuple(image), channels)


def refuse_image_preprocessing(given: Sequence[str]) -> None:
    """Stop a volume run to which image preprocessing options (``input_size``, ``mean``, ...) were given.

    Raises
    ------
    ConfigError
        When ``given`` names any option (as ``--input-size``).
    """
    if given:
        raise ConfigError(f"{', '.join('--' + k.replace('_', '-') for k in given)}: image preprocessing does not "
                          "apply to volumes (they reach the model as stored); leave it out")


def bind_input(handle: ModelHandle, data: _Samples) -> ModelHandle:
    """The handle a run of ``handle`` on ``data`` uses, after checking that the two agree.

    Parameters
    ----------
    handle : ModelHandle
        The loaded model.
    data : ProbeSet or VolumeSet
        The probe data (its ``kind``).

    Returns
    -------
    ModelHandle
        ``handle`` itself for images; for volumes a copy whose preprocessing is a
        :class:`~explainkit.loading.volume_input.VolumeInput` of the volumes' shape (every file
        header is read and checked here, before the first model pass), with the evidence in
        ``load_notes["input"]``.

    Raises
    ------
    ConfigError
        A volume model on images, an image model on volumes, image preprocessing given for volumes.
    DataError
        Unreadable volumes, volumes of different shapes, or another channel count than the model's
        first 3-D convolution.
    """
    evidence = input_evidence(handle.module)
    kind = getattr(data, "kind", "images")
    if kind == "images":
        if evidence.kind == "volumes":
            raise ConfigError(f"the model reads volumes (3-D layers such as {evidence.volume_layers[0]!r}) but the "
                              "probe data are images; give --data a folder of .npy / .nii volumes")
        return handle
    if evidence.kind == "images":
        raise ConfigError(f"the probe data are volumes (C, D, H, W) but the model reads images (2-D layers such as "
                          f"{evidence.image_layers[0]!r}, no 3-D layer)")
    sources = getattr(handle.preprocessing, "sources", None) or {}
    refuse_image_preprocessing(sorted(k for k, v in sources.items() if v == "explicit"))
    shape: Sequence[int] = data.sample_shape()  # every header checked before the first model pass
    if evidence.first_channels is not None and evidence.first_channels != shape[0]:
        raise DataError(f"the volumes have {shape[0]} channel(s) ({data.ids[0]} is {tuple(shape)}) but the model's "
                        f"first 3-D convolution takes {evidence.first_channels}")
    prep = VolumeInput((shape[1], shape[2], shape[3]), shape[0],
                       {"input_size": "the probe volumes", "channels": "the probe volumes"})
    notes = {**handle.load_notes, "input": {"kind": "volumes", "rank": 5, "evidence": evidence.describe()}}
    return dataclasses.replace(handle, preprocessing=prep, load_notes=notes)  # type: ignore[arg-type]
