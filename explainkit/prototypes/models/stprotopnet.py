"""ST-ProtoPNet: support and trivial prototypes (Wang et al., ICCV 2023; ``cwangrun/ST-ProtoPNet``).

Two ProtoPNet branches share the backbone; each has its own add-on layers (1×1 conv, tanh, 1×1
conv, tanh: the reference's ``regular`` add-on), its own unit-norm prototypes and its own last
layer; the logits are the sum of the two branches'. Similarity is the TesNet projection
``<z, p> / |p|`` (the reference's setting for cropped images) or the cosine (full images), max-pooled
over locations. The two sets differ only in their losses (``cropped/train_and_test.py``,
``settings_CUB_CAR.py``; cos = cosine similarity, s_c = own-class and s_o = other-class prototypes)::

    cluster     = -0.8 · mean_i max_{j in c(i)} cos(z_i, p_j)          both sets
    separation  = w_sep · mean_i max_{j not in c(i)} cos(z_i, p_j)     w_sep: trivial 0.08, support 0.48
    orthogonal  = 1e-3 · sum_c ||P_c P_cᵀ - I||_1                     both sets
    closeness   = mean_{c != c'} -min_{j in c, j' in c'} <p_j, p_j'>     support only (weight 1):
                  prototypes of different classes move towards each other, i.e. the boundary
    discrimination = mean_{c != c'} max_{j in c, j' in c'} <p_j, p_j'>   trivial only (weight 1):
                  prototypes of different classes move apart
    l1          = 1e-4 · |last-layer weights to other classes|_1

plus cross-entropy of the branch's logits; batches alternate between the trivial and the support
loss, and prototypes are re-normalised to unit length after every step.

Distance to the decision boundary (:func:`boundary_distance`, our reading of the paper's SVM
analogy, which gives no formula): under the nearest-prototype rule on the unit sphere, the boundary
between prototypes ``p_j`` and ``p_k`` of different classes is their bisector, at angle
``θ_jk / 2`` from each; a prototype's distance to the boundary is the smallest such half-angle.
Support prototypes should have small distances, trivial ones large.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from explainkit.errors import ConfigError
from explainkit.prototypes.models.common import class_specific_head
from explainkit.prototypes.similarity import similarity

__all__ = ["BRANCHES", "STLoss", "STProtoPNet", "boundary_distance", "class_pair_similarity"]

#: The two prototype sets, in the order the adapter concatenates them.
BRANCHES = ("support", "trivial")


def class_pair_similarity(prototypes: torch.Tensor, reduce: str) -> torch.Tensor:
    """Per pair of classes, the ``min`` or ``max`` dot product between their prototypes.

    Parameters
    ----------
    prototypes : torch.Tensor
        (K, n, D) the n prototypes of each of the K classes.
    reduce : str
        ``"min"`` (closeness) or ``"max"`` (discrimination).

    Returns
    -------
    torch.Tensor
        (K, K) matrix (diagonal included; the losses use the off-diagonal).
    """
    dots = torch.einsum("and,bmd->abnm", prototypes, prototypes).flatten(2)
    return dots.amin(2) if reduce == "min" else dots.amax(2)


def boundary_distance(prototypes: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Angular distance (radians) of each prototype to the nearest-prototype decision boundary.

    Parameters
    ----------
    prototypes : torch.Tensor
        (P, D) prototype vectors (normalised here).
    classes : sequence of int
        Class of each prototype.

    Returns
    -------
    torch.Tensor
        (P,) ``min over other-class prototypes k of angle(p_j, p_k) / 2`` (NaN without another class).
    """
    v = F.normalize(prototypes.detach().float().flatten(1), dim=1)
    cls = torch.as_tensor(list(classes))
    angle = torch.arccos((v @ v.t()).clamp(-1.0, 1.0))
    other = cls[:, None] != cls[None, :]
    half = torch.where(other, angle / 2, torch.full_like(angle, float("inf"))).amin(dim=1)
    return torch.where(torch.isinf(half), torch.full_like(half, float("nan")), half)


class STProtoPNet(nn.Module):
    """ST-ProtoPNet over a backbone, with the reference's layer names.

    Parameters
    ----------
    features : torch.nn.Module
        The backbone: (B, 3, H, W) inputs → (B, C, h, w) maps (the reference networks use a
        pretrained CNN; :mod:`explainkit.models` builds these with TinyCNN blocks).
    feature_channels : int
        C.
    num_classes : int
        K.
    prototypes_per_class : int
        Prototypes per class in each set (P = K × prototypes_per_class per set).
    prototype_dim : int
        D, the latent depth of both branches.
    similarity : str
        ``"projection"`` (reference, cropped images) or ``"cosine"`` (reference, full images).

    Notes
    -----
    Layer names: ``features``, ``add_on_layers_trivial``, ``add_on_layers_support`` (the two latent
    maps), ``prototype_vectors_trivial``, ``prototype_vectors_support`` ((P, D, 1, 1), unit norm),
    ``last_layer_trivial``, ``last_layer_support`` (P → K, +1 own class, -0.5 others),
    ``prototype_class_identity`` ((P, K) buffer). ``forward`` returns the summed (B, K) logits.
    """

    def __init__(self, features: nn.Module, feature_channels: int, num_classes: int = 3,
                 prototypes_per_class: int = 4, prototype_dim: int = 32, similarity: str = "projection") -> None:
        super().__init__()
        if similarity not in ("projection", "cosine"):
            raise ConfigError("st_protopnet similarity must be 'projection' or 'cosine'")
        num_prototypes = num_classes * prototypes_per_class
        self.prototype_activation_function = similarity
        self.num_classes = num_classes
        self.features = features

        def add_on() -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(feature_channels, prototype_dim, 1), nn.Tanh(),
                                 nn.Conv2d(prototype_dim, prototype_dim, 1), nn.Tanh())

        self.add_on_layers_trivial = add_on()
        self.add_on_layers_support = add_on()
        self.prototype_vectors_trivial = nn.Parameter(F.normalize(torch.rand(num_prototypes, prototype_dim, 1, 1)))
        self.prototype_vectors_support = nn.Parameter(F.normalize(torch.rand(num_prototypes, prototype_dim, 1, 1)))
        identity, self.last_layer_trivial = class_specific_head(num_classes, prototypes_per_class)
        self.last_layer_support = class_specific_head(num_classes, prototypes_per_class)[1]
        self.register_buffer("prototype_class_identity", identity, persistent=False)

    def branch(self, name: str) -> tuple[nn.Module, nn.Parameter, nn.Linear]:
        """Add-on layers, prototypes and last layer of branch ``name`` (``support`` or ``trivial``)."""
        return (getattr(self, f"add_on_layers_{name}"), getattr(self, f"prototype_vectors_{name}"),
                getattr(self, f"last_layer_{name}"))

    def similarity_maps(self, x: torch.Tensor, kind: str | None = None) -> dict[str, torch.Tensor]:
        """Per branch, the (B, P, h, w) similarity maps (``kind`` defaults to the model's)."""
        f = self.features(x)
        out = {}
        for name in BRANCHES:
            add_on, protos, _ = self.branch(name)
            out[name] = similarity(add_on(f), protos, kind or self.prototype_activation_function)
        return out

    def branch_logits(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Per branch, (B, K) logits and (B, P) max-pooled cosine similarities (for the losses)."""
        f = self.features(x)
        logits, cos = {}, {}
        for name in BRANCHES:
            add_on, protos, last = self.branch(name)
            z = add_on(f)
            logits[name] = last(similarity(z, protos, self.prototype_activation_function).flatten(2).amax(2))
            cos[name] = similarity(z, protos, "cosine").flatten(2).amax(2)
        return logits, cos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) inputs → (B, K) logits (support + trivial)."""
        logits, _ = self.branch_logits(x)
        return logits["support"] + logits["trivial"]

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """Project both prototype sets back to unit length (the reference does this after every step)."""
        for name in BRANCHES:
            p = self.branch(name)[1]
            p.copy_(F.normalize(p, dim=1))


@dataclass(frozen=True)
class STLoss:
    """The reference's loss coefficients (``settings_CUB_CAR.py``)."""

    cluster: float = -0.8
    separation_trivial: float = 0.08
    separation_support: float = 0.48
    orthogonality: float = 1e-3
    l1: float = 1e-4
    discrimination: float = 1.0
    closeness: float = 1.0

    def __call__(self, model: STProtoPNet, x: torch.Tensor, y: torch.Tensor, branch: str
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss of ``branch`` (``support`` or ``trivial``) and the summed (B, K) logits."""
        logits, cos = model.branch_logits(x)
        identity = model.prototype_class_identity
        own = identity[:, y].t().bool()  # (B, P)
        sims = cos[branch]
        cluster = sims.masked_fill(~own, -2.0).amax(1).mean()
        separation = sims.masked_fill(own, -2.0).amax(1).mean()
        _, protos, last = model.branch(branch)
        k = model.num_classes
        per_class = protos.flatten(1).view(k, -1, protos.shape[1])  # prototypes are class-ordered
        eye = torch.eye(per_class.shape[1], device=per_class.device)
        orth = (per_class @ per_class.transpose(1, 2) - eye).abs().sum()
        off = 1 - torch.eye(k, device=per_class.device)
        if branch == "support":
            pair = self.closeness * (-class_pair_similarity(per_class, "min") * off).sum() / off.sum()
            sep = self.separation_support
        else:
            pair = self.discrimination * (class_pair_similarity(per_class, "max") * off).sum() / off.sum()
            sep = self.separation_trivial
        l1 = (last.weight * (1 - identity.t())).abs().sum()
        loss = (F.cross_entropy(logits[branch], y) + self.cluster * cluster + sep * separation
                + self.orthogonality * orth + pair + self.l1 * l1)
        return loss, logits["support"] + logits["trivial"]

