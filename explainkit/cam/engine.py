"""Run the model once, record layer activations and their gradients, score perturbed copies.

Gradients come from :func:`torch.autograd.grad` with respect to the hooked layer outputs only:
the forward runs under ``torch.no_grad()`` until the first target layer, where
:func:`explainkit.hooks.capture_layers` (``grad_from_layers=True``) starts the autograd graph. The
layers below the target therefore cost no more than inference, the backward stops at the target
layer, no parameter ``.grad`` is ever written, and training flags are restored afterwards
(:func:`explainkit.hooks.eval_mode`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from explainkit.adapters import (
    ClassLogit,
    SpatialLayout,
    Target,
    as_target,
    default_layer,
    infer_layout,
    map_output,
    resolve_layers,
    token_hints,
)
from explainkit.device import autocast
from explainkit.errors import CapabilityError, ConfigError
from explainkit.hooks import capture_layers, eval_mode, tensor_mapping
from explainkit.loading.handle import ModelHandle
from explainkit.loading.loaders import wrap

__all__ = ["CamRun", "LayerData", "as_handle", "chunks", "entry_name"]

#: ``edit(name, output) -> output`` hook for interventions on a layer (see ``capture_layers``).
Edit = Callable[[str, Any], Any]
#: Decided layouts per model, so the probe runs once per (layer, input shape): model → key → layout.
_LAYOUTS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, SpatialLayout]] = weakref.WeakKeyDictionary()


def as_handle(model: nn.Module | ModelHandle) -> ModelHandle:
    """A :class:`ModelHandle` for a module or handle (modules are wrapped, not copied)."""
    return model if isinstance(model, ModelHandle) else wrap(model)


def chunks(total: int, size: int) -> Iterator[torch.Tensor]:
    """Consecutive (n,) int64 index tensors covering ``range(total)`` in pieces of ``size``."""
    if size < 1:
        raise ConfigError("batch_size must be at least 1")
    for start in range(0, total, size):
        yield torch.arange(start, min(total, start + size))


def entry_name(layer: str, key: Any) -> str:
    """Name of one entry of a layer that returns a mapping (``backbone[pool]``); the layer itself for ``None``."""
    return layer if key is None else f"{layer}[{key}]"


@dataclass
class LayerData:
    """What one pass recorded at one layer (or one entry of a layer returning a mapping), as maps.

    Attributes
    ----------
    name : str
        Dotted layer name, with ``[key]`` for an entry of a mapping output.
    layout : SpatialLayout
        How the raw output was turned into channels-first maps.
    activation : torch.Tensor
        (B, K, *spatial) activations.
    gradient : torch.Tensor or None
        (B, K, *spatial) gradient of the summed target scores (None when not computed).
    channel_axis : int
        Axis of the channels in the layer's own output (1 for channels-first, -1 otherwise).
    module : str
        Dotted name of the module (``name`` without the entry key).
    key : Any
        Entry of the module's mapping output, or ``None``.
    hvp : torch.Tensor or None
        (B, K, *spatial) Hessian of the summed target scores times the activations (second-order
        passes only).
    """

    name: str
    layout: SpatialLayout
    activation: torch.Tensor
    gradient: torch.Tensor | None
    channel_axis: int
    module: str = ""
    key: Any = None
    hvp: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.module = self.module or self.name

    @property
    def spatial_dims(self) -> tuple[int, ...]:
        """Axes of the spatial positions in :attr:`activation` (``(2, 3)`` for images)."""
        return tuple(range(2, self.activation.dim()))


@dataclass
class CamRun:
    """One explanation call: model, inputs, bound target and the recorded clean pass.

    Use :meth:`create`; then :meth:`record` once, then methods read :attr:`layers` and may call
    :meth:`capture` (copies with gradients) or :meth:`scores` (copies, chunked, no grad).

    Attributes
    ----------
    handle : ModelHandle
        The model.
    inputs : torch.Tensor
        (B, C, H, W) inputs (or (B, C, D, H, W) volumes) on the model's device.
    target : Target
        The user's target.
    layer_names : list of str
        Canonical names of the target layers (empty for input-level methods only).
    batch_size : int
        Rows per forward pass for perturbed copies.
    seed : int
        Seed of every random draw.
    layout : str or SpatialLayout
        How layer outputs are read as maps (see :func:`explainkit.adapters.infer_layout`).
    layers : dict of str to LayerData
        Filled by :meth:`record` (a layer returning a mapping gives one entry per key).
    bound : Target or None
        The target bound on the clean output (:meth:`explainkit.adapters.Target.bind`).
    scores0 : torch.Tensor or None
        (B,) clean target scores.
    cache : dict
        Per-call cache shared by methods (e.g. noisy-gradient moments).
    input_gradient : torch.Tensor or None
        (B, C, H, W) gradient of the summed target scores with respect to the inputs, when a shared
        pass recorded it (:meth:`adopt`); input-gradient methods then reuse it.
    amp : str or None
        Autocast dtype of :meth:`scores` passes on CUDA (:data:`explainkit.device.AUTOCAST_DTYPES`).
    """

    handle: ModelHandle
    inputs: torch.Tensor
    target: Target
    layer_names: list[str]
    batch_size: int = 32
    seed: int = 0
    layout: str | SpatialLayout = "auto"
    layers: dict[str, LayerData] = field(default_factory=dict)
    bound: Target | None = None
    scores0: torch.Tensor | None = None
    output: Any = None
    cache: dict[Any, Any] = field(default_factory=dict)
    input_gradient: torch.Tensor | None = None
    amp: str | None = None

    @classmethod
    def create(
        cls,
        model: nn.Module | ModelHandle,
        inputs: torch.Tensor,
        *,
        layer: str | Sequence[str] | None,
        targets: Any,
        needs_layers: bool,
        batch_size: int = 32,
        seed: int = 0,
        layout: str | SpatialLayout = "auto",
        needs_hooks: bool = False,
    ) -> CamRun:
        """Validate the call and resolve layers (no model pass yet).

        Parameters
        ----------
        model : torch.nn.Module or ModelHandle
            The model.
        inputs : torch.Tensor
            (B, C, H, W) preprocessed images, or (B, C, D, H, W) volumes (Conv3d models).
        layer : str, sequence of str or None
            Target layer(s); ``None`` picks :func:`explainkit.adapters.default_layer`.
        targets : Any
            Anything :func:`explainkit.adapters.as_target` accepts (``None``: predicted class).
        needs_layers : bool
            Whether any requested method reads target-layer activations.
        batch_size : int
            Rows per forward pass for perturbed copies.
        seed : int
            Seed for noise.
        layout : str or SpatialLayout
            How to read the layer output as a map: ``"auto"`` (decided from evidence, see
            :func:`explainkit.adapters.infer_layout`), a forced kind, or an explicit layout.
        needs_hooks : bool
            Whether a method needs module hooks without target layers (FullGrad, Guided Backprop).

        Returns
        -------
        CamRun
            The prepared call.
        """
        handle = as_handle(model)
        if not isinstance(inputs, torch.Tensor) or inputs.dim() not in (4, 5):
            shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
            raise ConfigError(f"inputs must be a (B, C, H, W) image or (B, C, D, H, W) volume tensor, got {shape}")
        if inputs.shape[0] == 0:
            raise ConfigError("inputs hold no image")
        if int(batch_size) < 1:
            raise ConfigError("batch_size must be at least 1")
        x = inputs.detach().to(handle.device(), torch.float32)
        names: list[str] = []
        if (needs_layers or needs_hooks) and not handle.module_hooks:
            raise CapabilityError(
                "class-activation maps need module hooks, which this TorchScript model does not allow; "
                "use an input-level method (saliency, integrated_gradients, smoothgrad, occlusion, gradient_shap)"
            )
        if needs_layers:
            if layer is None:
                names = [default_layer(handle.module, tuple(x.shape[2:]), channels=int(x.shape[1]))]
            else:
                names = [layer] if isinstance(layer, str) else list(layer)
                if not names:
                    raise ConfigError("layer list is empty")
            names = list(resolve_layers(handle.module, names))
        return cls(handle=handle, inputs=x, target=as_target(targets), layer_names=names,
                   batch_size=int(batch_size), seed=int(seed), layout=layout)

    @classmethod
    def for_classes(cls, model: nn.Module | ModelHandle, inputs: torch.Tensor, classes: Sequence[int], *,
                    batch_size: int = 32, seed: int = 0) -> CamRun:
        """A run bound to given classes without a clean pass (for scoring perturbed copies).

        Parameters
        ----------
        model : torch.nn.Module or ModelHandle
            The model.
        inputs : torch.Tensor
            (B, C, H, W) inputs.
        classes : sequence of int
            (B,) class per image.
        batch_size, seed : int
            Chunk size and seed.

        Returns
        -------
        CamRun
            A run whose :meth:`scores` read the logit / probability of ``classes``.
        """
        run = cls.create(model, inputs, layer=None, targets=list(classes), needs_layers=False,
                         batch_size=batch_size, seed=seed)
        run.bound = ClassLogit.bound_to(torch.as_tensor(list(classes), dtype=torch.long))
        return run

    def subset(self, rows: Sequence[int]) -> CamRun:
        """The same bound run restricted to some images (no layers recorded)."""
        assert self.bound is not None, "record() or for_classes() first"
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        return CamRun(handle=self.handle, inputs=self.inputs[idx.to(self.inputs.device)], target=self.target,
                      layer_names=list(self.layer_names), batch_size=self.batch_size, seed=self.seed,
                      layout=self.layout, bound=self.bound.select(idx), amp=self.amp)

    @property
    def size(self) -> tuple[int, ...]:
        """Spatial size of the inputs: (H, W), or (D, H, W) for volumes."""
        return tuple(int(s) for s in self.inputs.shape[2:])

    @property
    def rows(self) -> torch.Tensor:
        """(B,) row indices of the clean batch."""
        return torch.arange(self.inputs.shape[0])

    @property
    def classes(self) -> torch.Tensor | None:
        """(B,) explained class per image (``None`` for targets that are not a class)."""
        return None if self.bound is None else self.bound.class_indices()

    def record(self, gradients: bool) -> None:
        """The clean pass: output, bound target, scores and (B, K, h, w) layer maps."""
        if gradients and not self.handle.gradients:
            raise CapabilityError("gradient-based methods need a model that supports gradients")
        self.output, self.scores0, self.layers = self.capture(self.inputs, self.rows, gradients=gradients)

    def adopt(self, output: Any, classes: torch.Tensor, outputs: dict[str, torch.Tensor],
              gradients: dict[str, torch.Tensor], input_gradient: torch.Tensor | None = None) -> None:
        """Take the clean pass from a shared pass that already ran (instead of :meth:`record`).

        Parameters
        ----------
        output : Any
            The model output of :attr:`inputs`.
        classes : torch.Tensor
            (B,) the class whose logit was differentiated (the run's target must be those classes).
        outputs : dict of str to torch.Tensor
            Raw output of every target layer.
        gradients : dict of str to torch.Tensor
            d(sum of the target logits)/d(output) per layer (missing: not computed).
        input_gradient : torch.Tensor, optional
            (B, C, H, W) d(sum of the target logits)/d(input).
        """
        self.output = output
        self.bound = ClassLogit.bound_to(classes.detach())
        self.scores0 = self.bound(output, self.rows).detach()
        modules = dict(resolve_layers(self.handle.module, self.layer_names)) if self.layer_names else {}
        self.layers = {}
        for name in self.layer_names:
            grads = dict(_entries(gradients[name])) if name in gradients else {}
            for key, out in _entries(outputs[name]):
                data = self._layer_data(name, key, modules[name], out, grads.get(key), None)
                self.layers[data.name] = data
        self.input_gradient = input_gradient

    def capture(
        self, inputs: torch.Tensor, rows: torch.Tensor, *, gradients: bool, target: Target | None = None,
        hvp: bool = False,
    ) -> tuple[Any, torch.Tensor, dict[str, LayerData]]:
        """One pass over ``inputs`` recording the target layers.

        Parameters
        ----------
        inputs : torch.Tensor
            (n, C, H, W) inputs (clean or perturbed copies).
        rows : torch.Tensor
            (n,) clean image each row comes from (passed to the target).
        gradients : bool
            Also compute d(sum of scores)/d(layer output), starting the graph at the layer.
        target : Target, optional
            A bound target to differentiate instead of the run's (e.g. Finer-CAM's contrast).
        hvp : bool
            Also compute each layer's Hessian-vector product ``H A`` (second-order backward).

        Returns
        -------
        output : Any
            The detached model output.
        scores : torch.Tensor
            (n,) target scores.
        layers : dict of str to LayerData
            Per layer (or mapping entry) maps.
        """
        module = self.handle.module
        modules = dict(resolve_layers(module, self.layer_names)) if self.layer_names else {}
        with eval_mode(module):
            if not modules:
                with torch.no_grad():
                    output = self.handle.forward(inputs)
                self._bind(output)
                return output, (target or self.bound)(output, rows).detach(), {}  # type: ignore[operator]
            with capture_layers(module, modules, grad_from_layers=gradients, detach=not gradients,
                                mappings=True) as cap:
                with torch.no_grad():
                    output = self.handle.forward(inputs)
                self._bind(output)
                with torch.set_grad_enabled(gradients):
                    scores = (target or self.bound)(output, rows)  # type: ignore[operator]
                entries = [(name, key, t) for name in self.layer_names for key, t in _entries(cap[name])]
                outs = [t for _, _, t in entries]
                grads: Sequence[torch.Tensor | None] = [None] * len(outs)
                hvps: list[torch.Tensor | None] = [None] * len(outs)
                if gradients:
                    if not scores.requires_grad:
                        raise ConfigError(
                            f"the target score does not depend on layer(s) {', '.join(self.layer_names)} for any "
                            "image (or no detection matched); pick a layer the output is computed from"
                        )
                    grads = torch.autograd.grad(scores.sum(), outs, allow_unused=True, create_graph=hvp)
                    if hvp:
                        hvps = [_hvp(g, o) for g, o in zip(grads, outs)]
        layers = {}
        for (name, key, out), g, h in zip(entries, grads, hvps):
            data = self._layer_data(name, key, modules[name], out, g, h)
            layers[data.name] = data
        return map_output(torch.Tensor.detach, output), scores.detach(), layers

    def _bind(self, output: Any) -> None:
        if self.bound is None:
            self.bound = self.target.bind(output)

    def _layer_data(self, name: str, key: Any, module: nn.Module, out: torch.Tensor, grad: torch.Tensor | None,
                    hvp: torch.Tensor | None) -> LayerData:
        layout = self._layout(name, key, module, out)
        act = layout.apply(out.detach()).float()
        if grad is None and out.requires_grad:
            grad = torch.zeros_like(out)
        g = None if grad is None else layout.apply(grad.detach()).float()
        h = None if hvp is None else layout.apply(hvp.detach()).float()
        return LayerData(entry_name(name, key), layout, act, g, layout.channel_axis, module=name, key=key, hvp=h)

    def _layout(self, name: str, key: Any, module: nn.Module, out: torch.Tensor) -> SpatialLayout:
        if isinstance(self.layout, SpatialLayout):
            return self.layout
        root = self.handle.module
        cache_key = (name, key, tuple(self.inputs.shape[1:]), tuple(out.shape[1:]), self.layout)
        known = _LAYOUTS.setdefault(root, {})
        if cache_key not in known:
            hints = token_hints(root, self.size) if out.dim() == 3 else {}
            known[cache_key] = infer_layout(
                out, module if key is None else None, input_size=self.size, layout=self.layout,
                probe=lambda: self._probe(name, key, module), name=repr(entry_name(name, key)), **hints)
        return known[cache_key]

    def _probe(self, name: str, key: Any, module: nn.Module) -> tuple[int, ...] | None:
        """Output shape of a layer (entry) for the first input with its first spatial axis doubled; None if refused."""
        x = self.inputs[:1]
        size = (2 * x.shape[2], *x.shape[3:])
        bigger = F.interpolate(x, size=size, mode="bilinear" if x.dim() == 4 else "trilinear", align_corners=False)
        try:
            with eval_mode(self.handle.module), torch.no_grad(), capture_layers(
                    self.handle.module, {name: module}, detach=True, stop_early=True, mappings=True) as cap:
                cap.forward(self.handle.forward, bigger)
            seen = cap[name]
            out = seen if key is None else seen[key]
        except Exception:  # a model that accepts one input size only gives no probe evidence
            return None
        return tuple(int(s) for s in out.shape)

    def scores(
        self,
        inputs: torch.Tensor,
        rows: torch.Tensor,
        *,
        probability: bool = False,
        edit: Edit | None = None,
        layer: str | None = None,
        cpu: bool = True,
    ) -> torch.Tensor:
        """(n,) bound-target scores of one chunk of perturbed copies, under no_grad.

        Parameters
        ----------
        inputs : torch.Tensor
            (n, C, H, W) copies.
        rows : torch.Tensor
            (n,) clean image of each copy.
        probability : bool
            Probability of the bound class (softmax; sigmoid for binary / multi-label targets)
            instead of the target score.
        edit : callable, optional
            Intervention on a target layer's output (``capture_layers(edit=...)``).
        layer : str, optional
            Module the edit applies to (default: the first target layer).
        cpu : bool
            Return the scores on the CPU (``False``: on the model's device, without a host sync).

        Returns
        -------
        torch.Tensor
            (n,) float32 scores.
        """
        assert self.bound is not None, "record() first"
        module = self.handle.module
        with eval_mode(module), torch.no_grad(), autocast(inputs.device, self.amp):
            if edit is None:
                output = self.handle.forward(inputs)
            else:
                modules = dict(resolve_layers(module, [layer or self.layer_names[0]]))
                with capture_layers(module, modules, detach=True, edit=edit, mappings=True):
                    output = self.handle.forward(inputs)
            fn = self.bound.probability if probability else self.bound
            out = fn(output, rows).float()
            return out.cpu() if cpu else out


def _entries(out: Any) -> list[tuple[Any, torch.Tensor]]:
    """``[(None, tensor)]`` for a tensor output, ``[(key, tensor), ...]`` for a mapping of tensors."""
    if tensor_mapping(out):
        return list(out.items())
    return [(None, out)]


def _hvp(grad: torch.Tensor | None, act: torch.Tensor) -> torch.Tensor:
    """``H A``: the derivative of ``<grad, A>`` (A held fixed) with respect to ``A`` (zeros if independent)."""
    if grad is None or not grad.requires_grad:
        return torch.zeros_like(act)
    (h,) = torch.autograd.grad(grad, act, grad_outputs=act.detach(), retain_graph=True, allow_unused=True)
    return torch.zeros_like(act) if h is None else h
