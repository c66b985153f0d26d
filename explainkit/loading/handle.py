"""``ModelHandle``: one object that carries a model and everything known about it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import nn

from explainkit.errors import CapabilityError, ConfigError
from explainkit.loading.preprocessing import Preprocessing
from explainkit.loading.sniff import ModelFormat

__all__ = ["CAPABILITIES", "ModelHandle"]

#: Capability flags a handle may carry; analyzers list the ones they need in ``requires``.
CAPABILITIES = ("module_hooks", "gradients", "dynamic_batch")


@dataclass(eq=False)
class ModelHandle:
    """A loaded model with its provenance, preprocessing and capabilities.

    Attributes
    ----------
    module : torch.nn.Module
        The model (eager, unflattened ``torch.export`` program, or TorchScript).
    format : ModelFormat
        How it was stored.
    trust_mode : str
        ``weights-only``, ``allow-classes``, ``trusted`` or ``in-memory``.
    sha256 : str or None
        Hash of the model file (``None`` for in-memory models).
    preprocessing : Preprocessing or None
        How images become inputs; ``None`` when unknown (tensor-only use).
    class_names : tuple of str or None
        Output class names, index-aligned with the logits.
    module_hooks : bool
        Whether forward hooks on submodules fire (False for TorchScript).
    gradients : bool
        Whether gradients flow to inputs and activations.
    static_batch : int or None
        Fixed batch size of a ``torch.export`` program without dynamic shapes.
    output_key : str, int or None
        Dict key or sequence index of the logits in the model's output; :meth:`forward` then
        returns that entry only. ``None``: the output as the model returns it.
    """

    module: nn.Module
    format: ModelFormat = ModelFormat.IN_MEMORY
    trust_mode: str = "in-memory"
    sha256: str | None = None
    preprocessing: Preprocessing | None = None
    class_names: tuple[str, ...] | None = None
    source: str | None = None
    arch: str | None = None
    module_hooks: bool = True
    gradients: bool = True
    static_batch: int | None = None
    output_key: str | int | None = None
    load_notes: dict[str, Any] = field(default_factory=dict)

    @property
    def capabilities(self) -> frozenset[str]:
        """The set of capability flags this handle has (see :data:`CAPABILITIES`)."""
        flags = {"module_hooks": self.module_hooks, "gradients": self.gradients,
                 "dynamic_batch": self.static_batch is None}
        return frozenset(k for k, v in flags.items() if v)

    def layer_names(self) -> list[str]:
        """Dotted names of all submodules, as ``named_modules()`` gives them (root excluded)."""
        return [name for name, _ in self.module.named_modules() if name]

    def require_preprocessing(self) -> Preprocessing:
        """Return the preprocessing or raise a clear error when it is unknown."""
        if self.preprocessing is None:
            raise ConfigError(
                "preprocessing unknown for this model: pass input_size, mean and std "
                "(--input-size N --mean R,G,B --std R,G,B)"
            )
        return self.preprocessing

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Turn B PIL images into a (B, 3, H, W) float32 model input."""
        return self.require_preprocessing()(images)

    def device(self) -> torch.device:
        """Device of the first parameter or buffer (CPU when there is none)."""
        for tensor in (*self.module.parameters(), *self.module.buffers()):
            return tensor.device
        return torch.device("cpu")

    def to(self, device: str | torch.device) -> ModelHandle:
        """Move the module to ``device`` in place and return ``self``."""
        self.module.to(device)
        return self

    def forward(self, inputs: torch.Tensor) -> Any:
        """Call the model, padding the batch for fixed-batch ``torch.export`` programs.

        Parameters
        ----------
        inputs : torch.Tensor
            (B, 3, H, W) model input.

        Returns
        -------
        Any
            The model output for exactly B inputs (tensor, tuple or dict as the model returns), or
            its entry :attr:`output_key`.
        """
        n = self.static_batch
        if n is None or inputs.shape[0] == n:
            return self._select(self.module(inputs))
        if inputs.shape[0] > n:
            raise CapabilityError(
                f"this torch.export program has a fixed batch size of {n}; use --batch-size {n} "
                "or re-export it with dynamic_shapes"
            )
        pad = inputs[-1:].expand(n - inputs.shape[0], *inputs.shape[1:])
        out = self.module(torch.cat([inputs, pad]))
        return self._select(_take_first(out, inputs.shape[0]))

    def _select(self, out: Any) -> Any:
        key = self.output_key
        if key is None:
            return out
        try:
            return out[key]
        except (KeyError, IndexError, TypeError):
            have = sorted(map(str, out)) if isinstance(out, dict) else f"a {type(out).__name__}"
            raise ConfigError(f"--output-key {key!r}: the model output has no such entry (it is {have})") from None

    def describe(self) -> dict[str, Any]:
        """JSON-ready provenance of the model for reports."""
        return {
            "source": self.source,
            "format": self.format.value,
            "trust_mode": self.trust_mode,
            "sha256": self.sha256,
            "arch": self.arch,
            "class_names": list(self.class_names) if self.class_names else None,
            "preprocessing": self.preprocessing.to_dict() if self.preprocessing else None,
            "capabilities": sorted(self.capabilities),
            "static_batch": self.static_batch,
            "output_key": self.output_key,
            "load_notes": self.load_notes,
        }


def _take_first(out: Any, b: int) -> Any:
    if isinstance(out, torch.Tensor):
        return out[:b]
    if isinstance(out, tuple | list):
        return type(out)(_take_first(o, b) for o in out)
    if isinstance(out, dict):
        return {k: _take_first(v, b) for k, v in out.items()}
    return out
