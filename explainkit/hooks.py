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
    "ENTRY_SEP", "LayerCapture", "capture_layers", "edit_outputs", "eval_mode", "frozen_parameters", "hook_count",
    "split_entry", "tensor_mapping",
]

#: Separates a layer from the entry of its output to record: ``"encoder:feat"`` (a mapping key),
#: ``"lstm:0"`` (a tuple / list position), ``"block:hidden"`` (a namedtuple field).
ENTRY_SEP = ":"


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


def split_entry(name: str) -> tuple[str, str | None]:
    """``"layer:key"`` → ``("layer", "key")``; a name without an entry → ``(name, None)``."""
    layer, sep, key = name.partition(ENTRY_SEP)
    return (layer, key) if sep else (name, None)


def _choices(output: Any) -> list[str]:
    """The entries a layer output offers to an entry selector."""
    if isinstance(output, Mapping):
        return [str(k) for k in output]
    if isinstance(output, tuple) and hasattr(output, "_fields"):
        return list(output._fields)
    if isinstance(output, tuple | list):
        return [str(i) for i in range(len(output))]
    return []


def _describe(output: Any) -> str:
    kind = type(output).__name__
    choices = _choices(output)
    if not choices:
        return kind
    what = "keys" if isinstance(output, Mapping) else ("fields" if hasattr(output, "_fields") else "entries")
    return f"a {kind} with {what} {', '.join(choices)}"


def _position(output: Any, key: str) -> Any:
    """Where ``key`` sits in ``output`` (mapping key, or index into a tuple / list / namedtuple); None if absent."""
    if isinstance(output, Mapping):
        return key if key in output else next((k for k in output if str(k) == key), None)
    if isinstance(output, tuple | list):
        if hasattr(output, "_fields") and key in output._fields:
            return output._fields.index(key)
        if key.lstrip("-").isdigit() and -len(output) <= int(key) < len(output):
            return int(key) % len(output)
    return None


def _pick(name: str, output: Any, key: str) -> tuple[Any, Any]:
    """The entry ``key`` of a structured output and its position (ConfigError naming the choices)."""
    where = _position(output, key)
    if where is None:
        layer = split_entry(name)[0]
        raise ConfigError(f"layer {layer!r} returns {_describe(output)}; {key!r} is not one of them "
                          f"(pick one as '{layer}{ENTRY_SEP}ENTRY')")
    return output[where], where


def _put(output: Any, where: Any, value: Any) -> Any:
    """``output`` with the entry at ``where`` replaced by ``value`` (same container type)."""
    if isinstance(output, Mapping):
        return type(output)((k, value if k == where else v) for k, v in output.items())
    items = [value if i == where else v for i, v in enumerate(output)]
    if hasattr(output, "_fields"):
        return type(output)(*items)
    return type(output)(items)


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
        Dotted name → submodule (see :func:`explainkit.adapters.resolve_layers`). A name
        ``"layer:key"`` (:data:`ENTRY_SEP`) records one entry of a layer that returns a mapping, a
        tuple / list or a namedtuple: the mapping key, the position or the field ``key``; everything
        below (transforms, edits, gradients, clones) applies to that entry, and the rest of the
        output passes on unchanged. A structured output without an entry raises an error that
        names the entries to pick from.
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
        key = split_entry(name)[1]

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            whole, where = output, None
            if key is not None:
                output, where = _pick(name, whole, key)
            if not isinstance(output, torch.Tensor) and not (mappings and tensor_mapping(output)):
                if not tensors_only:
                    return None
                what = "a tensor or a mapping of tensors" if mappings else "a tensor"
                hint = (f"pick one entry as '{name}{ENTRY_SEP}{_choices(output)[0]}'" if _choices(output)
                        else "pick a layer with a tensor output")
                raise ConfigError(f"layer {name!r} returns {_describe(output)}, not {what}; {hint}")
            replaced = None
            if edit is not None:
                output = replaced = edit(name, output)
            value = output
            if grad_from_layers and not capture._grad_started:
                value = _entries(output, lambda t: t.detach().requires_grad_(True))
                capture._grad_started = True
                torch.set_grad_enabled(True)
            if grad_from_layers or clone:
                if where is not None and value is output:  # the entry as a node of its own: entries the layer
                    value = _entries(value, torch.clone)   # computed from it stay out of its gradient
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
            return replaced if replaced is None or where is None else _put(whole, where, replaced)

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
