"""Save a model as safetensors with the metadata explainkit reads back (arch, preprocessing, classes)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from torch import nn

from explainkit._io import atomic_write_bytes
from explainkit.loading.arch import parse_arch

__all__ = ["save_model"]


def save_model(
    module: nn.Module,
    path: str | Path,
    *,
    arch: str,
    class_names: Sequence[str] | None = None,
    preprocessing: Mapping[str, object] | None = None,
) -> Path:
    """Write ``module``'s weights to a safetensors file with explainkit metadata.

    Parameters
    ----------
    module : torch.nn.Module
        The model.
    path : str or Path
        Destination (written atomically).
    arch : str
        Architecture spec that rebuilds the module (e.g. ``explainkit:tiny_cnn(num_classes=3)``);
        only torchvision, timm and explainkit specs are honoured from metadata without ``--arch``.
    class_names : sequence of str, optional
        Output class names.
    preprocessing : mapping, optional
        ``input_size``, ``mean``, ``std``, ``resize``.

    Returns
    -------
    Path
        ``path``.
    """
    from safetensors.torch import save

    parse_arch(arch)  # validate
    meta = {"explainkit.arch": arch}
    if class_names is not None:
        meta["class_names"] = json.dumps(list(class_names))
    for key, value in (preprocessing or {}).items():
        meta[key] = json.dumps(list(value) if isinstance(value, tuple) else value)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    return atomic_write_bytes(path, save(state, metadata=meta))
