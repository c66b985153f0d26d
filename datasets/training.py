"""A small, deterministic training recipe for models on probe sets (CPU, about a minute)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from explainkit.data.probe import ProbeSet
from explainkit.errors import DataError
from explainkit.loading.preprocessing import Preprocessing
from explainkit.models import SYNTHETIC_PREPROCESSING, TinyCNN

__all__ = ["TrainResult", "load_tensors", "train_classifier"]

_log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """A trained model and its training history."""

    model: nn.Module
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def load_tensors(data: ProbeSet, preprocessing: Preprocessing) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of ``data`` as one (N, 3, H, W) input tensor and (N,) labels."""
    if not data.has_labels:
        raise DataError("training needs a labelled probe set")
    xs = [preprocessing(images) for _, images in data.iter_batches(256)]
    return torch.cat(xs), torch.as_tensor(data.labels, dtype=torch.long)


def train_classifier(
    data: ProbeSet,
    *,
    model: nn.Module | None = None,
    epochs: int = 12,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    flip: bool = True,
    preprocessing: Preprocessing | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train a classifier (default :class:`~explainkit.models.TinyCNN`) on a labelled probe set.

    Deterministic for a given seed on the CPU: fixed initialisation, shuffling and augmentation
    (random horizontal flips).

    Parameters
    ----------
    data : ProbeSet
        Labelled images.
    model : torch.nn.Module, optional
        Model to train; default ``TinyCNN(num_classes)``.
    epochs, batch_size, lr, weight_decay : training hyper-parameters
        AdamW with a cosine schedule.
    seed : int
        Seed of initialisation, shuffling and augmentation.
    flip : bool
        Random horizontal flips.
    preprocessing : Preprocessing, optional
        Defaults to the synthetic worlds' (64 px, mean = std = 0.5).
    on_epoch : callable, optional
        Receives each epoch's record.

    Returns
    -------
    TrainResult
        The model (in eval mode) and the per-epoch loss/accuracy history.
    """
    start = time.perf_counter()
    prep = preprocessing or Preprocessing(**SYNTHETIC_PREPROCESSING)
    x, y = load_tensors(data, prep)
    n_classes = len(data.class_names or ()) or int(y.max()) + 1
    torch.manual_seed(seed)
    model = model if model is not None else TinyCNN(num_classes=n_classes)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * -(-len(x) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            xb, yb = x[idx], y[idx]
            if flip:
                mask = torch.rand(len(idx), generator=gen) < 0.5
                xb = torch.where(mask[:, None, None, None], xb.flip(3), xb)
            out = model(xb)
            loss = loss_fn(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((out.argmax(1) == yb).sum())
            total += len(idx)
        record = {"epoch": epoch + 1, "loss": loss_sum / total, "train_accuracy": correct / total}
        history.append(record)
        _log.info("epoch %d loss %.4f acc %.3f", record["epoch"], record["loss"], record["train_accuracy"])
        if on_epoch:
            on_epoch(record)
    model.eval()
    return TrainResult(model, history, time.perf_counter() - start)


def accuracy(model: nn.Module, data: ProbeSet, preprocessing: Preprocessing | None = None) -> float:
    """Accuracy of ``model`` on a labelled probe set."""
    prep = preprocessing or Preprocessing(**SYNTHETIC_PREPROCESSING)
    x, y = load_tensors(data, prep)
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 256]).argmax(1) for i in range(0, len(x), 256)])
    return float((pred == y).float().mean()) if len(y) else float(np.nan)
