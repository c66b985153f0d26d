"""Run the model once, record layer activations and their gradients, score perturbed copies.

Gradients come from :func:`torch.autograd.grad` with respect to the hooked layer outputs only:
the forward runs under ``torch.no_grad()`` until the first target layer, where
:func:`explainkit.hooks.capture_layers` (``grad_from_layers=True``) starts the autograd graph. The
layers below the target therefore cost no more than inference, the backward stops at the target
layer, no parameter ``.grad`` is ever written, and training flags are restored afterwards
(:func:`explainkit.hooks.eval_mode`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from explainkit.adapters import (
    ClassLogit,
    SoftmaxProbability,
    SpatialLayout,
    Target,
    as_target,
    default_layer,
    infer_layout,
    map_output,
    resolve_layers,
    select_logits,
    token_hints,
)
from explainkit.device import autocast
from explainkit.errors import CapabilityError, ConfigError
from explainkit.hooks import capture_layers, eval_mode
from explainkit.loading.handle import ModelHandle
from explainkit.loading.loaders import wrap

__all__ = ["BoundTarget", "CamRun", "LayerData", "as_handle", "chunks"]

#: ``edit(name, output) -> output`` hook for interventions on a layer (see ``capture_layers``).
Edit = Callable[[str, torch.Tensor], torch.Tensor]


def as_handle(model: nn.Module | ModelHandle) -> ModelHandle:
    """A :class:`ModelHandle` for a module or handle (modules are wrapped, not copied)."""
    return model if isinstance(model, ModelHandle) else wrap(model)


def chunks(total: int, size: int) -> Iterator[torch.Tensor]:
    """Consecutive (n,) int64 index tensors covering ``range(total)`` in pieces of ``size``."""
    if size < 1:
        raise ConfigError("batch_size must be at least 1")
    for start in range(0, total, size):
        yield torch.arange(start, min(total, start + size))


class BoundTarget:
    """A target whose class is frozen after the clean pass, scorable on perturbed copies.

    ``PredictedClass`` would re-pick the argmax on every masked or noisy copy; binding keeps the
    class explained on the clean image, so a copy of image ``b`` is scored on ``classes[b]``.

    Parameters
    ----------
    target : Target
        The user's target.
    classes : torch.Tensor or None
        (B,) explained class per image, or ``None`` for non-class targets.
    """

    def __init__(self, target: Target, classes: torch.Tensor | None) -> None:
        self.target = target
        self.classes = classes

    @classmethod
    def from_output(cls, target: Target, output: Any) -> BoundTarget:
        """Bind ``target`` to the classes it picks on the clean ``output``."""
        classes = target.classes(output)
        return cls(target, None if classes is None else classes.detach())

    def __call__(self, output: Any, rows: torch.Tensor) -> torch.Tensor:
        """(n,) target scores of outputs whose row ``j`` comes from clean image ``rows[j]``."""
        if self.classes is None:
            return self.target(output)
        cls = self.classes[rows.to(self.classes.device)]
        key = self.target.output_key
        if isinstance(self.target, SoftmaxProbability):
            return SoftmaxProbability(cls, key)(output)
        if isinstance(self.target, ClassLogit):
            return ClassLogit(cls, key)(output)
        return self.target(output)

    def probability(self, output: Any, rows: torch.Tensor) -> torch.Tensor:
        """(n,) softmax probability of the bound class (the target itself for non-class targets)."""
        if self.classes is None:
            return self(output, rows)
        logits = select_logits(output, self.target.output_key)
        cls = self.classes[rows.to(self.classes.device)].to(logits.device)
        return torch.softmax(logits.float(), dim=1).gather(1, cls[:, None])[:, 0]


@dataclass
class LayerData:
    """What the clean pass recorded at one layer, read as (B, K, h, w) maps.

    Attributes
    ----------
    name : str
        Dotted layer name.
    layout : SpatialLayout
        How the raw output was turned into channels-first maps.
    activation : torch.Tensor
        (B, K, h, w) activations.
    gradient : torch.Tensor or None
        (B, K, h, w) gradient of the summed target scores (None when not computed).
    channel_axis : int
        Axis of the channels in the layer's own output (1 for NCHW, -1 for NHWC / tokens).
    """

    name: str
    layout: SpatialLayout
    activation: torch.Tensor
    gradient: torch.Tensor | None
    channel_axis: int


@dataclass
class CamRun:
    """One explanation call: model, inputs, bound target and the recorded clean pass.

    Use :meth:`create`; then :meth:`record` once, then methods read :attr:`layers` and may call
    :meth:`capture` (noisy copies) or :meth:`scores` (perturbed copies, chunked, no grad).

    Attributes
    ----------
    handle : ModelHandle
        The model.
    inputs : torch.Tensor
        (B, C, H, W) inputs on the model's device.
    target : Target
        The user's target.
    layer_names : list of str
        Canonical names of the target layers (empty for input-level methods only).
    batch_size : int
        Rows per forward pass for perturbed copies.
    seed : int
        Seed of every random draw.
    layers : dict of str to LayerData
        Filled by :meth:`record`.
    bound : BoundTarget or None
        Filled by :meth:`record`.
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
    bound: BoundTarget | None = None
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
    ) -> CamRun:
        """Validate the call and resolve layers (no model pass yet).

        Parameters
        ----------
        model : torch.nn.Module or ModelHandle
            The model.
        inputs : torch.Tensor
            (B, C, H, W) preprocessed inputs.
        layer : str, sequence of str or None
            Target layer(s); ``None`` picks :func:`explainkit.adapters.default_layer`.
        targets : Any
            Anything :func:`explainkit.adapters.as_target` accepts (``None``: predicted class).
        needs_layers : bool
            Whether any requested method reads layer activations.
        batch_size : int
            Rows per forward pass for perturbed copies.
        seed : int
            Seed for noise.
        layout : str or SpatialLayout
            How to read the layer output as a map: ``"auto"`` (NCHW, NHWC or a ViT token grid from
            :func:`explainkit.adapters.token_hints`), a forced kind, or an explicit layout.

        Returns
        -------
        CamRun
            The prepared call.
        """
        handle = as_handle(model)
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
            shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
            raise ConfigError(f"inputs must be a (B, C, H, W) tensor, got {shape}")
        if inputs.shape[0] == 0:
            raise ConfigError("inputs hold no image")
        if int(batch_size) < 1:
            raise ConfigError("batch_size must be at least 1")
        x = inputs.detach().to(handle.device(), torch.float32)
        names: list[str] = []
        if needs_layers:
            if not handle.module_hooks:
                raise CapabilityError(
                    "class-activation maps need module hooks, which this TorchScript model does not allow; "
                    "use an input-level method (saliency, integrated_gradients, smoothgrad, occlusion, gradient_shap)"
                )
            if layer is None:
                names = [default_layer(handle.module, tuple(x.shape[-2:]))]
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
        idx = torch.as_tensor(list(classes), dtype=torch.long, device=run.inputs.device)
        run.bound = BoundTarget(run.target, idx)
        return run

    def subset(self, rows: Sequence[int]) -> CamRun:
        """The same bound run restricted to some images (no layers recorded)."""
        assert self.bound is not None, "record() or for_classes() first"
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        classes = self.bound.classes
        bound = BoundTarget(self.bound.target, None if classes is None else classes[idx.to(classes.device)])
        return CamRun(handle=self.handle, inputs=self.inputs[idx.to(self.inputs.device)], target=self.target,
                      layer_names=[], batch_size=self.batch_size, seed=self.seed, layout=self.layout,
                      bound=bound, amp=self.amp)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the inputs."""
        return int(self.inputs.shape[-2]), int(self.inputs.shape[-1])

    @property
    def rows(self) -> torch.Tensor:
        """(B,) row indices of the clean batch."""
        return torch.arange(self.inputs.shape[0])

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
        self.bound = BoundTarget(self.target, classes.detach())
        self.scores0 = self.bound(output, self.rows).detach()
        modules = dict(resolve_layers(self.handle.module, self.layer_names)) if self.layer_names else {}
        self.layers = {name: self._layer_data(name, modules[name], outputs[name], gradients.get(name))
                       for name in self.layer_names}
        self.input_gradient = input_gradient

    def capture(
        self, inputs: torch.Tensor, rows: torch.Tensor, *, gradients: bool
    ) -> tuple[Any, torch.Tensor, dict[str, LayerData]]:
        """One pass over ``inputs`` recording the target layers.

        Parameters
        ----------
        inputs : torch.Tensor
            (n, C, H, W) inputs (clean or perturbed copies).
        rows : torch.Tensor
            (n,) clean image each row comes from (to score the bound class).
        gradients : bool
            Also compute d(sum of scores)/d(layer output), starting the graph at the layer.

        Returns
        -------
        output : Any
            The detached model output.
        scores : torch.Tensor
            (n,) target scores.
        layers : dict of str to LayerData
            Per layer maps.
        """
        module = self.handle.module
        modules = dict(resolve_layers(module, self.layer_names)) if self.layer_names else {}
        with eval_mode(module):
            if not modules:
                with torch.no_grad():
                    output = self.handle.forward(inputs)
                self._bind(output)
                return output, self.bound(output, rows).detach(), {}  # type: ignore[misc]
            with capture_layers(module, modules, grad_from_layers=gradients, detach=not gradients) as cap:
                with torch.no_grad():
                    output = self.handle.forward(inputs)
                self._bind(output)
                with torch.set_grad_enabled(gradients):
                    scores = self.bound(output, rows)  # type: ignore[misc]
                outs = [cap[name] for name in self.layer_names]
                grads: Sequence[torch.Tensor | None] = [None] * len(outs)
                if gradients:
                    if not scores.requires_grad:
                        raise ConfigError(
                            f"the target does not depend on layer(s) {', '.join(self.layer_names)}; "
                            "pick a layer the output is computed from"
                        )
                    grads = torch.autograd.grad(scores.sum(), outs, allow_unused=True)
        layers = {name: self._layer_data(name, modules[name], out, g)
                  for name, out, g in zip(self.layer_names, outs, grads)}
        return map_output(torch.Tensor.detach, output), scores.detach(), layers

    def _bind(self, output: Any) -> None:
        if self.bound is None:
            self.bound = BoundTarget.from_output(self.target, output)

    def _layer_data(self, name: str, module: nn.Module, out: torch.Tensor, grad: torch.Tensor | None) -> LayerData:
        layout = self._layout(name, module, out)
        act = layout.apply(out.detach()).float()
        if grad is None and out.requires_grad:
            grad = torch.zeros_like(out)
        g = None if grad is None else layout.apply(grad.detach()).float()
        return LayerData(name, layout, act, g, 1 if layout.kind == "nchw" else -1)

    def _layout(self, name: str, module: nn.Module, out: torch.Tensor) -> SpatialLayout:
        if isinstance(self.layout, SpatialLayout):
            return self.layout
        key = ("layout", name)
        if key not in self.cache:
            hints = token_hints(self.handle.module) if out.dim() == 3 else {}
            self.cache[key] = infer_layout(out, module, input_size=self.size, layout=self.layout, **hints)
        return self.cache[key]

    def scores(
        self,
        inputs: torch.Tensor,
        rows: torch.Tensor,
        *,
        probability: bool = False,
        edit: Edit | None = None,
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
            Softmax probability of the bound class instead of the target score.
        edit : callable, optional
            Intervention on the (single) target layer's output (``capture_layers(edit=...)``).
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
                modules = dict(resolve_layers(module, self.layer_names[:1]))
                with capture_layers(module, modules, detach=True, edit=edit):
                    output = self.handle.forward(inputs)
            fn = self.bound.probability if probability else self.bound
            out = fn(output, rows).float()
            return out.cpu() if cpu else out

