"""Train a ProtoPNet-like model (Chen et al. 2019): joint stage, prototype push, last-layer stage.

The recipe follows ``cfchen-duke/ProtoPNet`` at a small scale: the backbone is pre-trained as a plain
classifier (ProtoPNet starts from an ImageNet backbone), then the network is trained with
cross-entropy plus 0.8 × cluster cost minus 0.08 × separation cost while the last layer stays at its
+1 / -0.5 initialisation, then
every prototype is projected ("pushed") onto the closest latent cell of a training image of its own
class, then only the last layer is trained with cross-entropy plus an L1 penalty on the weights
that connect prototypes to other classes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from explainkit.data.probe import ProbeSet
from explainkit.datasets.training import TrainResult, load_tensors
from explainkit.errors import ConfigError, DataError
from explainkit.loading.preprocessing import Preprocessing
from explainkit.models import SYNTHETIC_PREPROCESSING, TinyProtoPNet

__all__ = ["ProtoPNetLoss", "Stage", "pretrain_stage", "push_prototypes", "run_stage", "train_protopnet"]

_log = logging.getLogger(__name__)

#: A training augmentation: (B, 3, H, W) model inputs and a generator → augmented inputs.
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class ProtoPNetLoss:
    """ProtoPNet's loss weights (``settings.py`` of the reference).

    Attributes
    ----------
    cluster : float
        Weight of the cluster cost (mean over images of the smallest distance to an own-class
        prototype).
    separation : float
        Weight subtracted for the separation cost (smallest distance to another class's prototype).
    l1 : float
        L1 weight on last-layer connections to other classes (last-layer stage).
    """

    cluster: float = 0.8
    separation: float = 0.08
    l1: float = 1e-4

    def joint(self, logits: torch.Tensor, min_distances: torch.Tensor, labels: torch.Tensor,
              identity: torch.Tensor) -> torch.Tensor:
        """CE + cluster − separation for (B, K) logits, (B, P) min distances, (B,) labels, (P, K) identity."""
        own = identity[:, labels].t().bool()  # (B, P): prototype belongs to the image's class
        big = torch.finfo(min_distances.dtype).max
        cluster = min_distances.masked_fill(~own, big).amin(dim=1).mean()
        separation = min_distances.masked_fill(own, big).amin(dim=1).mean()
        return F.cross_entropy(logits, labels) + self.cluster * cluster - self.separation * separation

    def last_layer(self, logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
                   identity: torch.Tensor) -> torch.Tensor:
        """CE + L1 on the (K, P) last-layer weights to other classes."""
        return F.cross_entropy(logits, labels) + self.l1 * (weight * (1 - identity.t())).abs().sum()


#: One training step's loss: (inputs, labels) → (scalar loss, (B, K) logits).
StepLoss = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Stage:
    """One training stage: its parameters, learning rate and per-batch loss (AdamW, one-cycle schedule)."""

    name: str
    epochs: int
    params: list[nn.Parameter]
    lr: float
    step_loss: StepLoss
    train_mode: bool = True
    weight_decay: float = 0.0
    history: list[dict] = field(default_factory=list)


def run_stage(model: nn.Module, stage: Stage, x: torch.Tensor, y: torch.Tensor, *, batch_size: int,
              gen: torch.Generator, flip: bool, augment: Augment | None) -> None:
    """Train ``stage`` on (N, 3, H, W) inputs ``x`` and (N,) labels ``y``; appends to ``stage.history``."""
    if stage.epochs <= 0:
        return
    opt = torch.optim.AdamW(stage.params, lr=stage.lr, weight_decay=stage.weight_decay)
    steps = stage.epochs * -(-len(x) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=stage.lr, total_steps=steps, pct_start=0.2)
    model.train(stage.train_mode)
    for epoch in range(stage.epochs):
        seen, correct, total_loss = 0, 0, 0.0
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            xb, yb = x[idx], y[idx]
            if flip:
                xb = torch.where((torch.rand(len(idx), generator=gen) < 0.5)[:, None, None, None], xb.flip(3), xb)
            if augment is not None:
                xb = augment(xb, gen)
            value, logits = stage.step_loss(xb, yb)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            sched.step()
            seen += len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            total_loss += float(value.detach()) * len(idx)
        record = {"stage": stage.name, "epoch": epoch + 1, "loss": total_loss / seen, "train_accuracy": correct / seen}
        stage.history.append(record)
        _log.info("%s epoch %d loss %.4f acc %.3f", stage.name, epoch + 1, record["loss"], record["train_accuracy"])


def pretrain_stage(features: nn.Module, channels: int, n_classes: int, epochs: int, lr: float) -> Stage:
    """Backbone pre-training with a temporary global-average-pool + linear head and cross-entropy.

    Stands in for the ImageNet-pretrained backbones of the reference prototype networks.
    """
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, n_classes))

    def pretrain(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = head(features(xb))
        return F.cross_entropy(logits, yb), logits

    return Stage("pretrain", epochs, [*features.parameters(), *head.parameters()], lr, pretrain, weight_decay=1e-4)


def _stages(model: TinyProtoPNet, loss: ProtoPNetLoss, n_classes: int, epochs: tuple[int, int, int],
            lrs: tuple[float, float]) -> list[Stage]:
    """Backbone pre-training, joint ProtoPNet stage, last-layer stage."""
    identity = model.prototype_class_identity
    last = list(model.last_layer.parameters())

    def joint(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, min_d = model.forward_with_distances(xb)
        return loss.joint(logits, min_d, yb, identity), logits

    def last_layer(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(xb)
        return loss.last_layer(logits, yb, model.last_layer.weight, identity), logits

    return [
        pretrain_stage(model.features, model.add_on[0].in_channels, n_classes, epochs[0], lrs[0]),
        Stage("joint", epochs[1], [p for p in model.parameters() if all(p is not q for q in last)], lrs[0], joint,
              weight_decay=1e-4),
        # frozen features keep the batch-norm statistics they had at the push
        Stage("last_layer", epochs[2], last, lrs[1], last_layer, train_mode=False),
    ]


@torch.no_grad()
def push_prototypes(model: TinyProtoPNet, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Project every prototype onto the closest latent cell of a training image of its own class.

    Parameters
    ----------
    model : TinyProtoPNet
        The model (its ``prototype_layer.prototype_vectors`` are overwritten).
    x : torch.Tensor
        (N, 3, H, W) un-augmented training inputs.
    y : torch.Tensor
        (N,) labels.
    batch_size : int
        Images per forward pass.

    Returns
    -------
    torch.Tensor
        (P, 3) ``(image index, row, column)`` of the latent cell each prototype was projected onto.
    """
    model.eval()
    vectors = model.prototype_layer.prototype_vectors
    cls = model.prototype_class_identity.argmax(dim=1)  # (P,)
    best = torch.full((vectors.shape[0],), float("inf"))
    where = torch.zeros(vectors.shape[0], 3, dtype=torch.long)
    new = vectors.detach().clone()
    for start in range(0, len(x), batch_size):
        z = model.latent(x[start : start + batch_size])  # (b, D, h, w)
        d = model.prototype_layer(z)  # (b, P, h, w)
        own = cls[None, :] == y[start : start + batch_size, None]  # (b, P)
        d = d.masked_fill(~own[..., None, None], float("inf"))
        flat = d.permute(1, 0, 2, 3).flatten(1)  # (P, b*h*w)
        value, arg = flat.min(dim=1)
        better = value < best
        if better.any():
            h, w = z.shape[2:]
            img, rest = arg // (h * w), arg % (h * w)
            for p in torch.nonzero(better).flatten().tolist():
                best[p] = value[p]
                where[p] = torch.tensor([start + int(img[p]), int(rest[p]) // w, int(rest[p]) % w])
                new[p, :, 0, 0] = z[int(img[p]), :, int(rest[p]) // w, int(rest[p]) % w]
    if torch.isinf(best).any():
        raise DataError("push needs at least one training image of every class")
    vectors.data.copy_(new)
    return where


def train_protopnet(
    data: ProbeSet,
    *,
    model: TinyProtoPNet | None = None,
    prototypes_per_class: int = 4,
    pretrain_epochs: int = 6,
    epochs: int = 8,
    last_layer_epochs: int = 5,
    batch_size: int = 32,
    lr: float = 3e-3,
    last_layer_lr: float = 1e-2,
    seed: int = 0,
    flip: bool = True,
    loss: ProtoPNetLoss | None = None,
    augment: Augment | None = None,
    preprocessing: Preprocessing | None = None,
) -> TrainResult:
    """Train a :class:`~explainkit.models.TinyProtoPNet` on a labelled probe set.

    Stages: backbone pre-training with a temporary global-average-pool + linear head (standing in
    for ProtoPNet's ImageNet-pretrained backbone), the joint stage (backbone, add-on layers and
    prototypes; last layer fixed), the push (:func:`push_prototypes`), the last-layer stage.
    Deterministic for a given seed on the CPU.

    Parameters
    ----------
    data : ProbeSet
        Labelled training images.
    model : TinyProtoPNet, optional
        Model to train; default ``TinyProtoPNet(num_classes, prototypes_per_class)``.
    prototypes_per_class : int
        For the default model.
    pretrain_epochs, epochs, last_layer_epochs : int
        Epochs of the three stages (0 skips pre-training or the last-layer stage).
    batch_size, lr, last_layer_lr : training hyper-parameters
        AdamW with a one-cycle schedule per stage (``last_layer_lr`` for the last-layer stage).
    seed : int
        Initialisation, shuffling, flips and augmentation.
    flip : bool
        Random horizontal flips.
    loss : ProtoPNetLoss, optional
        Loss weights.
    augment : callable, optional
        Applied to every training batch (after the flips) in all stages, e.g. to randomise
        characteristics that must not decide the class; the push uses un-augmented images.
    preprocessing : Preprocessing, optional
        Defaults to the synthetic worlds'.

    Returns
    -------
    TrainResult
        The model (eval mode) and per-epoch records (``stage`` is ``pretrain``, ``joint`` or
        ``last_layer``); ``model.push_locations_`` holds the (P, 3) push locations.
    """
    start = time.perf_counter()
    if epochs < 1 or min(pretrain_epochs, last_layer_epochs) < 0:
        raise ConfigError("epochs must be at least 1, pretrain_epochs and last_layer_epochs at least 0")
    x, y = load_tensors(data, preprocessing or Preprocessing(**SYNTHETIC_PREPROCESSING))
    n_classes = len(data.class_names or ()) or int(y.max()) + 1
    torch.manual_seed(seed)
    model = model if model is not None else TinyProtoPNet(n_classes, prototypes_per_class)
    gen = torch.Generator().manual_seed(seed)
    stages = _stages(model, loss or ProtoPNetLoss(), n_classes, (pretrain_epochs, epochs, last_layer_epochs),
                     (lr, last_layer_lr))
    run = {"batch_size": batch_size, "gen": gen, "flip": flip, "augment": augment}
    run_stage(model, stages[0], x, y, **run)
    run_stage(model, stages[1], x, y, **run)
    model.push_locations_ = push_prototypes(model, x, y)
    run_stage(model, stages[2], x, y, **run)
    model.eval()
    return TrainResult(model, [r for s in stages for r in s.history], time.perf_counter() - start)
