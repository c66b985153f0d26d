"""Targets over dense and structured outputs: a segmentation region, detection boxes.

Both follow the target protocol of :mod:`explainkit.adapters.targets` (``target(output, rows)``,
row ``j`` a copy of image ``rows[j]``), so per-image masks and reference boxes stay with their
image in every pass a method adds. Masks are rank-agnostic: a (B, K, D, H, W) volume output takes
(D, H, W) or (B, D, H, W) masks the same way a (B, K, H, W) map takes (H, W) or (B, H, W) ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from explainkit.adapters.targets import Target, output_rows, pick_tensor
from explainkit.errors import ConfigError

__all__ = ["BoxScoreTarget", "SegmentationTarget", "select_dense"]

_DENSE_KEYS = ("out", "logits", "masks")


def select_dense(output: Any, key: str | int | None = None) -> torch.Tensor:
    """The (B, K, *spatial) score map of a dense model output.

    Parameters
    ----------
    output : Tensor, dict, tuple or list
        A tensor, a dict (torchvision segmentation models return ``{"out": ..., "aux": ...}``;
        ``out``, ``logits`` or ``masks`` is taken, else the only tensor) or a sequence (its first
        tensor).
    key : str or int, optional
        Entry to take instead.

    Returns
    -------
    torch.Tensor
        (B, K, *spatial) scores.
    """
    output = pick_tensor(output, key, _DENSE_KEYS, "the score map")
    if output.dim() < 3:
        raise ConfigError(f"a segmentation target needs (B, K, H, W) class scores, got {tuple(output.shape)}")
    return output


class SegmentationTarget(Target):
    """Sum of one class's scores over a region: ``sum_p mask_p * out[category, p]``.

    As pytorch-grad-cam's ``SemanticSegmentationTarget``, per image. Use it with segmentation
    models as torchvision builds them (dict output, ``"out"`` is read) or any (B, K, H, W) output.

    Parameters
    ----------
    category : int or sequence of int
        The class, for every image or one per image.
    mask : array or Tensor
        (H, W) region shared by every image, or (B, H, W) one per image, at the resolution of the
        model output; boolean or weights.
    output_key : str or int, optional
        Entry of a dict/tuple output holding the scores.
    """

    def __init__(self, category: int | Sequence[int] | torch.Tensor, mask: Any,
                 output_key: str | int | None = None) -> None:
        self.category = torch.as_tensor(category, dtype=torch.long)
        if self.category.dim() > 1:
            raise ConfigError("category must be one class index or one per image")
        self.mask = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
        if self.mask.dtype == torch.bool:
            self.mask = self.mask.float()
        if not self.mask.is_floating_point():
            self.mask = self.mask.float()
        self.output_key = output_key

    def _check(self, scores: torch.Tensor, images: int | None) -> bool:
        """Validate against a (B, K, *spatial) output; returns whether the mask is per image."""
        spatial = tuple(scores.shape[2:])
        per_image = self.mask.dim() == len(spatial) + 1
        if tuple(self.mask.shape[-len(spatial):]) != spatial or self.mask.dim() not in (len(spatial), len(spatial) + 1):
            raise ConfigError(
                f"segmentation mask of shape {tuple(self.mask.shape)} does not fit the model output's "
                f"{spatial}: give {spatial} (shared) or (B, *{spatial}) (one per image) at the output's resolution"
            )
        if images is not None and per_image and self.mask.shape[0] != images:
            raise ConfigError(f"got {self.mask.shape[0]} masks for {images} images; give one per image or one for all")
        if images is not None and self.category.dim() == 1 and self.category.shape[0] != images:
            raise ConfigError(f"got {self.category.shape[0]} categories for {images} images")
        if self.category.numel() and (int(self.category.min()) < 0 or int(self.category.max()) >= scores.shape[1]):
            raise ConfigError(f"category out of range for a model with {scores.shape[1]} classes")
        return per_image

    def bind(self, output: Any) -> SegmentationTarget:
        """Validate mask and category against the clean batch."""
        self._check(select_dense(output, self.output_key), output_rows(output))
        return self

    def scores(self, output: Any, rows: torch.Tensor) -> torch.Tensor:
        """(n,) masked class-score sums."""
        scores = select_dense(output, self.output_key)
        per_image = self._check(scores, None)
        rows = rows.to(scores.device)
        cat = self.category.to(scores.device)
        cat = cat.expand(rows.shape[0]) if cat.dim() == 0 else cat[rows]
        mask = self.mask.to(scores.device, scores.dtype)
        mask = mask[rows] if per_image else mask.expand(rows.shape[0], *mask.shape)
        picked = scores[torch.arange(scores.shape[0], device=scores.device), cat]
        return (picked * mask).flatten(1).sum(1)

    def mirrored(self, width: int) -> SegmentationTarget:
        """The mask mirrored left-right."""
        return SegmentationTarget(self.category, self.mask.flip(-1), self.output_key)


def _boxes(value: Any, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(value, dtype=np.float64) if not isinstance(value, torch.Tensor) else value)
    if t.numel() == 0:
        return t.reshape(0, 4).double() if what == "boxes" else t.reshape(0).long()
    if what == "boxes" and (t.dim() != 2 or t.shape[1] != 4):
        raise ConfigError(f"reference boxes must be (N, 4) x1, y1, x2, y2; got shape {tuple(t.shape)}")
    if what == "labels" and t.dim() != 1:
        raise ConfigError(f"reference labels must be (N,); got shape {tuple(t.shape)}")
    return t.double() if what == "boxes" else t.long()


def _is_per_image(boxes: Any) -> bool:
    """A list of B (N_b, 4) box sets rather than one (N, 4) set."""
    if isinstance(boxes, torch.Tensor | np.ndarray) or not isinstance(boxes, Sequence) or not boxes:
        return False
    return all((isinstance(v, torch.Tensor | np.ndarray) and v.ndim == 2)
               or (isinstance(v, Sequence) and (not v or isinstance(v[0], Sequence | torch.Tensor | np.ndarray)))
               for v in boxes)


class BoxScoreTarget(Target):
    """Detection target for torchvision detectors: how well the detections still match reference boxes.

    For each reference box (and label) of an image: the predicted box with the highest IoU; if that
    IoU exceeds ``iou_threshold`` and its label matches, it adds ``IoU + score`` (both
    differentiable), else 0. Sum over the reference boxes; as pytorch-grad-cam's
    ``FasterRCNNBoxScoreTarget``. The model output is a torchvision detector's list of per-image
    dicts with ``boxes``, ``labels`` and ``scores`` (eval mode).

    Parameters
    ----------
    labels : sequence of int, or one sequence per image
        (N,) label of each reference box, shared by every image, or a list of B (N_b,) label lists.
    boxes : array, or one array per image
        (N, 4) reference boxes ``x1, y1, x2, y2`` in input pixels, shared, or a list of B (N_b, 4).
    iou_threshold : float
        Minimum IoU for a detection to count.
    """

    def __init__(self, labels: Any, boxes: Any, iou_threshold: float = 0.5) -> None:
        per_image = _is_per_image(boxes)
        if per_image and (isinstance(labels, torch.Tensor | np.ndarray) or len(labels) != len(boxes)):
            raise ConfigError("per-image reference boxes need per-image labels: a list of B label lists")
        self.boxes = [_boxes(b, "boxes") for b in boxes] if per_image else _boxes(boxes, "boxes")
        self.labels = [_boxes(b, "labels") for b in labels] if per_image else _boxes(labels, "labels")
        for b, lab in zip(*((self.boxes, self.labels) if per_image else ([self.boxes], [self.labels]))):
            if b.shape[0] != lab.shape[0]:
                raise ConfigError(f"got {b.shape[0]} reference boxes and {lab.shape[0]} labels")
        self.iou_threshold = float(iou_threshold)

    @property
    def per_image(self) -> bool:
        """Whether each image has its own reference boxes."""
        return isinstance(self.boxes, list)

    def bind(self, output: Any) -> BoxScoreTarget:
        """Check the output is a detector's list of dicts and there is one reference set per image."""
        _detections(output)
        n = output_rows(output)
        if self.per_image and n is not None and len(self.boxes) != n:
            raise ConfigError(f"got reference boxes for {len(self.boxes)} images and a batch of {n}")
        return self

    def _refs(self, image: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.per_image:
            return self.boxes, self.labels  # type: ignore[return-value]
        if image >= len(self.boxes):
            raise ConfigError(f"got reference boxes for {len(self.boxes)} images, not for image {image}")
        return self.boxes[image], self.labels[image]  # type: ignore[index]

    def scores(self, output: Any, rows: torch.Tensor) -> torch.Tensor:
        """(n,) summed ``IoU + score`` of the matched detections."""
        from torchvision.ops import box_iou

        dets = _detections(output)
        out = []
        for det, image in zip(dets, rows.tolist()):
            pred = det["boxes"]
            total = pred.new_zeros(())
            ref_boxes, ref_labels = self._refs(image)
            if pred.shape[0]:
                ious = box_iou(ref_boxes.to(pred.device, pred.dtype), pred)
                best, idx = ious.max(dim=1)
                ok = (best > self.iou_threshold) & (det["labels"][idx] == ref_labels.to(pred.device))
                total = total + (best + det["scores"][idx])[ok].sum()
            out.append(total)
        return torch.stack(out)

    def mirrored(self, width: int) -> BoxScoreTarget:
        """The reference boxes mirrored left-right in an image ``width`` pixels wide."""
        def flip(b: torch.Tensor) -> torch.Tensor:
            return torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], dim=1)

        boxes = [flip(b) for b in self.boxes] if self.per_image else flip(self.boxes)  # type: ignore[arg-type]
        return BoxScoreTarget(self.labels, boxes, self.iou_threshold)


def _detections(output: Any) -> list[dict[str, torch.Tensor]]:
    if not (isinstance(output, list | tuple) and all(isinstance(o, dict) and {"boxes", "labels", "scores"} <= set(o)
                                                        for o in output)):
        raise ConfigError("a box target needs a detector's output: a list of dicts with boxes, labels and scores "
                          "(torchvision detectors in eval mode)")
    return list(output)
