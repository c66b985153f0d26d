"""Public functions: :func:`cam` (one method) and :func:`cams` (several from one pass).

Every gradient-based method requested together is computed from **one** forward and **one**
backward pass (the backward stops at the target layer); activation-only methods reuse the same
forward; noise, perturbation and backward methods add their own passes on top of it.

Two options apply to every method and are handled here: ``aug_smooth`` (test-time augmentation,
:func:`augmentations`) and targets that expand one image into several explanations (every positive
label of a multi-label model, :meth:`explainkit.adapters.Target.expand`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from explainkit.adapters import SpatialLayout, Target, as_target
from explainkit.cam.engine import CamRun, as_handle
from explainkit.cam.methods import ONE_PASS_KINDS, CamMethod, get_method, list_methods
from explainkit.cam.postprocess import combine_layers
from explainkit.errors import ConfigError
from explainkit.hooks import eval_mode
from explainkit.loading.handle import ModelHandle

__all__ = [
    "AUGMENTATIONS", "GRADIENT_METHODS", "INPUT_LAYER", "VOLUME_KINDS", "CamResult", "cam", "cams", "compute",
    "explain", "plan_methods",
]

#: The methods :func:`cams` computes by default: every built-in method one forward + one backward pass gives
#: (the registered ``gradient`` methods, then the ``activation`` ones).
GRADIENT_METHODS = tuple(m for kind in ONE_PASS_KINDS for m in list_methods(kind))
#: Method kinds that run on (B, C, D, H, W) volumes (their formulas sum over every spatial axis and
#: upsample trilinearly); input-level and guided methods are image-only.
VOLUME_KINDS = ("gradient", "activation", "perturbation")
#: Pseudo layer name under which input-level (captum) methods store their raw map.
INPUT_LAYER = "input"
#: ``aug_smooth``'s test-time augmentations, ``(mirror left-right, brightness factor)``: those of
#: pytorch-grad-cam (ttach's HorizontalFlip x Multiply([0.9, 1, 1.1]) on the model input).
AUGMENTATIONS = tuple((flip, factor) for flip in (False, True) for factor in (0.9, 1.0, 1.1))


@dataclass
class CamResult:
    """Everything one :func:`compute` call produced.

    Attributes
    ----------
    maps : dict of str to torch.Tensor
        Method → (B, H, W) heatmap in [0, 1] at input resolution ((B, D, H, W) for volumes).
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
    images : torch.Tensor or None
        (B,) source image of each map: ``0 .. B-1``, except for targets that explain several
        things per image (:class:`explainkit.adapters.MultiLabelTarget` without labels: one map
        per positive label, ``images`` says whose).
    """

    maps: dict[str, torch.Tensor]
    raw: dict[str, dict[str, torch.Tensor]]
    layers: list[str]
    layouts: dict[str, SpatialLayout]
    classes: torch.Tensor | None
    scores: torch.Tensor
    images: torch.Tensor | None = None

    def grid(self, method: str) -> tuple[int, ...]:
        """(h, w) (volumes: (d, h, w)) of ``method``'s first raw map: the map's native spatial structure."""
        first = next(iter(self.raw[method].values()))
        return tuple(int(s) for s in first.shape[1:])


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
        (B, C, H, W) preprocessed inputs, or (B, C, D, H, W) volumes (methods of :data:`VOLUME_KINDS`).
    methods : sequence of str
        Method names (see :func:`explainkit.cam.list_methods`).
    layer : str, sequence of str or None
        Target layer(s) by dotted name; ``None``: :func:`explainkit.adapters.default_layer`.
        Several layers (or a layer returning a mapping of tensors, such as an FPN backbone, one
        map per entry): per-layer maps are normalised, then averaged (as pytorch-grad-cam).
    targets : Any
        ``None`` (predicted class), a class index, one index per image, a
        :class:`explainkit.adapters.Target` (segmentation region, detection boxes, multi-label,
        binary ...), a function ``fn(output, rows)`` of the output giving one score per row
        (``rows[j]``: the image of row ``j``), or one callable per image (pytorch-grad-cam's
        convention).
    params : mapping, optional
        Method name → its keyword parameters (including ``eigen_smooth`` where declared and
        ``aug_smooth`` for every method).
    batch_size : int
        Rows per extra forward pass (perturbation, noise and captum methods).
    seed : int
        Seed of every random draw (noise, baselines).
    layout : str or SpatialLayout
        How to read the layer output as a map: ``"auto"`` decides from the module type, the input
        size and, where needed, one probe at a second input size, and raises when that is not
        conclusive (see :func:`explainkit.adapters.infer_layout`); ``"nchw"``, ``"nhwc"``,
        ``"tokens"`` force a kind; a :class:`explainkit.adapters.SpatialLayout` gives it completely.

    Returns
    -------
    CamResult
        Maps, raw maps, layers, layouts, explained classes and scores.

    Raises
    ------
    ConfigError
        Unknown method/parameter/layer, bad inputs, an undecidable layout.
    CapabilityError
        Hooks or gradients needed but not available (e.g. CAMs on TorchScript).
    """
    plan = plan_methods(methods, params)
    _check_volume_methods(plan, inputs)
    handle = as_handle(model)
    target = as_target(targets)
    images = torch.arange(inputs.shape[0]) if isinstance(inputs, torch.Tensor) and inputs.dim() else None
    expanded = _expand(handle, inputs, target)
    if expanded is not None:
        images, target = expanded
        inputs = inputs[images.to(inputs.device)]
        if not images.numel():
            return _empty(plan, inputs)
    run = CamRun.create(handle, inputs, layer=layer, targets=target, needs_layers=any(m.uses_layers for m, _ in plan),
                        needs_hooks=any(m.hooks for m, _ in plan), batch_size=batch_size, seed=seed, layout=layout)
    run.record(gradients=any(m.uses_gradients for m, _ in plan))
    return explain(run, plan, inputs.device, images=images)


def explain(run: CamRun, plan: Sequence[tuple[CamMethod, dict[str, Any]]], device: torch.device | None = None,
            images: torch.Tensor | None = None) -> CamResult:
    """Every planned method on a recorded run (:meth:`CamRun.record` or :meth:`CamRun.adopt`).

    Parameters
    ----------
    run : CamRun
        The run with its clean pass.
    plan : sequence of (CamMethod, dict)
        Methods and parameters (:func:`plan_methods`; ``aug_smooth`` included).
    device : torch.device, optional
        Where the results go (default: the inputs' device).
    images : torch.Tensor, optional
        (B,) source image of each row (see :attr:`CamResult.images`; default: one row per image).

    Returns
    -------
    CamResult
        Maps, raw maps, layers, layouts, explained classes and scores.
    """
    device = device or run.inputs.device
    raw = {m.name: _raw(m, p, run) for m, p in plan}
    maps = {m.name: combine_layers(list(raw[m.name].values()), run.size) for m, _ in plan}
    maps.update({m.name: _augmented(m, p, run, maps[m.name]) for m, p in plan if p.get("aug_smooth")})
    classes = run.classes
    assert run.scores0 is not None
    if images is None:
        images = torch.arange(run.inputs.shape[0])
    return CamResult(
        maps={k: v.to(device) for k, v in maps.items()},
        raw={m: {k: v.to(device) for k, v in per.items()} for m, per in raw.items()},
        layers=list(run.layer_names),
        layouts={name: data.layout for name, data in run.layers.items()},
        classes=None if classes is None else classes.to(device),
        scores=run.scores0.to(device),
        images=images,
    )


def _check_volume_methods(plan: list[tuple[CamMethod, dict[str, Any]]], inputs: Any) -> None:
    """Refuse methods that are image-only (and ``aug_smooth``) on (B, C, D, H, W) volumes."""
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 5:
        return
    bad = [m.name for m, p in plan if m.kind not in VOLUME_KINDS or p.get("aug_smooth")]
    if bad:
        ok = ", ".join(n for k in VOLUME_KINDS for n in list_methods(k))
        raise ConfigError(f"method(s) {', '.join(bad)} do not run on volumes (or aug_smooth was asked); "
                          f"volume methods: {ok}")


def _raw(method: CamMethod, params: Mapping[str, Any], run: CamRun) -> dict[str, torch.Tensor]:
    """Layer (or ``"input"``) → raw map of one method on a recorded run."""
    own = method.own_params(params)
    if method.uses_layers:
        return {name: method.compute(data, run, **own) for name, data in run.layers.items()}
    return {INPUT_LAYER: method.compute(run, **own)}


def _augmented(method: CamMethod, params: Mapping[str, Any], run: CamRun, plain: torch.Tensor) -> torch.Tensor:
    """``aug_smooth``: the mean of the method's [0, 1] maps over :data:`AUGMENTATIONS`, each un-mirrored.

    Every augmented copy is explained for the target bound on the clean images (mirrored with the
    image for spatial targets: masks, boxes), not re-picked per copy as pytorch-grad-cam does with
    ``targets=None``; the mean is not re-normalised (as pytorch-grad-cam). ``plain`` is the map of
    the un-augmented run (the identity augmentation).
    """
    assert run.bound is not None
    width = run.size[1]
    total = torch.zeros(run.inputs.shape[0], *run.size, device=run.inputs.device)
    for flip, factor in AUGMENTATIONS:
        if not flip and factor == 1.0:
            total += plain
            continue
        x = run.inputs.flip(-1) if flip else run.inputs
        sub = CamRun(handle=run.handle, inputs=x * factor, target=run.target, layer_names=list(run.layer_names),
                     batch_size=run.batch_size, seed=run.seed, layout=run.layout,
                     bound=run.bound.mirrored(width) if flip else run.bound, amp=run.amp)
        sub.record(gradients=method.uses_gradients)
        maps = combine_layers(list(_raw(method, params, sub).values()), run.size)
        total += maps.flip(-1) if flip else maps
    return total / len(AUGMENTATIONS)


def _expand(handle: ModelHandle, inputs: Any, target: Target) -> tuple[torch.Tensor, Target] | None:
    """Run the clean forward for a target that may explain several things per image (else ``None``)."""
    if type(target).expand is Target.expand or not isinstance(inputs, torch.Tensor) or inputs.dim() not in (4, 5):
        return None
    with eval_mode(handle.module), torch.no_grad():
        output = handle.forward(inputs.detach().to(handle.device(), torch.float32))
    return target.expand(output)


def _empty(plan: list[tuple[CamMethod, dict[str, Any]]], inputs: torch.Tensor) -> CamResult:
    """The result of an expansion with nothing to explain (no positive label anywhere)."""
    shape = (0, *inputs.shape[2:])
    empty = torch.zeros(0, dtype=torch.long)
    return CamResult(maps={m.name: torch.zeros(shape, device=inputs.device) for m, _ in plan},
                     raw={m.name: {} for m, _ in plan}, layers=[], layouts={}, classes=empty,
                     scores=torch.zeros(0), images=empty)


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
        (B, C, H, W) preprocessed inputs, or (B, C, D, H, W) volumes (methods of :data:`VOLUME_KINDS`).
    layer : str, sequence of str or None
        Target layer(s); ``None`` picks the last spatial layer (ViT/Swin: the last block's norm).
    method : str
        A registered method (:func:`~explainkit.cam.methods.list_methods`, or another spelling such
        as ``grad-cam++``): a layer method such as ``gradcam`` or an input-level one such as
        ``saliency``. docs/analyzers.md lists them with their parameters.
    targets : Any
        What to explain (``None``: the predicted class); see :func:`compute`.
    raw : bool
        Return the raw maps instead: (B, h, w) signed, un-normalised, at feature resolution (a
        dict layer → map when several layers are given).
    batch_size, seed, layout
        See :func:`compute`.
    **params
        The method's own parameters (e.g. ``variant="channel_softmax"`` for Score-CAM,
        ``eigen_smooth=True``) and ``aug_smooth=True``.

    Returns
    -------
    torch.Tensor or dict of str to torch.Tensor
        (B, H, W) (volumes: (B, D, H, W)) float maps in [0, 1] at input resolution, or raw maps.

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
