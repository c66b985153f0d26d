"""Public functions: :func:`cam` (one method) and :func:`cams` (several from one pass).

Every gradient-based method requested together is computed from **one** forward and **one**
backward pass (the backward stops at the target layer); activation-only methods reuse the same
forward; noise and perturbation methods add their own passes on top of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from explainkit.adapters import SpatialLayout
from explainkit.cam.engine import CamRun
from explainkit.cam.methods import ONE_PASS_KINDS, CamMethod, get_method, list_methods
from explainkit.cam.postprocess import combine_layers
from explainkit.errors import ConfigError
from explainkit.loading.handle import ModelHandle

__all__ = ["GRADIENT_METHODS", "INPUT_LAYER", "CamResult", "cam", "cams", "compute", "explain", "plan_methods"]

#: The methods :func:`cams` computes by default: every built-in method one forward + one backward pass gives
#: (the registered ``gradient`` methods, then the ``activation`` ones).
GRADIENT_METHODS = tuple(m for kind in ONE_PASS_KINDS for m in list_methods(kind))
#: Pseudo layer name under which input-level (captum) methods store their raw map.
INPUT_LAYER = "input"


@dataclass
class CamResult:
    """Everything one :func:`compute` call produced.

    Attributes
    ----------
    maps : dict of str to torch.Tensor
        Method → (B, H, W) heatmap in [0, 1] at input resolution.
    raw : dict of str to dict of str to torch.Tensor
        Method → layer → (B, h, w) raw map (signed, un-normalised, feature resolution); input-level
        methods use the layer name ``"input"``.
    layers : list of str
        Target layers (canonical names).
    layouts : dict of str to SpatialLayout
        How each layer's output was read as a map.
    classes : torch.Tensor or None
        (B,) explained class per image (None for non-class targets).
    scores : torch.Tensor
        (B,) target score of the clean inputs.
    """

    maps: dict[str, torch.Tensor]
    raw: dict[str, dict[str, torch.Tensor]]
    layers: list[str]
    layouts: dict[str, SpatialLayout]
    classes: torch.Tensor | None
    scores: torch.Tensor

    def grid(self, method: str) -> tuple[int, int]:
        """(h, w) of ``method``'s first raw map: the map's native spatial structure."""
        first = next(iter(self.raw[method].values()))
        return int(first.shape[-2]), int(first.shape[-1])


def plan_methods(methods: Sequence[str], params: Mapping[str, Mapping[str, Any]] | None
                 ) -> list[tuple[CamMethod, dict[str, Any]]]:
    """Resolve method names and validate their parameters.

    Parameters
    ----------
    methods : sequence of str
        Method names or aliases (no duplicates).
    params : mapping, optional
        Method name → keyword parameters.

    Returns
    -------
    list of (CamMethod, dict)
        The methods with their parameters.

    Raises
    ------
    ConfigError
        Unknown or duplicate methods, parameters for methods not requested, unknown parameters.
    """
    if isinstance(methods, str):
        methods = [methods]
    resolved = [get_method(m) for m in methods]
    if not resolved:
        raise ConfigError("no CAM method requested")
    names = [m.name for m in resolved]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"method(s) requested twice: {', '.join(dup)}")
    params = dict(params or {})
    unknown = sorted(set(params) - set(names) - set(methods))
    if unknown:
        raise ConfigError(f"parameters given for method(s) not requested: {', '.join(unknown)}")
    out = []
    for requested, m in zip(methods, resolved):
        p = dict(params.get(requested, params.get(m.name, {})) or {})
        m.check_params(p)
        out.append((m, p))
    return out


def compute(
    model: nn.Module | ModelHandle,
    inputs: torch.Tensor,
    *,
    methods: Sequence[str] = GRADIENT_METHODS,
    layer: str | Sequence[str] | None = None,
    targets: Any = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    batch_size: int = 32,
    seed: int = 0,
    layout: str | SpatialLayout = "auto",
) -> CamResult:
    """Compute several explanation maps for one batch, sharing the model passes.

    Parameters
    ----------
    model : torch.nn.Module or ModelHandle
        The model (in-memory modules are used as they are; their training flags are restored).
    inputs : torch.Tensor
        (B, C, H, W) preprocessed inputs.
    methods : sequence of str
        Method names (see :func:`explainkit.cam.list_methods`).
    layer : str, sequence of str or None
        Target layer(s) by dotted name; ``None``: :func:`explainkit.adapters.default_layer`.
        Several layers: per-layer maps are normalised, then averaged (as pytorch-grad-cam).
    targets : Any
        ``None`` (predicted class), a class index, one index per image, a
        :class:`explainkit.adapters.Target`, or a function of the output giving (B,) scores.
    params : mapping, optional
        Method name → its keyword parameters.
    batch_size : int
        Rows per extra forward pass (perturbation, noise and captum methods).
    seed : int
        Seed of every random draw (noise, baselines).
    layout : str or SpatialLayout
        How to read the layer output as a map: ``"auto"`` infers NCHW, NHWC and ViT token grids
        (grid and prefix tokens from the model, else from the token count and input aspect ratio);
        ``"nchw"``, ``"nhwc"``, ``"tokens"`` force a kind; a
        :class:`explainkit.adapters.SpatialLayout` gives it completely.

    Returns
    -------
    CamResult
        Maps, raw maps, layers, layouts, explained classes and scores.

    Raises
    ------
    ConfigError
        Unknown method/parameter/layer, bad inputs.
    CapabilityError
        Hooks or gradients needed but not available (e.g. CAMs on TorchScript).
    """
    plan = plan_methods(methods, params)
    needs_layers = any(m.uses_layers for m, _ in plan)
    run = CamRun.create(model, inputs, layer=layer, targets=targets, needs_layers=needs_layers,
                        batch_size=batch_size, seed=seed, layout=layout)
    run.record(gradients=any(m.uses_gradients for m, _ in plan))
    return explain(run, plan, inputs.device)


def explain(run: CamRun, plan: Sequence[tuple[CamMethod, dict[str, Any]]], device: torch.device | None = None
            ) -> CamResult:
    """Every planned method on a recorded run (:meth:`CamRun.record` or :meth:`CamRun.adopt`).

    Parameters
    ----------
    run : CamRun
        The run with its clean pass.
    plan : sequence of (CamMethod, dict)
        Methods and parameters (:func:`plan_methods`).
    device : torch.device, optional
        Where the results go (default: the inputs' device).

    Returns
    -------
    CamResult
        Maps, raw maps, layers, layouts, explained classes and scores.
    """
    device = device or run.inputs.device
    raw: dict[str, dict[str, torch.Tensor]] = {}
    for method, p in plan:
        if method.uses_layers:
            raw[method.name] = {name: method.compute(run.layers[name], run, **p) for name in run.layer_names}
        else:
            raw[method.name] = {INPUT_LAYER: method.compute(run, **p)}
    maps = {name: combine_layers(list(per_layer.values()), run.size).to(device) for name, per_layer in raw.items()}
    bound = run.bound
    assert bound is not None and run.scores0 is not None
    return CamResult(
        maps=maps,
        raw={m: {k: v.to(device) for k, v in per.items()} for m, per in raw.items()},
        layers=list(run.layer_names),
        layouts={name: data.layout for name, data in run.layers.items()},
        classes=None if bound.classes is None else bound.classes.to(device),
        scores=run.scores0.to(device),
    )


def cam(
    model: nn.Module | ModelHandle,
    inputs: torch.Tensor,
    *,
    layer: str | Sequence[str] | None = None,
    method: str = "gradcam",
    targets: Any = None,
    raw: bool = False,
    batch_size: int = 32,
    seed: int = 0,
    layout: str | SpatialLayout = "auto",
    **params: Any,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """One explanation map per image.

    Parameters
    ----------
    model : torch.nn.Module or ModelHandle
        The model.
    inputs : torch.Tensor
        (B, C, H, W) preprocessed inputs.
    layer : str, sequence of str or None
        Target layer(s); ``None`` picks the last spatial layer (ViT/Swin: the last block's norm).
    method : str
        ``gradcam``, ``gradcampp``, ``xgradcam``, ``layercam``, ``hirescam``,
        ``gradcam_elementwise``, ``scorecam``, ``ablationcam``, ``eigencam``, ``eigengradcam``,
        ``smoothgradcampp``, or an input-level method (``saliency``, ``integrated_gradients``,
        ``smoothgrad``, ``occlusion``, ``gradient_shap``).
    targets : Any
        What to explain (``None``: the predicted class); see :func:`compute`.
    raw : bool
        Return the raw maps instead: (B, h, w) signed, un-normalised, at feature resolution (a
        dict layer → map when several layers are given).
    batch_size, seed, layout
        See :func:`compute`.
    **params
        The method's own parameters (e.g. ``variant="channel_softmax"`` for Score-CAM).

    Returns
    -------
    torch.Tensor or dict of str to torch.Tensor
        (B, H, W) float maps in [0, 1] at input resolution, or raw maps.

    Examples
    --------
    >>> heat = explainkit.cam(model, x, layer="layer4", method="gradcampp")  # doctest: +SKIP
    >>> heat.shape  # doctest: +SKIP
    torch.Size([8, 224, 224])
    """
    result = compute(model, inputs, methods=[method], layer=layer, targets=targets, params={method: params},
                     batch_size=batch_size, seed=seed, layout=layout)
    name = next(iter(result.maps))
    if raw:
        per_layer = result.raw[name]
        return next(iter(per_layer.values())) if len(per_layer) == 1 else per_layer
    return result.maps[name]


def cams(
    model: nn.Module | ModelHandle,
    inputs: torch.Tensor,
    *,
    layer: str | Sequence[str] | None = None,
    methods: Sequence[str] = GRADIENT_METHODS,
    targets: Any = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    raw: bool = False,
    batch_size: int = 32,
    seed: int = 0,
    layout: str | SpatialLayout = "auto",
) -> dict[str, torch.Tensor] | dict[str, dict[str, torch.Tensor]]:
    """Several methods at once; all gradient-based ones from one forward and one backward pass.

    Parameters
    ----------
    model, inputs, layer, targets, batch_size, seed, layout
        As :func:`cam`.
    methods : sequence of str
        Default: every method computable from one forward + one backward
        (:data:`GRADIENT_METHODS`).
    params : mapping, optional
        Method name → its keyword parameters.
    raw : bool
        Return method → layer → (B, h, w) raw maps instead.

    Returns
    -------
    dict
        Method → (B, H, W) map in [0, 1] (or method → layer → raw map).
    """
    result = compute(model, inputs, methods=methods, layer=layer, targets=targets, params=params,
                     batch_size=batch_size, seed=seed, layout=layout)
    return result.raw if raw else result.maps
