"""Streaming activation extraction, shared by the concept families (INVERT, Network Dissection, ...).

A :class:`Pooler` turns a layer output of one batch into (B, D), so only N×D values are kept for a
probe set, never N×D×H×W; :meth:`Pooler.maps` instead returns the (B, D, h, w) maps for the methods
that need where a unit fires (Network Dissection). Analyzers pool the outputs the runner's shared
pass recorded (:func:`pool_outputs`); :func:`batch_activations` runs a pass of its own for image sets
the runner does not map. The representations:

* spatial maps (B, C, H, W) or channels-last (B, H, W, C): spatial ``mean`` (default, as INVERT's
  authors did for ResNet ``avgpool``) or ``max`` per channel;
* token sequences (B, T, C) of ViT-like models: the ``cls`` token or the ``mean`` of the patch
  tokens (prefix tokens found from the model's attributes or the token count);
* (B, D) outputs (linear units, logits): as they are.

The special layer name :data:`LOGITS` reads the model's logits without any hook.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from explainkit.adapters.layers import default_layer, resolve_layer
from explainkit.adapters.layout import infer_layout
from explainkit.adapters.targets import select_logits
from explainkit.adapters.tokens import SpatialLayout, token_hints
from explainkit.errors import ConfigError
from explainkit.hooks import capture_layers, eval_mode
from explainkit.loading.handle import ModelHandle

__all__ = ["LOGITS", "POOLINGS", "TOKEN_OPTIONS", "Pooler", "batch_activations", "build_poolers",
           "check_layers", "extract_activations", "layer_names", "learn_layouts", "pool_outputs"]

#: Layer name meaning "the model's logits" (one unit per class).
LOGITS = "@logits"
POOLINGS = ("mean", "max")
TOKEN_OPTIONS = ("cls", "mean")


class Pooler:
    """Reduce a layer's output to one value per unit: (B, …) → (B, D).

    Parameters
    ----------
    layer : str
        Layer name (for messages and the record).
    module : torch.nn.Module or None
        The layer (helps to tell channels-last maps apart); ``None`` for :data:`LOGITS`.
    pooling : {"mean", "max"}
        Spatial aggregation of 4-D maps.
    tokens : {"cls", "mean"}
        Aggregation of 3-D token sequences: the first (CLS) token or the mean of the patch tokens.
    model : torch.nn.Module, optional
        The whole model, for token-grid hints (prefix tokens, grid).
    input_size : tuple of int, optional
        (H, W) of the model input, to resolve token grids.

    Notes
    -----
    The layout is inferred from the first output seen and then fixed; :meth:`describe` records it.
    """

    def __init__(self, layer: str, module: nn.Module | None, *, pooling: str = "mean", tokens: str = "cls",
                 model: nn.Module | None = None, input_size: tuple[int, int] | None = None) -> None:
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
        if tokens not in TOKEN_OPTIONS:
            raise ConfigError(f"tokens must be one of {', '.join(TOKEN_OPTIONS)}, not {tokens!r}")
        self.layer = layer
        self.module = module
        self.pooling = pooling
        self.tokens = tokens
        self.hints = token_hints(model) if model is not None else {}
        self.input_size = input_size
        self.kind: str | None = None
        self.layout: SpatialLayout | None = None
        self.shape: tuple[int, ...] | None = None

    def _learn(self, t: torch.Tensor) -> None:
        self.shape = tuple(int(s) for s in t.shape[1:])
        if t.dim() == 2:
            self.kind = "logits" if self.layer == LOGITS else "units"
        elif t.dim() == 4:
            self.kind, self.layout = "spatial", infer_layout(t, self.module, input_size=self.input_size,
                                                             name=repr(self.layer))
        elif t.dim() == 3:
            self.kind = "tokens"
            try:
                self.layout = infer_layout(t, self.module, input_size=self.input_size, **self.hints)
            except ConfigError:
                if self.tokens == "mean" or "prefix_tokens" not in self.hints:
                    raise
                self.layout = SpatialLayout("tokens", int(self.hints["prefix_tokens"]))
            if self.tokens == "cls" and self.layout.prefix_tokens < 1:
                raise ConfigError(
                    f"layer {self.layer!r} has no CLS/prefix token (found {self.layout.prefix_tokens}); "
                    "use tokens='mean'"
                )
        else:
            raise ConfigError(
                f"layer {self.layer!r} outputs shape {tuple(t.shape)}; expected (B, D) units, (B, C, H, W) "
                "maps or (B, T, C) tokens"
            )

    def _reduce(self, t: torch.Tensor, op: str) -> torch.Tensor:
        if self.kind in ("units", "logits"):
            return t
        if self.kind == "spatial":
            dims = (2, 3) if self.layout.kind == "nchw" else (1, 2)  # type: ignore[union-attr]
            return t.sum(dims) if op == "sum" else (t.mean(dims) if op == "mean" else t.amax(dims))
        k = self.layout.prefix_tokens  # type: ignore[union-attr]
        if self.tokens == "cls":
            return t[:, 0]
        return t[:, k:].sum(1) if op == "sum" else t[:, k:].mean(1)

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        """(B, D) float32 pooled values of a layer output."""
        if self.kind is None:
            self._learn(t)
        return self._reduce(t.float(), self.pooling).float()

    def maps(self, t: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) float32 unit maps of a spatial or token-grid layer output (channels first).

        Raises
        ------
        ConfigError
            For layers without a spatial layout ((B, D) units, logits, tokens without a grid).
        """
        if self.kind is None:
            self._learn(t)
        if self.kind not in ("spatial", "tokens") or (self.kind == "tokens" and self.layout.grid is None):  # type: ignore[union-attr]
            raise ConfigError(f"layer {self.layer!r} has no spatial maps (outputs {tuple(t.shape)}); pick a "
                              "convolutional layer or a ViT block with a patch grid")
        return self.layout.apply(t.float()).float()  # type: ignore[union-attr]

    def contribution(self, value: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Gradient × activation summed over the positions the pooling reads: (B, D).

        For a spatial-mean unit feeding a linear classifier this is exactly ``w_kj · unit_j``,
        the unit's additive share of the logit.
        """
        if self.kind is None:
            self._learn(value)
        return self._reduce((value.float() * grad.float()), "sum")

    def describe(self) -> dict[str, Any]:
        """JSON-ready record of the representation (layer, kind, aggregation, layout, shape)."""
        aggregation = {"spatial": f"spatial {self.pooling} per channel",
                       "tokens": "CLS token" if self.tokens == "cls" else "mean of patch tokens",
                       "units": "none (one value per unit)", "logits": "none (one logit per class)"}.get(
            self.kind or "", "unknown (no batch seen)")
        return {"layer": self.layer, "kind": self.kind, "aggregation": aggregation,
                "pooling": self.pooling if self.kind == "spatial" else None,
                "tokens": self.tokens if self.kind == "tokens" else None,
                "layout": self.layout.to_dict() if self.layout is not None else None,
                "output_shape": list(self.shape) if self.shape else None}


def pool_outputs(outputs: Mapping[str, torch.Tensor], poolers: Mapping[str, Pooler],
                 logits: torch.Tensor | None = None, *, spatial: bool = False) -> dict[str, np.ndarray]:
    """Pooled activations (or unit maps) of layer outputs already recorded (e.g. by the runner's shared pass).

    Parameters
    ----------
    outputs : mapping of str to torch.Tensor
        Layer name → its (B, ...) output as the layer returned it (every layer of ``poolers`` but
        :data:`LOGITS`).
    poolers : mapping of str to Pooler
        Layer name → pooler; :data:`LOGITS` reads ``logits``.
    logits : torch.Tensor, optional
        (B, K) logits (needed when ``poolers`` holds :data:`LOGITS`).
    spatial : bool
        Return each layer's (B, D, h, w) unit maps (:meth:`Pooler.maps`) instead of pooled values.

    Returns
    -------
    dict of str to ndarray
        Layer name → (B, D) float32, or (B, D, h, w) with ``spatial``.

    Raises
    ------
    ConfigError
        ``spatial`` with :data:`LOGITS` (the logits have no maps).
    """
    if spatial and LOGITS in poolers:
        raise ConfigError("the logits have no spatial maps")
    out: dict[str, np.ndarray] = {}
    for name, p in poolers.items():
        value = logits.detach() if name == LOGITS else outputs[name]  # type: ignore[union-attr]
        out[name] = (p.maps if spatial else p)(value).cpu().numpy()
    return out


def batch_activations(handle: ModelHandle, inputs: torch.Tensor, poolers: Mapping[str, Pooler],
                      logits: torch.Tensor | None = None, *, spatial: bool = False) -> dict[str, np.ndarray]:
    """Pooled activations (or unit maps) of one batch, in a forward pass of its own (:func:`pool_outputs`).

    For probe sets the runner does not map (a second probe set, an image set of a library call);
    analyzers read the runner's shared pass instead (:meth:`~explainkit.analyzers.base.Analyzer.pass_request`).

    Parameters
    ----------
    handle : ModelHandle
        The model.
    inputs : torch.Tensor
        (B, 3, H, W) preprocessed inputs on the model's device.
    poolers, spatial
        As for :func:`pool_outputs`.
    logits : torch.Tensor, optional
        (B, K) logits of ``inputs`` when already computed (else the pass runs to the end).

    Returns
    -------
    dict of str to ndarray
        As :func:`pool_outputs`.
    """
    for name, p in poolers.items():  # the layout is decided with the actual input size as evidence
        if name != LOGITS:
            p.input_size = p.input_size or tuple(int(s) for s in inputs.shape[-2:])
    hooked = {name: poolers[name].module for name in poolers if name != LOGITS}
    need_logits = LOGITS in poolers and logits is None
    outputs: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        if hooked:
            with capture_layers(handle.module, hooked, detach=True, clone=True, stop_early=not need_logits) as cap:
                output = cap.forward(handle.forward, inputs)
            keep = slice(None) if handle.static_batch is None else slice(0, inputs.shape[0])  # padded batch
            outputs = {name: cap[name][keep] for name in hooked}
        elif need_logits:
            output = handle.forward(inputs)
        if need_logits:
            logits = select_logits(output)
    return pool_outputs(outputs, poolers, logits, spatial=spatial)


def learn_layouts(handle: ModelHandle, poolers: Mapping[str, Pooler], images: Sequence[Any]) -> None:
    """Let poolers that saw no batch (other workers mapped them) learn their layout on ``images``.

    Parameters
    ----------
    handle : ModelHandle
        The model.
    poolers : mapping of str to Pooler
        Layer → pooler; those with a known layout are left alone.
    images : sequence of PIL.Image.Image
        One or a few probe images.
    """
    pending = {name: p for name, p in poolers.items() if p.kind is None}
    if pending:
        inputs = handle.preprocess(list(images)).to(handle.device())
        with eval_mode(handle.module):
            batch_activations(handle, inputs, pending)


def layer_names(handle: ModelHandle, layers: str | Sequence[str] | None, run_layer: str | None = None, *,
                default: bool = True) -> list[str]:
    """The layers an analyzer works on: its parameter, else the run's ``--layer``, else the model's default.

    Parameters
    ----------
    handle : ModelHandle
        The model.
    layers : str, sequence of str or None
        The analyzer's ``layer`` parameter.
    run_layer : str, optional
        The run-wide layer (``--layer``).
    default : bool
        Fall back to the model's last spatial layer (:func:`~explainkit.adapters.layers.default_layer`,
        which may run the model once); ``False`` returns ``[]`` instead.

    Returns
    -------
    list of str
        Layer names (unresolved) or :data:`LOGITS`.

    Raises
    ------
    ConfigError
        An empty list.
    """
    chosen = layers if layers is not None else run_layer
    if chosen is None:
        if not default:
            return []
        input_size = tuple(handle.preprocessing.input_size) if handle.preprocessing is not None else None
        chosen = default_layer(handle.module, input_size or (224, 224))
    names = [chosen] if isinstance(chosen, str) else list(chosen)
    if not names:
        raise ConfigError("no layer given")
    return names


def check_layers(handle: ModelHandle, layers: str | Sequence[str] | None, run_layer: str | None = None) -> None:
    """Raise :class:`ConfigError` unless every layer asked for (not the model default) resolves; no side effects."""
    for name in layer_names(handle, layers, run_layer, default=False):
        if name != LOGITS:
            resolve_layer(handle.module, name)


def build_poolers(handle: ModelHandle, layers: Sequence[str], *, pooling: str = "mean", tokens: str = "cls"
                  ) -> dict[str, Pooler]:
    """One :class:`Pooler` per layer, keyed by the resolved dotted name.

    Parameters
    ----------
    handle : ModelHandle
        The model.
    layers : sequence of str
        Layer names or :data:`LOGITS` (see :func:`layer_names`).
    pooling, tokens : str
        See :class:`Pooler`.

    Returns
    -------
    dict of str to Pooler
        Resolved layer name → pooler, in the given order.

    Raises
    ------
    ConfigError
        Unknown layers.
    """
    input_size = tuple(handle.preprocessing.input_size) if handle.preprocessing is not None else None
    poolers: dict[str, Pooler] = {}
    for name in layers:
        module = None
        if name != LOGITS:
            name, module = resolve_layer(handle.module, name)
        poolers[name] = Pooler(name, module, pooling=pooling, tokens=tokens, model=handle.module,
                               input_size=input_size)
    return poolers


def extract_activations(handle: ModelHandle, images: Any, layers: Sequence[str], *, pooling: str = "mean",
                        tokens: str = "cls", batch_size: int = 32) -> tuple[dict[str, np.ndarray], dict]:
    """Stream a probe set through the model and keep only pooled activations (N×D per layer).

    Parameters
    ----------
    handle : ModelHandle
        The model (with preprocessing).
    images : ProbeSet
        The probe images (anything with ``iter_batches(batch_size)``).
    layers : sequence of str
        Dotted layer names, or :data:`LOGITS`.
    pooling, tokens : str
        See :class:`Pooler`.
    batch_size : int
        Images per forward pass.

    Returns
    -------
    activations : dict of str to ndarray
        Layer → (N, D) float32, rows in probe-set order.
    representations : dict of str to dict
        Layer → :meth:`Pooler.describe` record.
    """
    poolers = build_poolers(handle, layers, pooling=pooling, tokens=tokens)
    device = handle.device()
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in poolers}
    with eval_mode(handle.module):
        for _, batch in images.iter_batches(batch_size):
            acts = batch_activations(handle, handle.preprocess(batch).to(device), poolers)
            for name, a in acts.items():
                chunks[name].append(a)
    return ({name: np.concatenate(c) for name, c in chunks.items()},
            {name: p.describe() for name, p in poolers.items()})
