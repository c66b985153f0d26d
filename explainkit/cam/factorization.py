"""Deep Feature Factorization (Collins, Achanta & Süsstrunk, ECCV 2018, arXiv 1806.10206).

The activations of a layer over a batch, (K channels) x (B images x h x w positions), shifted per
channel to be non-negative, are factorised by non-negative matrix factorisation into ``n``
concepts: ``A - m ≈ W H`` with W (K, n) the concepts' channel profiles and H (n, B h w) where each
concept is present. Each image gets one heatmap per concept; a classifier head applied to the
concept embeddings ``W + m`` says what each concept looks like to the model. Not one map per
image, so not a registered method: call :func:`deep_feature_factorization`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from explainkit.adapters import SpatialLayout, resolve_layer
from explainkit.cam.engine import CamRun
from explainkit.cam.postprocess import minmax, resize
from explainkit.errors import ConfigError
from explainkit.loading.handle import ModelHandle

__all__ = ["Factorization", "deep_feature_factorization"]


@dataclass
class Factorization:
    """What :func:`deep_feature_factorization` found.

    Attributes
    ----------
    concepts : torch.Tensor
        (K, n) channel profile of each concept, in activation units (``W + m``).
    maps : torch.Tensor
        (B, n, H, W) where each concept is, per image: min-max to [0, 1] per (image, concept) at
        feature resolution, then bilinearly upsampled to the input.
    raw : torch.Tensor
        (B, n, h, w) concept loadings ``H`` at feature resolution.
    scores : torch.Tensor or None
        (n, classes) the head's output on each concept embedding (when a head was given).
    layer : str
        The layer factorised.
    layout : SpatialLayout
        How its output was read.
    """

    concepts: torch.Tensor
    maps: torch.Tensor
    raw: torch.Tensor
    scores: torch.Tensor | None
    layer: str
    layout: SpatialLayout


def deep_feature_factorization(
    model: nn.Module | ModelHandle,
    inputs: torch.Tensor,
    *,
    layer: str | None = None,
    n_components: int = 5,
    head: nn.Module | Callable[[torch.Tensor], torch.Tensor] | str | None = None,
    seed: int = 0,
    max_iter: int = 200,
    tol: float = 1e-4,
    layout: str | SpatialLayout = "auto",
) -> Factorization:
    """Factorise a layer's activations over a batch into ``n_components`` concepts.

    Uses scikit-learn's ``NMF`` (coordinate descent, random non-negative initialisation seeded by
    ``seed``) on the float32 activations, as pytorch-grad-cam's ``DeepFeatureFactorization``
    (which fixes the seed at 0); the result is a local optimum that depends on the seed.

    Parameters
    ----------
    model : torch.nn.Module or ModelHandle
        The model.
    inputs : torch.Tensor
        (B, C, H, W) preprocessed inputs (the factorisation is over the whole batch).
    layer : str, optional
        Layer to factorise (default: :func:`explainkit.adapters.default_layer`).
    n_components : int
        Number of concepts.
    head : module, callable or str, optional
        Applied to the (n, K) concept embeddings, e.g. the classifier ``fc`` (a layer name of the
        model is resolved).
    seed, max_iter, tol
        NMF initialisation seed, iterations and stopping tolerance.
    layout : str or SpatialLayout
        How to read the layer output (see :func:`explainkit.cam.compute`).

    Returns
    -------
    Factorization
        Concepts, per-image concept maps and head scores.
    """
    from sklearn.decomposition import NMF

    if int(n_components) < 1:
        raise ConfigError("n_components must be at least 1")
    run = CamRun.create(model, inputs, layer=layer, targets=lambda out, rows: torch.zeros(len(rows)),
                        needs_layers=True, seed=seed, layout=layout)
    run.record(gradients=False)
    if len(run.layers) != 1:
        raise ConfigError("deep feature factorization takes one layer with a tensor output")
    data = next(iter(run.layers.values()))
    acts = data.activation
    b, k, spatial = acts.shape[0], acts.shape[1], tuple(acts.shape[2:])
    flat = torch.nan_to_num(acts.detach().float()).transpose(0, 1).reshape(k, -1).cpu().numpy()
    offset = flat.min(axis=1)
    nmf = NMF(n_components=int(n_components), init="random", random_state=int(seed), max_iter=int(max_iter),
              tol=float(tol))
    w = nmf.fit_transform(flat - offset[:, None])
    h = nmf.components_
    concepts = torch.from_numpy(np.asarray(w + offset[:, None], dtype=np.float32))
    raw = torch.from_numpy(np.ascontiguousarray(h, dtype=np.float32)).view(int(n_components), b, *spatial)
    raw = raw.transpose(0, 1).contiguous()
    maps = resize(minmax(raw.flatten(0, 1)), run.size).view(b, int(n_components), *run.size)
    scores = None
    if head is not None:
        fn = resolve_layer(run.handle.module, head)[1] if isinstance(head, str) else head
        device = run.inputs.device
        with torch.no_grad():
            scores = torch.as_tensor(fn(concepts.T.contiguous().to(device))).detach().cpu()
    return Factorization(concepts=concepts, maps=maps.to(inputs.device), raw=raw, scores=scores,
                         layer=data.name, layout=data.layout)


