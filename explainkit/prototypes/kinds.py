"""The generic adapter kinds: prototype tensors, channels, exemplar cells and k-means centres.

``vectors`` reads the prototype tensor of ProtoPNet-, ProtoTree- and TesNet-like networks (detected
when the model has one), ``channels`` makes every channel of a layer a prototype (the fallback of
``adapter="auto"``), ``exemplars`` and ``kmeans`` make prototypes of latent cells of probe images
(see :mod:`explainkit.prototypes.adapters`).
"""

from __future__ import annotations

import numpy as np

from explainkit.adapters import default_layer
from explainkit.errors import ConfigError
from explainkit.prototypes.adapters import (
    ChannelPrototypes,
    PrototypeAdapter,
    VectorPrototypes,
    exemplar_prototypes,
    find_prototype_tensor,
    kmeans_prototypes,
)
from explainkit.prototypes.registry import AdapterKind, AdapterRequest

__all__ = ["CHANNELS", "EXEMPLARS", "KMEANS", "KMEANS_IMAGES", "VECTORS"]

#: Most images used to fit k-means prototypes.
KMEANS_IMAGES = 256


def _layer(request: AdapterRequest) -> str:
    return request.layer or default_layer(request.handle.module, request.input_size)


def _tokens(request: AdapterRequest) -> dict:
    """The token-grid options of a ViT latent layer (``grid``, ``prefix_tokens``)."""
    grid = request.options.get("grid")
    return {"grid": None if grid is None else tuple(int(v) for v in grid),
            "prefix_tokens": request.options.get("prefix_tokens")}


def _similarity(request: AdapterRequest) -> str:
    value = request.options.get("similarity", "auto")
    return "log" if value == "auto" else value


def _vectors(request: AdapterRequest) -> PrototypeAdapter:
    return VectorPrototypes.from_model(request.handle, tensor=request.options.get("prototype_tensor"),
                                       layer=request.layer, similarity=request.options.get("similarity", "auto"),
                                       input_size=request.input_size, **_tokens(request))


def _channels(request: AdapterRequest) -> PrototypeAdapter:
    return ChannelPrototypes(_layer(request), request.options.get("channels"),
                             bool(request.options.get("softmax", False)), **_tokens(request)
                             ).bind(request.handle, request.input_size)


def _exemplars(request: AdapterRequest) -> PrototypeAdapter:
    ctx = request.ctx
    cells = [tuple(int(v) for v in c) for c in request.options.get("exemplar_cells") or []]
    if not cells:
        raise ConfigError("prototypes: adapter 'exemplars' needs exemplar_cells [[probe index, row, column], ...]")
    if any(len(c) != 3 or not 0 <= c[0] < len(ctx.data) for c in cells):
        raise ConfigError("prototypes: exemplar_cells must be [probe index, row, column] of probe images")
    inputs = ctx.handle.preprocess(ctx.load_images([c[0] for c in cells])).to(ctx.device)
    classes = [request.model_label(c[0]) for c in cells]
    return exemplar_prototypes(ctx.handle, inputs, [(k, r, col) for k, (_, r, col) in enumerate(cells)],
                               _layer(request), similarity=_similarity(request), classes=classes, **_tokens(request))


def _kmeans(request: AdapterRequest) -> PrototypeAdapter:
    ctx = request.ctx
    if not ctx.data.has_labels:
        raise ConfigError("prototypes: adapter 'kmeans' needs a labelled probe set")
    train = [i for i in range(len(ctx.data)) if request.is_train(i)][:KMEANS_IMAGES]
    inputs = ctx.handle.preprocess(ctx.load_images(train)).to(ctx.device)
    labels = np.array([request.model_label(i) for i in train])
    return kmeans_prototypes(ctx.handle, inputs, labels, _layer(request),
                             per_class=int(request.options.get("per_class", 3)), similarity=_similarity(request),
                             seed=int(ctx.rng("prototypes", "kmeans").integers(2**31)), batch_size=ctx.batch_size,
                             **_tokens(request))


VECTORS = AdapterKind(
    "vectors", _vectors, "the model's prototype tensor (ProtoPNet, ProtoTree, TesNet-like layers)",
    "Chen et al. 2019; Nauta et al. 2021", detect=lambda m: find_prototype_tensor(m) is not None)
CHANNELS = AdapterKind(
    "channels", _channels, "every channel of a layer is a prototype (PIP-Net style)", "Nauta et al. 2023",
    detect=lambda m: True, priority=-100)
EXEMPLARS = AdapterKind("exemplars", _exemplars, "latent cells of given probe images (a post-hoc push)",
                        "Chen et al. 2019")
KMEANS = AdapterKind("kmeans", _kmeans, "k-means centres of each class's latent cells", "Gautam et al. 2024 (KMEx)")
