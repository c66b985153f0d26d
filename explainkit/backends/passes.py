"""The shared model pass of a batch: one forward (and one backward) for every analyzer together.

Analyzers declare what they need (:meth:`~explainkit.analyzers.base.Analyzer.pass_request`): layer
outputs, their gradients, the input gradient, for the predicted class or the label. The runner
merges the requests per target and runs, per batch and target, one forward pass with the layers
hooked and, when anything is differentiated, one ``torch.autograd.grad`` of the summed target
logits. Input gradients need the whole graph (the parameters are frozen meanwhile, so nothing
that only parameter gradients need is computed or kept); layer gradients alone start the graph at
the first layer whose gradient some analyzer asked for, so the layers below cost no more than
inference (layers recorded without a gradient never extend the graph). The first target's
forward pass is also the batch's plain forward pass (its output is what every analyzer sees).

Rows go through in chunks of ``rows`` so that the autograd graph of a large model never holds
more than ``rows`` images; on CUDA the inputs are channels-last and the forward may run under
autocast, while logits, scores and recorded tensors are float32.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from explainkit.adapters.layers import resolve_layers
from explainkit.adapters.targets import map_output, select_logits
from explainkit.analyzers.base import PASS_TARGETS, PassRequest, PassResult
from explainkit.device import autocast, release_host_memory
from explainkit.errors import ConfigError
from explainkit.hooks import capture_layers, frozen_parameters
from explainkit.loading.handle import ModelHandle

__all__ = ["merge_requests", "rows_per_pass", "run_passes"]

#: Bytes a model pass over one chunk of rows may take on the CPU (the chunk size follows from it).
PASS_MEMORY_BYTES = 256 * 2**20
#: Rough activation bytes per input byte of one image in a forward pass without / with autograd
#: (measured on ResNet-50 at 224 px: about 25 MB and 110 MB per image).
ACTIVATION_FACTOR = {False: 40, True: 200}


def merge_requests(requests: Sequence[PassRequest | None]) -> dict[str, PassRequest]:
    """Requests merged per target, the predicted class first."""
    merged: dict[str, PassRequest] = {}
    for r in requests:
        if r is not None:
            merged[r.target] = merged[r.target].union(r) if r.target in merged else r
    return {t: merged[t] for t in PASS_TARGETS if t in merged}


def rows_per_pass(batch_size: int, input_shape: Sequence[int], device: torch.device, *, gradients: bool) -> int:
    """Rows per model pass: the batch on accelerators; on the CPU as many as fit :data:`PASS_MEMORY_BYTES`.

    Parameters
    ----------
    batch_size : int
        The run's batch size (the most rows).
    input_shape : sequence of int
        (C, H, W) of one input.
    device : torch.device
        Where the model runs.
    gradients : bool
        Whether the pass keeps an autograd graph.
    """
    if device.type != "cpu":
        return int(batch_size)
    per_row = 4 * math.prod(int(s) for s in input_shape) * ACTIVATION_FACTOR[gradients]
    return max(1, min(int(batch_size), PASS_MEMORY_BYTES // max(1, per_row)))


def _chunks(total: int, rows: int) -> Iterator[slice]:
    for start in range(0, total, max(1, rows)):
        yield slice(start, min(total, start + max(1, rows)))


def _classes(logits: torch.Tensor, target: str, labels: torch.Tensor | None) -> torch.Tensor:
    predicted = logits.detach().argmax(1)
    if target == "label" and labels is not None:
        lab = labels.to(predicted.device)
        return torch.where(lab >= 0, lab, predicted)
    return predicted


def _one(handle: ModelHandle, x: torch.Tensor, req: PassRequest, labels: torch.Tensor | None,
         modules: Mapping[str, torch.nn.Module], amp: str | None) -> tuple[Any, PassResult]:
    """One chunk of one target: output and what the request asked for (rows beyond ``len(x)`` dropped).

    Every recorded output is passed on as a clone, so in-place operations after a layer cannot change
    what was recorded. Without an input gradient the graph starts at the first layer whose gradient is
    asked for (layers recorded without one are captured apart, detached).
    """
    module = handle.module
    # a fixed-batch program pads the batch: its layers see the padding rows last
    rows = slice(None) if handle.static_batch is None else slice(0, x.shape[0])
    plain = {name: m for name, m in modules.items() if name not in req.gradients or req.input_gradient}
    graded = {name: m for name, m in modules.items() if name not in plain}
    with contextlib.ExitStack() as stack:
        if req.needs_backward:
            stack.enter_context(frozen_parameters(module))
        leaf = x.detach().requires_grad_(True) if req.input_gradient else x
        stack.enter_context(torch.enable_grad() if req.input_gradient else torch.no_grad())
        kept = stack.enter_context(capture_layers(module, plain, detach=not req.input_gradient, clone=True)) \
            if plain else None
        cut = stack.enter_context(capture_layers(module, graded, grad_from_layers=True)) if graded else None
        with autocast(x.device, amp):
            output = handle.forward(leaf)
        logits = select_logits(output).float()
        classes = _classes(logits, req.target, labels)
        outs = {name: (cut if name in graded else kept)[name] for name in req.layers}  # type: ignore[index]
        grads: dict[str, torch.Tensor] = {}
        input_grad = None
        if req.needs_backward:
            score = logits.gather(1, classes[:, None]).sum()
            wrt = ([leaf] if req.input_gradient else []) + [outs[name] for name in req.gradients]
            if not score.requires_grad:
                raise ConfigError(f"the model's output does not depend on layer(s) {', '.join(req.gradients)}; "
                                  "pick layers the output is computed from")
            got = [torch.zeros_like(t) if g is None else g
                   for t, g in zip(wrt, torch.autograd.grad(score, wrt, allow_unused=True))]
            input_grad = got.pop(0).float() if req.input_gradient else None
            grads = {name: g.detach()[rows].float() for name, g in zip(req.gradients, got)}
    result = PassResult(classes, {name: o.detach()[rows].float() for name, o in outs.items()}, grads, input_grad)
    return map_output(torch.Tensor.detach, output), result


def run_passes(handle: ModelHandle, inputs: torch.Tensor, requests: Mapping[str, PassRequest],
               labels: torch.Tensor | None = None, *, rows: int | None = None,
               amp: str | None = None) -> tuple[Any, dict[str, PassResult]]:
    """The batch output and the shared pass of every target.

    Parameters
    ----------
    handle : ModelHandle
        The model (in eval mode).
    inputs : torch.Tensor
        (B, C, H, W) preprocessed inputs on the model's device.
    requests : mapping of str to PassRequest
        Merged requests per target (:func:`merge_requests`); may be empty.
    labels : torch.Tensor, optional
        (B,) labels in the model's output indices (-1 unknown), for the ``label`` target.
    rows : int, optional
        Rows per forward pass (default: all at once).
    amp : str, optional
        Autocast dtype on CUDA (:data:`AUTOCAST_DTYPES`).

    Returns
    -------
    output : Any
        The model output for ``inputs`` (detached; from the first target's pass).
    passes : dict of str to PassResult
        Per target, what was recorded.
    """
    b = inputs.shape[0]
    step = rows or b
    module = handle.module
    if labels is not None:
        labels = labels.to(inputs.device, non_blocking=True)  # once per batch, not per chunk
    outputs: list[Any] = []
    if not requests:
        for s in _chunks(b, step):
            with torch.no_grad(), autocast(inputs.device, amp):
                outputs.append(handle.forward(inputs[s]))
        return _cat(outputs), {}
    passes: dict[str, PassResult] = {}
    for n, (target, req) in enumerate(requests.items()):
        modules = dict(resolve_layers(module, list(req.layers))) if req.layers else {}
        parts = []
        for s in _chunks(b, step):
            out, part = _one(handle, inputs[s], req, None if labels is None else labels[s], modules, amp)
            if n == 0:
                outputs.append(out)
            parts.append(part)
            if inputs.device.type == "cpu":
                release_host_memory()  # the chunk's freed graph, before the next chunk allocates its own
        passes[target] = _cat_results(parts)
    return _cat(outputs), passes


def _cat_results(parts: list[PassResult]) -> PassResult:
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    return PassResult(
        torch.cat([p.classes for p in parts]),
        {k: torch.cat([p.activations[k] for p in parts]) for k in first.activations},
        {k: torch.cat([p.gradients[k] for p in parts]) for k in first.gradients},
        None if first.input_gradient is None else torch.cat([p.input_gradient for p in parts]),  # type: ignore[misc]
    )


def _cat(outputs: list[Any]) -> Any:
    """Concatenate chunk outputs along the batch axis (tensors, tuples, lists, dicts of them)."""
    if len(outputs) == 1:
        return outputs[0]
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs) if first.dim() else first
    if isinstance(first, tuple | list):
        return type(first)(_cat([o[i] for o in outputs]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _cat([o[k] for o in outputs]) for k in first}
    return first

