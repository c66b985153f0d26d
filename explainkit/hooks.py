"""The only module that registers hooks: always inside context managers that remove them.

Every hook explainkit puts on a model is registered by :func:`capture_layers` (or by
:func:`eval_mode`'s flag bookkeeping, which needs none) and removed when the ``with`` block ends,
whether it ends normally or with an exception. Exceptions are never swallowed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from explainkit.errors import ConfigError

__all__ = [
    "LayerCapture", "capture_layers", "edit_outputs", "eval_mode", "frozen_parameters", "hook_count", "tensor_mapping",
]


def hook_count(module: nn.Module) -> int:
    """Number of forward/backward hooks currently registered anywhere in ``module``."""
    total = 0
    for m in module.modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                     "_backward_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks"):
            total += len(getattr(m, attr, {}) or {})
    return total


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Switch ``module`` to eval mode and restore every submodule's training flag afterwards.

    Parameters
    ----------
    module : torch.nn.Module
        The model.

    Yields
    ------
    torch.nn.Module
        The same module, in eval mode.
    """
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags:
            m.training = flag


@contextmanager
def frozen_parameters(module: nn.Module) -> Iterator[nn.Module]:
    """Turn off ``requires_grad`` of every parameter of ``module`` and restore the flags afterwards.

    Input and activation gradients do not need parameter gradients; with the parameters frozen,
    autograd neither computes nor saves what only they would need, so a backward pass to the input
    costs less time and memory. No ``.grad`` is written either way.

    Parameters
    ----------
    module : torch.nn.Module
        The model.

    Yields
    ------
    torch.nn.Module
        The same module.
    """
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class _StopForward(Exception):
    pass


def tensor_mapping(output: Any) -> bool:
    """Whether ``output`` is a non-empty mapping of tensors (e.g. an FPN backbone's ``OrderedDict``)."""
    return isinstance(output, Mapping) and bool(output) and all(isinstance(v, torch.Tensor) for v in output.values())


def _entries(output: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """Apply ``fn`` to a tensor, or to every entry of a mapping of tensors (keeping its type)."""
    if isinstance(output, torch.Tensor):
        return fn(output)
    return type(output)((k, fn(v)) for k, v in output.items())


class LayerCapture:
    """Outputs of named layers recorded while a :func:`capture_layers` block is active.

    Attributes
    ----------
    outputs : dict of str to list of Tensor
        Per layer, one entry per call of that layer during the forward passes (usually one).
    order : list of str
        Layer names in the order their calls completed.
    """

    def __init__(self, names: list[str], stop_early: bool) -> None:
        self.names = names
        self.outputs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        self.order: list[str] = []
        self._stop_early = stop_early
        self._grad_started = False

    def __getitem__(self, name: str) -> torch.Tensor:
        """The output of layer ``name`` from its single call (error if it ran 0 or 2+ times)."""
        seen = self.outputs[name]
        if len(seen) != 1:
            raise ConfigError(
                f"layer {name!r} ran {len(seen)} times in one forward pass; pick a layer that runs once"
            )
        return seen[0]

    def forward(self, fn: Callable[[torch.Tensor], Any], inputs: torch.Tensor) -> Any:
        """Run ``fn(inputs)``; with ``stop_early`` the pass ends once every layer has fired.

        Parameters
        ----------
        fn : callable
            Usually the model or :meth:`ModelHandle.forward`.
        inputs : torch.Tensor
            (B, ...) input.

        Returns
        -------
        Any
            The model output, or ``None`` when the pass was stopped early.
        """
        try:
            return fn(inputs)
        except _StopForward:
            return None

    def _all_fired(self) -> bool:
        return all(self.outputs[n] for n in self.names)


@contextmanager
def capture_layers(
    root: nn.Module,
    layers: Mapping[str, nn.Module],
    *,
    detach: bool = False,
    transform: Callable[[torch.Tensor], torch.Tensor] | Mapping[str, Callable[[torch.Tensor], torch.Tensor]]
    | None = None,
    grad_from_layers: bool = False,
    stop_early: bool = False,
    tensors_only: bool = True,
    edit: Callable[[str, Any], Any] | None = None,
    mappings: bool = False,
    clone: bool = False,
) -> Iterator[LayerCapture]:
    """Record the outputs of ``layers`` during forward passes of ``root``.

    Parameters
    ----------
    root : torch.nn.Module
        The model the layers belong to.
    layers : mapping of str to torch.nn.Module
        Dotted name → submodule (see :func:`explainkit.adapters.resolve_layers`).
    detach : bool
        Store detached tensors (activation extraction without autograd).
    transform : callable or mapping of str to callable, optional
        Applied to each output before it is stored (e.g. spatial pooling, so that only (B, C)
        is kept instead of (B, C, H, W)). A mapping gives each layer its own transform (layers
        missing from it are stored unchanged).
    grad_from_layers : bool
        For gradient methods: call the model under ``torch.no_grad()``; the first captured layer to
        fire replaces its output by a fresh leaf that requires grad and switches gradients on for
        the rest of the pass. The graph then starts at the layer, so backward stops there and the
        layers below cost no more than an inference pass. Every captured output (the leaf and the
        later layers') is cloned before being passed on, so in-place operations downstream (e.g.
        ``ReLU(inplace=True)``) touch neither the captured values nor their gradients.
    stop_early : bool
        With :meth:`LayerCapture.forward`, end the pass as soon as every layer has fired.
    tensors_only : bool
        Raise when a layer returns something other than a tensor (else skip that call).
    edit : callable, optional
        ``edit(name, output) -> tensor``: replaces the layer's output for the rest of the pass
        (interventions such as ablating channels); the edited tensor is what gets recorded.
    mappings : bool
        Also accept layers returning a mapping of tensors (an FPN backbone's ``OrderedDict``); every
        entry is treated like a tensor output and the mapping is recorded.
    clone : bool
        Pass a clone of every captured output on (implied by ``grad_from_layers``): the recorded
        tensors keep the layer's own values and gradients even if later modules work in place.

    Yields
    ------
    LayerCapture
        The recorded outputs.
    """
    if not layers:
        raise ConfigError("no layer to capture")
    capture = LayerCapture(list(layers), stop_early)
    grad_mode = torch.is_grad_enabled()
    handles = []

    def make_hook(name: str) -> Callable[..., Any]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            if not isinstance(output, torch.Tensor) and not (mappings and tensor_mapping(output)):
                if not tensors_only:
                    return None
                what = "a tensor or a mapping of tensors" if mappings else "a tensor"
                raise ConfigError(
                    f"layer {name!r} returns {type(output).__name__}, not {what}; pick a layer with a tensor output"
                )
            replaced = None
            if edit is not None:
                output = replaced = edit(name, output)
            value = output
            if grad_from_layers and not capture._grad_started:
                value = _entries(output, lambda t: t.detach().requires_grad_(True))
                capture._grad_started = True
                torch.set_grad_enabled(True)
            if grad_from_layers or clone:
                replaced = _entries(value, torch.clone)
            if detach:
                value = _entries(value, torch.Tensor.detach)
            fn = transform.get(name) if isinstance(transform, Mapping) else transform
            if fn is not None:
                value = _entries(value, fn)
            capture.outputs[name].append(value)
            capture.order.append(name)
            if stop_early and capture._all_fired():
                raise _StopForward
            return replaced

        return hook

    try:
        for name, module in layers.items():
            handles.append(module.register_forward_hook(make_hook(name)))
        yield capture
    finally:
        for h in handles:
            h.remove()
        torch.set_grad_enabled(grad_mode)


@contextmanager
def edit_outputs(layers: Mapping[str, nn.Module], edit: Callable[[str, Any], Any]) -> Iterator[None]:
    """Replace the outputs of ``layers`` by ``edit(name, output)`` while the block is active; nothing is recorded.

    Parameters
    ----------
    layers : mapping of str to torch.nn.Module
        Name → module (a module listed under several names is edited once, under its first name).
    edit : callable
        ``edit(name, output) -> output`` (e.g. wrapping every ReLU output in a custom backward).

    Yields
    ------
    None
    """
    handles = []
    seen: set[int] = set()
    try:
        for name, module in layers.items():
            if id(module) in seen:
                continue
            seen.add(id(module))
            handles.append(module.register_forward_hook(lambda _m, _i, out, _n=name: edit(_n, out)))
        yield
    finally:
        for h in handles:
            h.remove()
