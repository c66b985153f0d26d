"""Targets: what scalar per image an explanation explains.

A target is a small callable ``target(output) -> (B,) tensor`` over the raw model output (tensor,
tuple, list or dict). Exactly one score per image is required and checked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from explainkit.errors import ConfigError

__all__ = [
    "ClassLogit",
    "OutputFunction",
    "PredictedClass",
    "SoftmaxProbability",
    "Target",
    "as_target",
    "check_logits",
    "map_output",
    "select_logits",
]

_DICT_KEYS = ("logits", "out", "output", "scores")


def map_output(fn: Callable[[torch.Tensor], torch.Tensor], output: Any) -> Any:
    """``fn`` applied to every tensor of a model output (tensors, tuples, lists and dicts of them).

    Other values are returned unchanged; containers keep their type and keys.
    """
    if isinstance(output, torch.Tensor):
        return fn(output)
    if isinstance(output, tuple | list):
        return type(output)(map_output(fn, o) for o in output)
    if isinstance(output, dict):
        return {k: map_output(fn, v) for k, v in output.items()}
    return output


def _pick_tensor(output: Any, key: str | int | None = None) -> torch.Tensor:
    """The tensor holding the logits, before any reshaping (see :func:`select_logits`)."""
    if key is not None:
        try:
            output = output[key]
        except (KeyError, IndexError, TypeError):
            raise ConfigError(f"model output has no entry {key!r}") from None
    if isinstance(output, dict):
        found = next((output[k] for k in _DICT_KEYS if isinstance(output.get(k), torch.Tensor)), None)
        tensors = [v for v in output.values() if isinstance(v, torch.Tensor)]
        if found is None and len(tensors) == 1:
            found = tensors[0]
        if found is None:
            raise ConfigError(f"cannot tell which output is the logits among keys {sorted(map(str, output))}; "
                              "pass --output-key KEY (Python: output_key=)")
        return found
    picked = next((o for o in output if isinstance(o, torch.Tensor)), None) if isinstance(output, tuple | list) \
        else output
    if not isinstance(picked, torch.Tensor):
        raise ConfigError(f"model output ({type(output).__name__}) holds no tensor")
    return picked


def select_logits(output: Any, key: str | int | None = None) -> torch.Tensor:
    """Pick the (B, K) logit tensor from a model output.

    Parameters
    ----------
    output : Tensor, tuple, list or dict
        What the model returned.
    key : str or int, optional
        Dict key or sequence index; by default the tensor itself, the first tensor of a sequence,
        or the first of ``logits``/``out``/``output``/``scores`` (else the only tensor) in a dict.

    Returns
    -------
    torch.Tensor
        (B, K) logits (a (B,) output is read as one logit per image).

    Raises
    ------
    ConfigError
        No suitable tensor.
    """
    output = _pick_tensor(output, key)
    if output.dim() == 1:
        output = output[:, None]
    if output.dim() != 2:
        raise ConfigError(f"expected (B, K) logits, got shape {tuple(output.shape)}; pass a target function")
    return output


def check_logits(output: Any, batch: int, n_classes: int | None = None, classes: str = "class names",
                 at_least: bool = False) -> torch.Tensor:
    """Validate a model's output for a batch of ``batch`` images; return its (B, K) logits.

    Parameters
    ----------
    output : Any
        What the model returned (tensor, or a dict / tuple holding the logits, see
        :func:`select_logits`).
    batch : int
        B, the number of images the model was given.
    n_classes : int, optional
        How many outputs per image are expected (the model's class names), or at least expected
        (``at_least``: the probe set's classes, matched by position).
    classes : str
        What ``n_classes`` counts, for the message.
    at_least : bool
        Only require ``K >= n_classes``.

    Returns
    -------
    torch.Tensor
        (B, K) floating-point logits.

    Raises
    ------
    ConfigError
        No tensor, a shape other than (B, K) or (B,), a non-floating dtype, or a K that does not
        fit ``n_classes``.
    """
    t = _pick_tensor(output)
    shape = tuple(t.shape)
    if t.dim() not in (1, 2) or shape[0] != batch:
        raise ConfigError(f"model output shape {shape} for a batch of {batch} images; expected ({batch}, K)")
    if not t.is_floating_point():
        raise ConfigError(f"model output dtype {str(t.dtype).replace('torch.', '')} for a batch of {batch} images; "
                          "expected floating-point logits")
    logits = t if t.dim() == 2 else t[:, None]
    k = logits.shape[1]
    if n_classes is not None and (k < n_classes if at_least else k != n_classes):
        raise ConfigError(f"model output shape {shape}: {k} outputs per image for {n_classes} {classes}")
    return logits


class Target:
    """Base class: subclasses implement ``scores(output) -> (B,)``."""

    output_key: str | int | None = None

    def scores(self, output: Any) -> torch.Tensor:  # pragma: no cover - abstract
        """Per-image scalar to explain, shape (B,)."""
        raise NotImplementedError

    def classes(self, output: Any) -> torch.Tensor | None:
        """The explained class per image (B,), or ``None`` when the target is not a class."""
        return None

    def __call__(self, output: Any) -> torch.Tensor:
        """Compute and validate the (B,) scores."""
        scores = self.scores(output)
        batch = select_batch_size(output)
        if scores.dim() != 1 or (batch is not None and scores.shape[0] != batch):
            raise ConfigError(
                f"a target must give exactly one score per image: got shape {tuple(scores.shape)} "
                f"for a batch of {batch}"
            )
        return scores


def select_batch_size(output: Any) -> int | None:
    """Batch size of the first tensor in an output structure."""
    if isinstance(output, torch.Tensor):
        return int(output.shape[0])
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, tuple | list):
        for o in output:
            b = select_batch_size(o)
            if b is not None:
                return b
    return None


class ClassLogit(Target):
    """Logit of a given class: one index for all images, or one per image.

    Parameters
    ----------
    classes : int or sequence of int or Tensor
        Class index (broadcast) or (B,) indices.
    output_key : str or int, optional
        Which entry of a tuple/dict output holds the logits.
    """

    def __init__(self, classes: int | Sequence[int] | torch.Tensor, output_key: str | int | None = None) -> None:
        self.class_index = classes
        self.output_key = output_key

    def classes(self, output: Any) -> torch.Tensor:
        """(B,) class indices, validated against the number of images and logits."""
        logits = select_logits(output, self.output_key)
        idx = torch.as_tensor(self.class_index, dtype=torch.long, device=logits.device)
        if idx.dim() == 0:
            idx = idx.expand(logits.shape[0])
        if idx.shape != (logits.shape[0],):
            raise ConfigError(
                f"got {idx.numel()} target classes for {logits.shape[0]} images; give one per image or one for all"
            )
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= logits.shape[1]):
            raise ConfigError(f"target class out of range for a model with {logits.shape[1]} outputs")
        return idx

    def scores(self, output: Any) -> torch.Tensor:
        """(B,) logits of the chosen classes."""
        logits = select_logits(output, self.output_key)
        return logits.gather(1, self.classes(output)[:, None])[:, 0]


class PredictedClass(ClassLogit):
    """Logit of each image's top-scoring class."""

    def __init__(self, output_key: str | int | None = None) -> None:
        super().__init__(0, output_key)

    def classes(self, output: Any) -> torch.Tensor:
        """(B,) argmax class per image."""
        return select_logits(output, self.output_key).detach().argmax(1)


class SoftmaxProbability(Target):
    """Softmax probability of a class (default: the predicted class).

    Parameters
    ----------
    classes : int, sequence of int, Tensor or None
        As :class:`ClassLogit`; ``None`` means the predicted class.
    output_key : str or int, optional
        Which entry holds the logits.
    """

    def __init__(self, classes: int | Sequence[int] | torch.Tensor | None = None,
                 output_key: str | int | None = None) -> None:
        self.class_index = classes
        self.output_key = output_key

    def classes(self, output: Any) -> torch.Tensor:
        """(B,) explained classes."""
        if self.class_index is None:
            return PredictedClass(self.output_key).classes(output)
        return ClassLogit(self.class_index, self.output_key).classes(output)

    def scores(self, output: Any) -> torch.Tensor:
        """(B,) probabilities."""
        probs = torch.softmax(select_logits(output, self.output_key), dim=1)
        return probs.gather(1, self.classes(output)[:, None])[:, 0]


class OutputFunction(Target):
    """Any function of the model output that returns one score per image.

    Parameters
    ----------
    fn : callable
        ``fn(output) -> (B,) tensor``.
    """

    def __init__(self, fn: Callable[[Any], torch.Tensor]) -> None:
        self.fn = fn

    def scores(self, output: Any) -> torch.Tensor:
        """(B,) scores from ``fn``."""
        out = self.fn(output)
        if not isinstance(out, torch.Tensor):
            raise ConfigError(f"target function returned {type(out).__name__}, not a tensor")
        return out


def as_target(spec: Any) -> Target:
    """Turn a user's target spec into a :class:`Target`.

    Parameters
    ----------
    spec : None, int, sequence of int, Tensor, Target or callable
        ``None``: predicted class; int: that class for every image; a sequence/tensor: one class per
        image; a :class:`Target`; or a function of the output returning (B,) scores.

    Returns
    -------
    Target
        The target.
    """
    if spec is None:
        return PredictedClass()
    if isinstance(spec, Target):
        return spec
    if isinstance(spec, bool):
        raise ConfigError("a target cannot be a boolean")
    if isinstance(spec, int | torch.Tensor) or (
        isinstance(spec, Sequence) and not isinstance(spec, str) and all(isinstance(v, int) for v in spec)
    ):
        return ClassLogit(spec)
    if callable(spec):
        return OutputFunction(spec)
    raise ConfigError(f"cannot use {spec!r} as a target (class index, list of indices, or a function)")
