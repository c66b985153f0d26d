"""Targets: what scalar per image an explanation explains.

Protocol
--------
A target is called as ``target(output, rows)``. ``output`` is what the model returned for ``n`` rows
(a tensor, tuple, list or dict; a torchvision detector's list of per-image dicts) and ``rows`` is the
(n,) int64 index of the *source image* of each row: ``0 .. B-1`` on the clean pass, and for the
passes that methods add (Score-CAM's masked copies, Ablation-CAM's ablated copies, Smooth
Grad-CAM++'s noisy copies, metrics), the image each copy was made from, in chunks of any size.
The target returns (n,) scores, one per row; anything that depends on the image (a class, a mask,
reference boxes) is read at ``rows[j]``.

Life cycle: :meth:`Target.bind` is called once with the clean output and freezes what the clean
pass decides (the predicted class, the validated per-image data); :meth:`Target.select` restricts a
bound target to some images; :meth:`Target.mirrored` gives the target for horizontally mirrored
inputs (test-time augmentation); :meth:`Target.expand` lets a target turn one image into several
explanations (every positive label of a multi-label model).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch

from explainkit.errors import ConfigError

__all__ = [
    "BinaryTarget",
    "ClassLogit",
    "MultiLabelTarget",
    "OutputFunction",
    "PerImage",
    "PredictedClass",
    "ReSTScore",
    "Reindexed",
    "SoftmaxProbability",
    "Target",
    "as_target",
    "check_logits",
    "map_output",
    "output_rows",
    "pick_tensor",
    "select_logits",
    "take_rows",
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


def pick_tensor(output: Any, key: str | int | None = None, keys: Sequence[str] = _DICT_KEYS,
                what: str = "the logits") -> torch.Tensor:
    """The tensor of a model output.

    ``output[key]``, else the tensor itself, the first tensor of a sequence, or in a dict the first
    of ``keys`` (else its only tensor).

    Raises
    ------
    ConfigError
        No entry ``key``, no tensor, or a dict whose tensor cannot be told.
    """
    if key is not None:
        try:
            output = output[key]
        except (KeyError, IndexError, TypeError):
            raise ConfigError(f"model output has no entry {key!r}") from None
    if isinstance(output, dict):
        found = next((output[k] for k in keys if isinstance(output.get(k), torch.Tensor)), None)
        tensors = [v for v in output.values() if isinstance(v, torch.Tensor)]
        if found is None and len(tensors) == 1:
            found = tensors[0]
        if found is None:
            raise ConfigError(f"cannot tell which output is {what} among keys {sorted(map(str, output))}; "
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
    output = pick_tensor(output, key)
    if output.dim() == 1:
        output = output[:, None]
    if output.dim() != 2:
        raise ConfigError(f"expected (B, K) logits, got shape {tuple(output.shape)}; pass a target function")
    return output


def check_logits(output: Any, batch: int, n_classes: int | None = None, classes: str = "class names",
                 at_least: bool = False, dense: bool = False) -> torch.Tensor:
    """Validate a model's output for a batch of ``batch`` images; return its (B, K) logits.

    Parameters
    ----------
    output : Any
        What the model returned (tensor, or a dict / tuple holding the logits, see
        :func:`select_logits`; torchvision segmentation models' ``{"out": ..., "aux": ...}`` gives
        ``"out"``).
    batch : int
        B, the number of images the model was given.
    n_classes : int, optional
        How many outputs per image are expected (the model's class names), or at least expected
        (``at_least``: the probe set's classes, matched by position).
    classes : str
        What ``n_classes`` counts, for the message.
    at_least : bool
        Only require ``K >= n_classes``.
    dense : bool
        Expect (B, K, H, W) class scores per pixel (a segmentation model) instead of (B, K).

    Returns
    -------
    torch.Tensor
        (B, K) floating-point logits; (B, K, H, W) with ``dense``.

    Raises
    ------
    ConfigError
        No tensor, a shape other than (B, K) or (B,) ((B, K, H, W) with ``dense``), a non-floating
        dtype, or a K that does not fit ``n_classes``. A 4-D output where (B, K) is expected is named
        as what it is (dense scores of a segmentation model), with the way to run it.
    """
    t = pick_tensor(output)
    shape = tuple(t.shape)
    if dense and (t.dim() != 4 or shape[0] != batch):
        raise ConfigError(f"model output shape {shape} for a batch of {batch} images; a segmentation model must "
                          f"give ({batch}, K, H, W) class scores per pixel")
    if not dense and t.dim() == 4 and shape[0] == batch:
        raise ConfigError(f"model output shape {shape}: ({batch}, K, H, W) class scores per pixel, a segmentation "
                          "model: explainkit analyze reads it with a probe set of label maps (labels/<image>.png) or "
                          "--task segmentation")
    if not dense and (t.dim() not in (1, 2) or shape[0] != batch):
        raise ConfigError(f"model output shape {shape} for a batch of {batch} images; expected ({batch}, K)")
    if not t.is_floating_point():
        raise ConfigError(f"model output dtype {str(t.dtype).replace('torch.', '')} for a batch of {batch} images; "
                          "expected floating-point logits")
    logits = t if t.dim() >= 2 else t[:, None]
    k = logits.shape[1]
    if n_classes is not None and (k < n_classes if at_least else k != n_classes):
        raise ConfigError(f"model output shape {shape}: {k} outputs per {'pixel' if dense else 'image'} "
                          f"for {n_classes} {classes}")
    return logits


def _per_image_list(output: Any) -> bool:
    """A list/tuple of per-image records (a torchvision detector's list of dicts)."""
    return isinstance(output, list | tuple) and len(output) > 0 and all(isinstance(o, dict) for o in output)


def output_rows(output: Any) -> int | None:
    """Number of rows of a model output: the length of a per-image list, else the first tensor's batch size."""
    if _per_image_list(output):
        return len(output)
    if isinstance(output, torch.Tensor):
        return int(output.shape[0]) if output.dim() else None
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, tuple | list):
        for o in output:
            n = output_rows(o)
            if n is not None:
                return n
    return None


def take_rows(output: Any, idx: torch.Tensor | Sequence[int]) -> Any:
    """The rows ``idx`` of a model output, keeping its structure (tensors, dicts, per-image lists)."""
    if _per_image_list(output):
        return [output[int(i)] for i in idx]
    if isinstance(output, torch.Tensor):
        return output[torch.as_tensor(idx, dtype=torch.long, device=output.device)] if output.dim() else output
    if isinstance(output, dict):
        return type(output)((k, take_rows(v, idx)) for k, v in output.items())
    if isinstance(output, tuple | list):
        return type(output)(take_rows(o, idx) for o in output)
    return output


def _rows(rows: torch.Tensor | Sequence[int] | None, output: Any) -> torch.Tensor:
    if rows is None:
        n = output_rows(output)
        if n is None:
            raise ConfigError("cannot tell how many images the model output holds; pass rows=")
        return torch.arange(n)
    return torch.as_tensor(rows, dtype=torch.long).reshape(-1)


def _per_image(values: torch.Tensor, rows: torch.Tensor, what: str) -> torch.Tensor:
    """``values[rows]`` for per-image (B, ...) values; a 0-d value is shared by every image."""
    if values.dim() == 0:
        return values.expand(rows.shape[0])
    rows = rows.to(values.device)
    if rows.numel() and int(rows.max()) >= values.shape[0]:
        raise ConfigError(f"got {values.shape[0]} {what} for images up to index {int(rows.max())}")
    return values[rows]


class Target:
    """Base class of targets; subclasses implement ``scores(output, rows) -> (n,)``.

    Attributes
    ----------
    output_key : str, int or None
        Which entry of a tuple/dict output holds the scores (None: picked automatically).
    """

    output_key: str | int | None = None

    def scores(self, output: Any, rows: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """(n,) scores of the ``n`` rows of ``output``, row ``j`` a copy of image ``rows[j]``."""
        raise NotImplementedError

    def __call__(self, output: Any, rows: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
        """Compute and validate the (n,) scores.

        Parameters
        ----------
        output : Any
            The model output for ``n`` rows.
        rows : torch.Tensor or sequence of int, optional
            (n,) source image of each row; default ``0 .. n-1``.

        Returns
        -------
        torch.Tensor
            (n,) scores.
        """
        idx = _rows(rows, output)
        scores = self.scores(output, idx)
        if not isinstance(scores, torch.Tensor) or scores.dim() != 1 or scores.shape[0] != idx.shape[0]:
            shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ConfigError(
                f"a target must give exactly one score per image: got shape {shape} for a batch of {idx.shape[0]}"
            )
        return scores

    def bind(self, output: Any) -> Target:
        """The target frozen on the clean ``output`` of images ``0 .. B-1`` (validates per-image data)."""
        return self

    def class_indices(self) -> torch.Tensor | None:
        """(B,) explained class per image of a bound class target, else ``None``."""
        return None

    def classes(self, output: Any) -> torch.Tensor | None:
        """The explained class per image (B,) on the clean ``output``, or ``None`` when not a class."""
        return self.bind(output).class_indices()

    def probability(self, output: Any, rows: torch.Tensor) -> torch.Tensor:
        """(n,) probability of the explained class (softmax or sigmoid); the score for other targets."""
        return self(output, rows)

    def select(self, images: torch.Tensor | Sequence[int]) -> Target:
        """A bound target for a batch whose image ``i`` is this target's image ``images[i]``."""
        return Reindexed(self, images)

    def mirrored(self, width: int) -> Target:
        """The target for the same images mirrored left-right (``width`` pixels wide); default: unchanged."""
        return self

    def expand(self, output: Any) -> tuple[torch.Tensor, Target] | None:
        """Several explanations per image (``None``, the default: one per image).

        Returns ``(images, target)``: the (P,) source image of each explanation and a target over
        the P explanations (bound by the caller on their output).
        """
        return None


class Reindexed(Target):
    """A bound target restricted or repeated: image ``i`` of the new batch is image ``images[i]``.

    Parameters
    ----------
    target : Target
        A bound target.
    images : torch.Tensor or sequence of int
        (B',) image of ``target`` for each new image.
    """

    def __init__(self, target: Target, images: torch.Tensor | Sequence[int]) -> None:
        self.target = target
        self.images = torch.as_tensor(images, dtype=torch.long).reshape(-1).cpu()
        self.output_key = target.output_key

    def scores(self, output: Any, rows: torch.Tensor) -> torch.Tensor:
        """Scores of the underlying target at the original images."""
        return self.target.scores(output, self.images[rows.cpu()])

    def class_indices(self) -> torch.Tensor | None:
        """The underlying classes at the selected images."""
        cls = self.target.class_indices()
        return None if cls is None else cls[self.images.to(cls.device)]

    def probability(self, output: Any, rows: torch.Tensor) -> torch.Tensor:
        """The underlying probabilities at the original images."""
        return self.target.probability(output, self.images[torch.as_tensor(rows).cpu()])

    def select(self, images: torch.Tensor | Sequence[int]) -> Target:
        """Compose the two selections."""
        return Reindexed(self.target, self.images[torch.as_tensor(images, dtype=torch.long).cpu()])

    def mirrored(self, width: int) -> Target:
        """Mirror the underlying target."""
        return Reindexed(self.target.mirrored(width), self.images)


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
        self._bound: torch.Tensor | None = None

    @staticmethod
    def bound_to(classes: torch.Tensor | Sequence[int], output_key: str | int | None = None) -> ClassLogit:
        """A class-logit target already bound to (B,) classes (no clean output needed)."""
        target = ClassLogit(classes, output_key)
        target._bound = torch.as_tensor(classes, dtype=torch.long).reshape(-1)
        return target

    def _spec(self) -> torch.Tensor:
        if self._bound is not None:
            return self._bound
        try:
            return torch.as_tensor(self.class_index, dtype=torch.long)
        except (TypeError, ValueError, RuntimeError):
            raise ConfigError(f"target classes must be integers, not {self.class_index!r}") from None

    def _indices(self, logits: torch.Tensor, rows: torch.Tensor, exact: bool) -> torch.Tensor:
        spec = self._spec().to(logits.device)
        if spec.dim() > 1 or (exact and spec.dim() == 1 and spec.shape[0] != rows.shape[0]):
            raise ConfigError(
                f"got {spec.numel()} target classes for {rows.shape[0]} images; give one per image or one for all"
            )
        idx = _per_image(spec, rows, "target classes")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= logits.shape[1]):
            raise ConfigError(f"target class out of range for a model with {logits.shape[1]} outputs")
        return idx

    def bind(self, output: Any) -> ClassLogit:
        """Validate the classes against the clean batch; the copy stores (B,) indices."""
        logits = select_logits(output, self.output_key)
        bound = type(self).__new__(type(self))
        bound.__dict__.update(self.__dict__)
        bound._bound = self._indices(logits, torch.arange(logits.shape[0]), exact=True).detach()
        return bound

    def class_indices(self) -> torch.Tensor | None:
        """(B,) classes once bound."""
        return self._bound

    def rows_classes(self, output: Any, rows: torch.Tensor) -> torch.Tensor:
        """(n,) class explained for each row."""
        logits = select_logits(output, self.output_key)
        return self._indices(logits, rows, exact=self._bound is None and _is_identity(rows))

    def scores(self, output: Any, rows: torch.Tensor) -> torch.Tensor:
        """(n,) logits of the chosen classes."""
        logits = select_logits(output, self.output_key)
        return logits.gather(1, self.rows_classes(output, rows)[:, None])[:, 0]

    def probability(self, output: Any, rows: torch.Tensor) -> torch.Tensor:
        """(n,) softmax probability of the chosen classes."""
        logits = select_logits(output, self.output_key)
        cls = self.rows_classes(output, rows)
        return torch.softmax(logits.float(), dim=1).gather(1, cls[:, None])[:, 0]


def _is_identity(rows: torch.Tensor) -> bool:
    return bool(torch.equal(rows.cpu(), torch.arange(rows.shape[0])))


class PredictedClass(ClassLogit):
    """Logit of each image's top-scoring class (binding freezes the class of the clean image).

    A model with a single output logit is read as a binary classifier: binding gives
    :class:`BinaryTarget` with the predicted side (``logit > 0``).
    """

    def __init__(self, output_key: str | int | None = None) -> None:
        super().__init__(0, output_key)

    def bind(self, output: Any) -> ClassLogit:
        """ClassLogit of the argmax class (or :class:`BinaryTarget` for one logit)."""
        logits = select_logits(output, self.output_key).detach()
        if logits.shape[1] == 1:
            return BinaryTarget((logits[:, 0] > 0).long(), self.output_key).bind(output)
        return ClassLogit(logits.argmax(1), self.output_key).bind(output)

    def rows_classes(self, output: Any, rows: torch.Tensor) -> torch.Tensor:
        """(n,) argmax class of each row (unbound use only)."""
        return select_logits(output, self.output_key).detach().argmax(1)


class SoftmaxProbability(ClassLogit):
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
        super().__init__(0 if classes is None else classes, output_key)
        self.predicted = classes is None

    def bind(self, output: Any) -> ClassLogit:
        """Freeze the (predicted) classes."""
        if self.predicted:
            logits = select_logits(output, self.output_key).detach()
            return SoftmaxProbability(logits.argmax(1), self.output_key).bind(output)
        return super().bind(output)

    def rows_classes(self, output: Any, rows: torch.Tensor) -> torch.Tensor:
        """(n,) class of each row."""
        if self.predicted and self._bound is None:
            return select_logits(output, self.output_key).detach().argmax(1)
        return super().rows_classes(output, rows)

    def scores(self, output: Any, rows: torch.Tensor) -> torch.Tensor:
        """(n,) probabilities."""
        return self.probability(output, rows)


class ReSTScore(ClassLogit):
    """``y_c - CE(y, c) = 2 y_c - logsumexp(y)``: the logit and the softmax together.

    The "ReST" target of ShapleyCAM (Cai, 2025, arXiv 2501.06261; pytorch-grad-cam's
    ``ClassifierOutputReST``); unlike a plain logit it has a non-zero Hessian through the softmax.
    """

    def scores(self, output: Any, rows: torch.Tensor) -> torch.Tensor:
        """(n,) ReST scores."""
        logits = select_logits(output, self.output_key)
        return 2 * super().scores(output, rows) - torch.logsumexp(logits, dim=1)


class BinaryTarget(ClassLogit):
    """A single-logit (binary) classifier: the logit for class 1, its negative for class 0.

    As pytorch-grad-cam's ``BinaryClassifierOutputTarget``. The probability is the sigmoid of the
    signed logit, i.e. the probability of the chosen side.

    Parameters
    ----------
    classes : int, sequence of int or Tensor
        1 (positive) or 0 (negative), for all images or one per image.
    output_key : str or int, optional
        Which entry holds the logit.
    """

    def _indices(self, logits: torch.Tensor, rows: torch.Tensor, exact: bool) -> torch.Tensor:
        if logits.shape[1] != 1:
            raise ConfigError(f"a binary target needs one logit per image, got {logits.shape[1]}")
        idx = super()._indices(torch.zeros(logits.shape[0], 2), rows, exact).to(logits.device)
        return idx

    def scores(self, output: Any, rows: torch.Tensor) -> torch.Tensor:
        """(n,) signed logits."""
        logit = select_logits(output, self.output_key)[:, 0]
        return torch.where(self.rows_classes(output, rows) == 1, logit, -logit)

    def probability(self, output: Any, rows: torch.Tensor) -> torch.Tensor:
        """(n,) sigmoid of the signed logit."""
        return torch.sigmoid(self.scores(output, rows).float())


class MultiLabelTarget(ClassLogit):
    """A multi-label (sigmoid) classifier: one label per image, or every positive label in turn.

    The score is the label's logit (pre-sigmoid, as for single-label Grad-CAM); the probability is
    its sigmoid (not a softmax over labels).

    Parameters
    ----------
    labels : int, sequence of int, Tensor or None
        The label explained (for all images, or one per image). ``None``: every positive label of
        every image in turn (sigmoid > ``threshold`` on the clean image); the explanation functions
        then return one map per (image, positive label) pair, with the source image of each in
        :attr:`explainkit.cam.CamResult.images`. Images without a positive label get no map.
    threshold : float
        Probability above which a label is positive.
    output_key : str or int, optional
        Which entry holds the logits.
    """

    def __init__(self, labels: int | Sequence[int] | torch.Tensor | None = None, threshold: float = 0.5,
                 output_key: str | int | None = None) -> None:
        if not 0 < float(threshold) < 1:
            raise ConfigError(f"threshold must be strictly between 0 and 1, not {threshold!r}")
        super().__init__(0 if labels is None else labels, output_key)
        self.every_positive = labels is None
        self.threshold = float(threshold)

    def positives(self, output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, labels)``: the (P,) image and label of every positive label, image-major."""
        probs = torch.sigmoid(select_logits(output, self.output_key).detach().float())
        images, labels = torch.nonzero(probs > self.threshold, as_tuple=True)
        return images.cpu(), labels.cpu()

    def expand(self, output: Any) -> tuple[torch.Tensor, Target] | None:
        """Every positive label in turn (only when no label was given)."""
        if not self.every_positive:
            return None
        images, labels = self.positives(output)
        return images, MultiLabelTarget(labels, self.threshold, self.output_key)

    def bind(self, output: Any) -> ClassLogit:
        """Freeze the labels; an unexpanded 'every positive label' target cannot be bound."""
        if self.every_positive:
            raise ConfigError("MultiLabelTarget() without labels explains every positive label in turn; "
                              "use it with explainkit.cam / cams / compute")
        return super().bind(output)

    def probability(self, output: Any, rows: torch.Tensor) -> torch.Tensor:
        """(n,) sigmoid of the label logits."""
        return torch.sigmoid(self.scores(output, rows).float())


def _arity(fn: Callable[..., Any]) -> int:
    """How many positional arguments ``fn`` accepts (2 when it takes ``*args``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return 2
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


class OutputFunction(Target):
    """Any function of the model output that returns one score per row.

    ``fn(output, rows)`` receives the (n,) source image of each row (use it for anything that
    depends on the image); ``fn(output)`` must give every image the same function of its own row.
    The latter is checked (on the clean output, with the images reversed) the first time a method
    scores copies of images, and an image-dependent one-argument function is refused.

    Parameters
    ----------
    fn : callable
        ``fn(output, rows) -> (n,)`` or ``fn(output) -> (n,)``.
    """

    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        self.fn = fn
        self.with_rows = _arity(fn) >= 2
        self._clean: Any = None
        self._checked = False

    def bind(self, output: Any) -> OutputFunction:
        """Remember the clean output (for the image-independence check of ``fn(output)``)."""
        bound = OutputFunction(self.fn)
        bound._clean = output
        return bound

    def _call(self, output: Any, rows: torch.Tensor) -> torch.Tensor:
        out = self.fn(output, rows) if self.with_rows else self.fn(output)
        if not isinstance(out, torch.Tensor):
            raise ConfigError(f"target function returned {type(out).__name__}, not a tensor")
        return out

    def _check_image_independent(self) -> None:
        self._checked = True
        n = output_rows(self._clean)
        if n is None or n < 2:
            return
        with torch.no_grad():
            flipped = torch.arange(n - 1, -1, -1)
            direct = self._call(self._clean, torch.arange(n)).detach()
            permuted = self._call(take_rows(self._clean, flipped), flipped).detach()
        if direct.shape != (n,) or not torch.allclose(permuted.float(), direct[flipped].float(), rtol=1e-4,
                                                      atol=1e-6):
            raise ConfigError(
                "the target function fn(output) gives image-dependent scores; methods that add passes score "
                "copies of images in chunks, so write it as fn(output, rows) with rows[j] the image of row j"
            )

    def scores(self, output: Any, rows: torch.Tensor) -> torch.Tensor:
        """(n,) scores from ``fn``."""
        if not self.with_rows and not self._checked and self._clean is not None and not _is_identity(rows):
            self._check_image_independent()
        return self._call(output, rows)


class PerImage(Target):
    """One callable per image, each called on its own image's output (pytorch-grad-cam's convention).

    A plain callable receives the image's output without the batch axis (a logit row, a (K, H, W)
    map, a detector's dict) and returns a scalar; a :class:`Target` receives a one-row batch.

    Parameters
    ----------
    targets : sequence of callable
        B callables.
    """

    def __init__(self, targets: Sequence[Callable[..., Any]]) -> None:
        self.targets = list(targets)

    def bind(self, output: Any) -> PerImage:
        """Check there is one callable per image."""
        n = output_rows(output)
        if n is not None and n != len(self.targets):
            raise ConfigError(f"got {len(self.targets)} targets for {n} images; give one per image")
        return self

    def scores(self, output: Any, rows: torch.Tensor) -> torch.Tensor:
        """(n,) scores, row ``j`` from the callable of image ``rows[j]``."""
        out = []
        for j, image in enumerate(rows.tolist()):
            if image >= len(self.targets):
                raise ConfigError(f"got {len(self.targets)} targets for images up to index {image}")
            fn = self.targets[image]
            row = take_rows(output, [j])
            if isinstance(fn, Target):
                value = fn(row, torch.zeros(1, dtype=torch.long))
            else:
                single = row[0] if _per_image_list(row) else _squeeze_batch(row)
                value = fn(single)
            value = torch.as_tensor(value)
            if value.numel() != 1:
                raise ConfigError(f"the target of image {image} returned shape {tuple(value.shape)}, not a scalar")
            out.append(value.reshape(()))
        return torch.stack(out)


def _squeeze_batch(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output[0] if output.dim() else output
    if isinstance(output, dict):
        return type(output)((k, _squeeze_batch(v)) for k, v in output.items())
    if isinstance(output, tuple | list):
        return type(output)(_squeeze_batch(o) for o in output)
    return output


def as_target(spec: Any) -> Target:
    """Turn a user's target spec into a :class:`Target`.

    Parameters
    ----------
    spec : None, int, sequence of int, Tensor, Target, callable or sequence of callables
        ``None``: predicted class; int: that class for every image; a sequence/tensor of ints: one
        class per image; a :class:`Target`; a function ``fn(output, rows)`` or ``fn(output)``
        returning one score per row; or one callable per image (pytorch-grad-cam's convention,
        see :class:`PerImage`).

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
        isinstance(spec, Sequence) and not isinstance(spec, str) and spec and all(isinstance(v, int) for v in spec)
    ):
        return ClassLogit(spec)
    if isinstance(spec, Sequence) and not isinstance(spec, str) and spec and all(callable(v) for v in spec):
        return PerImage(spec)
    if callable(spec):
        return OutputFunction(spec)
    raise ConfigError(f"cannot use {spec!r} as a target (class index, list of indices, or a function)")
