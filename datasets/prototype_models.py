"""Training recipes for the seed papers' prototype models (:mod:`explainkit.prototypes.models`).

Small, deterministic CPU recipes (about a minute on a 64 px synthetic world of a few hundred images)
that follow each reference's loss and stage structure at a small scale. Every recipe takes a
labelled probe set and returns a :class:`~explainkit.datasets.training.TrainResult` with the model
in eval mode. Backbones are pre-trained as plain classifiers first where the reference starts from
an ImageNet backbone (ST-ProtoPNet, Prob-PSENN); the case-based autoencoder trains from scratch as
in its reference.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from explainkit.data.probe import ProbeSet
from explainkit.datasets.protopnet import Augment, Stage, pretrain_stage, run_stage
from explainkit.datasets.training import TrainResult, load_tensors
from explainkit.errors import ConfigError
from explainkit.loading.preprocessing import Preprocessing
from explainkit.models import (
    SYNTHETIC_PREPROCESSING,
    case_based_net,
    cbc_net,
    hopfield_net,
    prob_psenn,
    scaleprotoseg,
    st_protopnet,
    tversky_net,
)
from explainkit.prototypes.models.casebased import CaseBasedLoss, CaseBasedNet
from explainkit.prototypes.models.cbc import CBCNet, margin_loss
from explainkit.prototypes.models.hopfield import HopfieldNet
from explainkit.prototypes.models.probpsenn import ProbPSENN, ProbPSENNLoss
from explainkit.prototypes.models.scaleprotoseg import ScaleProtoSeg, ScaleProtoSegLoss, downsample_labels
from explainkit.prototypes.models.stprotopnet import BRANCHES, STLoss, STProtoPNet
from explainkit.prototypes.models.tversky import TverskyNet
from explainkit.prototypes.similarity import similarity

__all__ = [
    "push_scale_prototypes",
    "push_st_prototypes",
    "train_case_based",
    "train_cbc",
    "train_hopfield",
    "train_prob_psenn",
    "train_scaleprotoseg",
    "train_st_protopnet",
    "train_tversky",
]

#: A step between stages (e.g. a push): (model, inputs, labels) → None.
Step = Callable[[nn.Module, torch.Tensor, torch.Tensor], None]


def _train(data: ProbeSet, model: nn.Module, stages: Callable[[nn.Module, int], Sequence[Stage | Step]], *,
           seed: int, batch_size: int, flip: bool, augment: Augment | None,
           preprocessing: Preprocessing | None) -> TrainResult:
    """Run the stages (and steps between them) of a recipe on a labelled probe set."""
    start = time.perf_counter()
    x, y = load_tensors(data, preprocessing or Preprocessing(**getattr(model, "explainkit_preprocessing",
                                                                        SYNTHETIC_PREPROCESSING)))
    n_classes = len(data.class_names or ()) or int(y.max()) + 1
    gen = torch.Generator().manual_seed(seed)
    history: list[dict] = []
    for stage in stages(model, n_classes):
        if isinstance(stage, Stage):
            run_stage(model, stage, x, y, batch_size=batch_size, gen=gen, flip=flip, augment=augment)
            history += stage.history
        else:
            stage(model, x, y)
    model.eval()
    return TrainResult(model, history, time.perf_counter() - start)


def _check_epochs(*epochs: int) -> None:
    if min(epochs) < 0 or max(epochs) < 1:
        raise ConfigError("epochs must be non-negative and at least one stage must train")


def _ce_stage(name: str, model: nn.Module, epochs: int, lr: float) -> Stage:
    """All parameters, cross-entropy on the model's logits."""

    def step(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(xb)
        return F.cross_entropy(logits, yb), logits

    return Stage(name, epochs, list(model.parameters()), lr, step, weight_decay=1e-4)


def train_case_based(data: ProbeSet, *, model: CaseBasedNet | None = None, num_prototypes: int = 15, epochs: int = 60,
                     batch_size: int = 64, lr: float = 2e-3, seed: int = 0, loss: CaseBasedLoss | None = None,
                     augment: Augment | None = None, preprocessing: Preprocessing | None = None) -> TrainResult:
    """Train :class:`~explainkit.prototypes.models.casebased.CaseBasedNet` with the reference objective.

    One stage, all parameters, λ_class CE + λ_ae R + λ_1 R_1 + λ_2 R_2 at the reference's learning
    rate 0.002 (the reference trains 1,500 epochs on MNIST with elastic deformations; 60 epochs here,
    no deformations). Seeded; see :func:`train_st_protopnet` for the common parameters.
    """
    _check_epochs(epochs)
    objective = loss or CaseBasedLoss()
    torch.manual_seed(seed)
    net = model if model is not None else case_based_net(len(data.class_names or ()) or 2, num_prototypes)

    def stages(m: nn.Module, _: int) -> list[Stage]:
        def step(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            total, logits, _ = objective(m, xb, yb)
            return total, logits

        return [Stage("joint", epochs, list(m.parameters()), lr, step)]

    return _train(data, net, stages, seed=seed, batch_size=batch_size, flip=False, augment=augment,
                  preprocessing=preprocessing)


@torch.no_grad()
def push_st_prototypes(model: STProtoPNet, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> None:
    """Project every prototype of both sets onto its most similar own-class latent cell (unit length).

    The reference's ``push_support.py`` / ``push_trivial.py``: maximise the branch's similarity over
    the latent cells of training images of the prototype's class and store the normalised cell.
    """
    model.eval()
    classes = model.prototype_class_identity.argmax(1)
    for name in BRANCHES:
        add_on, protos, _ = model.branch(name)
        best = torch.full((protos.shape[0],), -float("inf"))
        new = protos.detach().clone()
        for start in range(0, len(x), batch_size):
            z = add_on(model.features(x[start : start + batch_size]))
            s = similarity(z, protos, model.prototype_activation_function)  # (b, P, h, w)
            own = classes[None, :] == y[start : start + batch_size, None]
            s = s.masked_fill(~own[..., None, None], -float("inf")).permute(1, 0, 2, 3).flatten(1)
            value, arg = s.max(dim=1)
            h, w = z.shape[2:]
            for p in torch.nonzero(value > best).flatten().tolist():
                best[p] = value[p]
                i, r = divmod(int(arg[p]), h * w)
                new[p, :, 0, 0] = F.normalize(z[i, :, r // w, r % w], dim=0)
        protos.copy_(new)


def train_st_protopnet(data: ProbeSet, *, model: STProtoPNet | None = None, prototypes_per_class: int = 4,
                       pretrain_epochs: int = 6, epochs: int = 10, last_layer_epochs: int = 4, batch_size: int = 32,
                       lr: float = 3e-3, last_layer_lr: float = 1e-2, seed: int = 0, loss: STLoss | None = None,
                       push: bool = True, flip: bool = True, augment: Augment | None = None,
                       preprocessing: Preprocessing | None = None) -> TrainResult:
    """Train :class:`~explainkit.prototypes.models.stprotopnet.STProtoPNet`.

    Stages: backbone pre-training, the joint stage with batches alternating between the trivial and
    the support loss (prototypes re-normalised before every step), the push of both sets, and the
    last-layer stage (cross-entropy of the summed logits + L1 on connections to other classes).

    Parameters
    ----------
    data : ProbeSet
        Labelled training images.
    model : STProtoPNet, optional
        Model to train (default ``STProtoPNet(K, prototypes_per_class)``).
    prototypes_per_class : int
        For the default model.
    pretrain_epochs, epochs, last_layer_epochs : int
        Epochs of the stages.
    batch_size, lr, last_layer_lr : training hyper-parameters
        AdamW with a one-cycle schedule per stage.
    seed : int
        Initialisation, shuffling, flips, augmentation.
    loss : STLoss, optional
        Loss coefficients (default the reference's).
    push : bool
        Project the prototypes onto training cells before the last-layer stage (the reference).
    flip : bool
        Random horizontal flips.
    augment : callable, optional
        Applied to every training batch.
    preprocessing : Preprocessing, optional
        Defaults to the model's ``explainkit_preprocessing`` (the synthetic worlds' for the
        reference models).

    Returns
    -------
    TrainResult
        The model (eval mode) and per-epoch records.
    """
    _check_epochs(pretrain_epochs, epochs, last_layer_epochs)
    objective = loss or STLoss()
    torch.manual_seed(seed)
    net = model if model is not None else st_protopnet(len(data.class_names or ()) or 2, prototypes_per_class)

    def stages(m: STProtoPNet, n_classes: int) -> list[Stage | Step]:
        last = [*m.last_layer_trivial.parameters(), *m.last_layer_support.parameters()]
        turn = iter(range(1 << 62))

        def joint(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            m.normalize_prototypes()
            return objective(m, xb, yb, BRANCHES[next(turn) % 2])

        def last_layer(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = m(xb)
            wrong = 1 - m.prototype_class_identity.t()
            l1 = sum((layer.weight * wrong).abs().sum() for layer in (m.last_layer_trivial, m.last_layer_support))
            return F.cross_entropy(logits, yb) + objective.l1 * l1, logits

        return [
            pretrain_stage(m.features, m.add_on_layers_trivial[0].in_channels, n_classes, pretrain_epochs, lr),
            Stage("joint", epochs, [p for p in m.parameters() if all(p is not q for q in last)], lr, joint,
                  weight_decay=1e-4),
            lambda mm, xx, yy: (mm.normalize_prototypes(), push and push_st_prototypes(mm, xx, yy)),
            Stage("last_layer", last_layer_epochs, last, last_layer_lr, last_layer, train_mode=False),
        ]

    return _train(data, net, stages, seed=seed, batch_size=batch_size, flip=flip, augment=augment,
                  preprocessing=preprocessing)


def train_tversky(data: ProbeSet, *, model: TverskyNet | None = None, epochs: int = 12, batch_size: int = 32,
                  lr: float = 3e-3, seed: int = 0, flip: bool = True, augment: Augment | None = None,
                  preprocessing: Preprocessing | None = None) -> TrainResult:
    """Train :class:`~explainkit.prototypes.models.tversky.TverskyNet` end to end with cross-entropy.

    One stage, all parameters (the backbone, prototypes, feature bank and θ, α, β). See
    :func:`train_st_protopnet` for the common parameters.
    """
    _check_epochs(epochs)
    torch.manual_seed(seed)
    net = model if model is not None else tversky_net(len(data.class_names or ()) or 2)
    return _train(data, net, lambda m, _: [_ce_stage("joint", m, epochs, lr)], seed=seed, batch_size=batch_size,
                  flip=flip, augment=augment, preprocessing=preprocessing)


def train_hopfield(data: ProbeSet, *, model: HopfieldNet | None = None, patterns_per_class: int = 4,
                   epochs: int = 12, batch_size: int = 32, lr: float = 3e-3, seed: int = 0, flip: bool = True,
                   augment: Augment | None = None, preprocessing: Preprocessing | None = None) -> TrainResult:
    """Train :class:`~explainkit.prototypes.models.hopfield.HopfieldNet` end to end with cross-entropy.

    See :func:`train_st_protopnet` for the common parameters.
    """
    _check_epochs(epochs)
    torch.manual_seed(seed)
    net = model if model is not None else hopfield_net(len(data.class_names or ()) or 2, patterns_per_class)
    return _train(data, net, lambda m, _: [_ce_stage("joint", m, epochs, lr)], seed=seed, batch_size=batch_size,
                  flip=flip, augment=augment, preprocessing=preprocessing)


def train_cbc(data: ProbeSet, *, model: CBCNet | None = None, head: str = "cbc", num_components: int = 9,
              epochs: int = 12, batch_size: int = 32, lr: float = 3e-3, margin: float = 0.3, seed: int = 0,
              flip: bool = True, augment: Augment | None = None,
              preprocessing: Preprocessing | None = None) -> TrainResult:
    """Train :class:`~explainkit.prototypes.models.cbc.CBCNet`: margin loss (CBC head) or cross-entropy (RBF head).

    See :func:`train_st_protopnet` for the common parameters.
    """
    _check_epochs(epochs)
    torch.manual_seed(seed)
    net = model if model is not None else cbc_net(len(data.class_names or ()) or 2, num_components, head=head)

    def stages(m: CBCNet, _: int) -> list[Stage]:
        if m.reasoning is None:
            return [_ce_stage("joint", m, epochs, lr)]

        def step(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            probs = m.class_probabilities(xb)
            return margin_loss(probs, yb, margin), probs

        return [Stage("joint", epochs, list(m.parameters()), lr, step, weight_decay=1e-4)]

    return _train(data, net, stages, seed=seed, batch_size=batch_size, flip=flip, augment=augment,
                  preprocessing=preprocessing)


def train_prob_psenn(data: ProbeSet, *, model: ProbPSENN | None = None, prototypes_per_class: int = 4,
                     pretrain_epochs: int = 6, epochs: int = 10, batch_size: int = 32, lr: float = 3e-3,
                     seed: int = 0, loss: ProbPSENNLoss | None = None, flip: bool = True,
                     augment: Augment | None = None, preprocessing: Preprocessing | None = None) -> TrainResult:
    """Train :class:`~explainkit.prototypes.models.probpsenn.ProbPSENN`: backbone pre-training, then the MC loss.

    See :func:`train_st_protopnet` for the common parameters.
    """
    _check_epochs(pretrain_epochs, epochs)
    objective = loss or ProbPSENNLoss()
    torch.manual_seed(seed)
    net = model if model is not None else prob_psenn(len(data.class_names or ()) or 2, prototypes_per_class)

    def stages(m: ProbPSENN, n_classes: int) -> list[Stage]:
        def joint(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return objective(m, xb, yb)

        return [pretrain_stage(m.features, m.add_on[0].in_channels, n_classes, pretrain_epochs, lr),
                Stage("joint", epochs, list(m.parameters()), lr, joint, weight_decay=1e-4)]

    return _train(data, net, stages, seed=seed, batch_size=batch_size, flip=flip, augment=augment,
                  preprocessing=preprocessing)


def push_scale_prototypes(model: ScaleProtoSeg, x: torch.Tensor, labels: torch.Tensor, batch_size: int = 64) -> None:
    """Move every prototype onto the closest latent pixel of its class at its scale (ProtoSeg's push).

    ``labels`` are (N, H, W) label maps, downsampled to the latent grid by nearest neighbour.
    """
    model.eval()
    classes = model.prototype_class_identity.argmax(1)
    d_scale = model.prototype_vectors.shape[1]
    best = torch.full((len(classes),), float("inf"))
    new = model.prototype_vectors.detach().clone()
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            z = model.latent(x[start : start + batch_size])
            y = downsample_labels(labels[start : start + batch_size], tuple(z.shape[-2:]))
            d = model.distances(z)  # (b, P, h, w)
            own = y[:, None] == classes[None, :, None, None]
            value, arg = d.masked_fill(~own, float("inf")).permute(1, 0, 2, 3).flatten(1).min(dim=1)
            h, w = z.shape[-2:]
            for p in torch.nonzero(value < best).flatten().tolist():
                best[p] = value[p]
                i, r = divmod(int(arg[p]), h * w)
                s = int(model.prototype_scale[p])
                new[p, :, 0, 0] = z[i, s * d_scale : (s + 1) * d_scale, r // w, r % w]
        model.prototype_vectors.copy_(new)


def train_scaleprotoseg(images: Sequence, labels: np.ndarray | torch.Tensor, *, model: ScaleProtoSeg | None = None,
                        epochs: int = 12, group_epochs: int = 8, batch_size: int = 16, lr: float = 5e-3,
                        group_lr: float = 2e-2, seed: int = 0, push: bool = True, loss: ScaleProtoSegLoss | None = None,
                        preprocessing: Preprocessing | None = None) -> TrainResult:
    """Train :class:`~explainkit.prototypes.models.scaleprotoseg.ScaleProtoSeg` on images with label maps.

    Stage 1 (prototype learning) trains backbone, scale branches, prototypes and a temporary
    class-specific last layer (P → K, +1 own class, -0.5 others) with pixel cross-entropy + 0.25 KLD
    + 1e-4 L1; then every prototype is pushed onto its closest own-class latent pixel at its scale.
    Stage 2 (grouping) freezes all that and trains only the group projections (projected onto the
    simplex after every step) and the group last layer, with cross-entropy + 1e-3 L1 + 0.05 group
    entropy, on similarity maps computed once. Reductions from the reference (a pretrained
    DeepLab-v2, about 10⁵ steps of Adam at 2.5e-4 with a polynomial schedule): the backbone trains
    from scratch with the prototypes, Adam with a one-cycle schedule, a few epochs per stage, no
    multi-scale input augmentation.

    Parameters
    ----------
    images : sequence of PIL.Image.Image
        Training images.
    labels : array
        (N, H, W) label maps at the images' resolution (outside ``[0, K)``: ignored).
    model : ScaleProtoSeg, optional
        Model to train (default :func:`explainkit.models.scaleprotoseg` with K = the largest label + 1).
    epochs, group_epochs : int
        Epochs of the two stages.
    batch_size, lr, group_lr : training hyper-parameters
    seed : int
        Initialisation and shuffling.
    push : bool
        Push the prototypes between the stages.
    loss : ScaleProtoSegLoss, optional
        Loss coefficients (default the reference's).
    preprocessing : Preprocessing, optional
        Defaults to the model's ``explainkit_preprocessing``.

    Returns
    -------
    TrainResult
        The model (eval mode) and per-epoch records (loss, pixel accuracy at the latent resolution).
    """
    _check_epochs(epochs, group_epochs)
    start = time.perf_counter()
    objective = loss or ScaleProtoSegLoss()
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if y.dim() != 3 or len(y) != len(images):
        raise ConfigError("labels must be (N, H, W) label maps, one per image")
    torch.manual_seed(seed)
    net = model if model is not None else scaleprotoseg(int(y.max()) + 1)
    x = (preprocessing or Preprocessing(**getattr(net, "explainkit_preprocessing", SYNTHETIC_PREPROCESSING)))(images)
    gen = torch.Generator().manual_seed(seed)
    identity = net.prototype_class_identity
    last = nn.Linear(identity.shape[0], identity.shape[1], bias=False)
    with torch.no_grad():
        last.weight.copy_(1.5 * identity.t() - 0.5)
    history: list[dict] = []
    stage1 = [p for n, p in net.named_parameters() if not n.startswith(("group_projection", "last_layer_group"))]

    def step1(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return objective.prototype_stage(net, last, xb, yb)

    _seg_stage(net, "prototypes", epochs, [*stage1, *last.parameters()], lr, step1, x, y, batch_size, gen, history)
    if push:
        push_scale_prototypes(net, x, y)
    net.eval()
    with torch.no_grad():
        sims = torch.cat([net.similarity_maps(x[i : i + 64]) for i in range(0, len(x), 64)])
    y_small = downsample_labels(y, tuple(sims.shape[-2:]))

    def step2(sb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return objective.group_stage(net, sb, yb)

    params = [*net.group_projection.parameters(), *net.last_layer_group.parameters()]
    _seg_stage(net, "groups", group_epochs, params, group_lr, step2, sims, y_small, batch_size, gen, history,
               after_step=net.project_groups, train_mode=False)
    net.eval()
    return TrainResult(net, history, time.perf_counter() - start)


def _seg_stage(model: nn.Module, name: str, epochs: int, params: list[nn.Parameter], lr: float,
               step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
               batch_size: int, gen: torch.Generator, history: list[dict], *,
               after_step: Callable[[], None] | None = None, train_mode: bool = True) -> None:
    """Adam with a one-cycle schedule over (x, label map) batches; appends per-epoch mean losses to ``history``."""
    if epochs <= 0:
        return
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * -(-len(x) // batch_size),
                                                pct_start=0.2)
    model.train(train_mode)
    for epoch in range(epochs):
        total = 0.0
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            value = step(x[idx], y[idx])
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            sched.step()
            if after_step is not None:
                after_step()
            total += float(value.detach()) * len(idx)
        history.append({"stage": name, "epoch": epoch + 1, "loss": total / len(x)})
