"""ScaleProtoSeg: multi-scale grouped prototypes for semantic segmentation (Porta et al., WACV 2025).

The reference (``eceo-epfl/ScaleProtoSeg``, a fork of ProtoSeg) puts a prototype layer on a
DeepLab-v2 whose ASPP branches (atrous rates 6, 12, 18, 24) are kept apart instead of summed: the
latent map is the concatenation of S scale maps of D channels each, passed through a sigmoid
(``add_on_layers_type = 'deeplab_simple'``). Prototypes are ordered scale-major, then class, then
index (``prototype_class_identity``; ``scale_num_prototypes``), and a prototype of scale ``s`` is
compared only with the D channels of scale ``s``, pixel by pixel (1×1 prototypes)::

    d_p(x)[i, j] = || z_s(x)[:, i, j] - p ||²            (p of scale s)
    s_p(x)[i, j] = log((d + 1) / (d + 1e-4))              (ProtoPNet's log similarity)

Stage 1 (prototype learning) trains backbone, scale branches and prototypes with a ProtoPNet last
layer from the P similarities to the K class logits of every pixel::

    L1 = CE(pixels) + 0.25 · KLD + 1e-4 · |W_last ⊙ (1 - identityᵀ)|_1

where KLD (:func:`kld_loss`, ProtoSeg's diversity term) is, per image, class present, scale and pair
of that class's prototypes at that scale, ``exp(-symmetric KL)`` between the two prototypes'
distance distributions over the class's pixels (log-softmax of the distances), averaged.

Stage 2 (grouping) freezes everything but a sparse projection per class and a new last layer.
For class ``k`` with prototypes ``P_k`` (all scales), ``W_k`` (G × |P_k|) has rows on the
probability simplex (projected after every step, :func:`project_simplex`, which makes them sparse),
and the G group activations and logits of a pixel are::

    a_{k,g} = exp( sum_{p in P_k} W_k[g, p] · s_p )        (:func:`group_activations`)
    logit_c = sum_{k, g} V[c, (k, g)] · a_{k,g}             V: +1 own class, -0.5 others at start

    L2 = CE(pixels) + 1e-3 · |V ⊙ (1 - group identityᵀ)|_1 + 0.05 · group entropy

with the group entropy (:func:`group_entropy`) the mean normalised entropy of the rows of every
``W_k`` (``-sum w log(w + 1e-5) / log |P_k|``). Defaults of the reference (Cityscapes config):
S = 4 scales, 3 prototypes per class and scale, G = 3 groups per class, D = 64, log similarity.
:class:`ScaleProtoSeg` holds the stage-2 (final) model; the recipe in ``explainkit.datasets``
keeps the stage-1 last layer outside it. Logits are computed at the latent resolution (as the
reference trains them) and upsampled bilinearly to the input size (as DeepLab evaluates).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from explainkit.errors import ConfigError
from explainkit.prototypes.similarity import log_similarity, squared_l2_distances

__all__ = ["MultiScaleHead", "ScaleProtoSeg", "ScaleProtoSegLoss", "downsample_labels", "group_activations",
           "group_entropy", "kld_loss", "project_simplex", "prototype_relevance", "scale_distances"]


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of every row of ``v`` onto the probability simplex (Duchi et al. 2008).

    Parameters
    ----------
    v : torch.Tensor
        (G, n) rows.

    Returns
    -------
    torch.Tensor
        (G, n) rows ``max(v - θ, 0)`` with θ chosen so each row sums to 1 (sparse: entries below
        θ become exactly 0).
    """
    u = v.sort(dim=1, descending=True).values
    css = u.cumsum(dim=1) - 1
    k = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)
    support = (u - css / k) > 0
    rho = (support * k).argmax(dim=1)  # the last index of the support
    theta = css.gather(1, rho[:, None]) / (rho[:, None] + 1).to(v.dtype)
    return (v - theta).clamp_min(0)


def scale_distances(z: torch.Tensor, prototypes: torch.Tensor, scale_of: torch.Tensor, num_scales: int
                    ) -> torch.Tensor:
    """Squared L2 distances of each prototype to its own scale's channels at every pixel.

    Parameters
    ----------
    z : torch.Tensor
        (B, S·D, h, w) latent map, the S scale maps concatenated along channels.
    prototypes : torch.Tensor
        (P, D) or (P, D, 1, 1) prototype vectors.
    scale_of : torch.Tensor
        (P,) scale of each prototype.
    num_scales : int
        S.

    Returns
    -------
    torch.Tensor
        (B, P, h, w) distances.
    """
    if z.shape[1] % num_scales:
        raise ConfigError(f"a latent map of {z.shape[1]} channels does not split into {num_scales} scales")
    d = z.shape[1] // num_scales
    protos = prototypes.reshape(prototypes.shape[0], -1, 1, 1)
    if protos.shape[1] != d:
        raise ConfigError(f"prototypes of depth {protos.shape[1]} do not match scale maps of {d} channels")
    out = z.new_empty(z.shape[0], protos.shape[0], *z.shape[2:])
    for s in range(num_scales):
        idx = torch.nonzero(scale_of == s).flatten().to(z.device)
        if idx.numel():
            out[:, idx] = squared_l2_distances(z[:, s * d : (s + 1) * d], protos[idx.to(protos.device)].to(z))
    return out


def group_activations(similarities: torch.Tensor, projections: Sequence[torch.Tensor],
                      members: Sequence[torch.Tensor]) -> torch.Tensor:
    """Group activations ``exp(W_k s_k)`` of every pixel.

    Parameters
    ----------
    similarities : torch.Tensor
        (B, P, h, w) prototype similarities.
    projections : sequence of torch.Tensor
        Per class, its (G, |P_k|) projection ``W_k``.
    members : sequence of torch.Tensor
        Per class, the (|P_k|,) indices of its prototypes.

    Returns
    -------
    torch.Tensor
        (B, K·G, h, w) group activations, class-major.
    """
    return torch.cat([torch.exp(torch.einsum("gp,bphw->bghw", w, similarities[:, m.to(similarities.device)]))
                      for w, m in zip(projections, members)], dim=1)


def prototype_relevance(similarities: torch.Tensor, projections: Sequence[torch.Tensor],
                        members: Sequence[torch.Tensor], last_weight: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each prototype's additive share of the predicted class's logit at every pixel.

    With ``e_j = sum_p W[j, p] s_p`` the exponent of group ``j`` and ``V`` the last layer, the
    logit of class ``c`` is ``sum_j V[c, j] exp(e_j)``; splitting each group's term over its
    prototypes in proportion to ``W[j, p] s_p`` (all >= 0 for log similarities and simplex rows) gives::

        r_p = sum_{j ∋ p} V[ĉ, j] · exp(e_j) · W[j, p] s_p / e_j,     sum_p r_p = logit_ĉ

    for the predicted class ĉ (our reading of the paper's "which prototypes and groups activate";
    the paper shows group activations, not a formula). A group whose exponent is 0 contributes
    ``V[ĉ, j]`` and no prototype share.

    Parameters
    ----------
    similarities : torch.Tensor
        (B, P, h, w) prototype similarities.
    projections, members
        See :func:`group_activations`.
    last_weight : torch.Tensor
        (K, K·G) last layer.

    Returns
    -------
    predicted : torch.Tensor
        (B, h, w) predicted class of every latent pixel.
    relevance : torch.Tensor
        (B, P, h, w) ``r_p`` for the predicted class.
    """
    logits = torch.einsum("cg,bghw->bchw", last_weight, group_activations(similarities, projections, members))
    predicted = logits.argmax(dim=1)
    v = last_weight.t()[:, predicted].permute(1, 0, 2, 3)  # (B, K·G, h, w): V[ĉ, j] per pixel
    relevance = torch.zeros_like(similarities)
    j0 = 0
    for w, m in zip(projections, members):
        m = m.to(similarities.device)
        terms = torch.einsum("gp,bphw->bgphw", w, similarities[:, m])  # W[j, p] s_p
        e = terms.sum(dim=2, keepdim=True)
        scale = v[:, j0 : j0 + w.shape[0], None] * torch.exp(e) / torch.where(e > 0, e, torch.ones_like(e))
        relevance[:, m] += (scale * terms).sum(dim=1)
        j0 += w.shape[0]
    return predicted, relevance


def group_entropy(projections: Sequence[torch.Tensor], eps: float = 1e-5) -> torch.Tensor:
    """Mean normalised entropy of the projection rows (the reference's ``EntropyGroup``)."""
    rows = []
    for w in projections:
        norm = torch.log(torch.tensor(float(w.shape[1]), device=w.device))
        rows.append(-(w * torch.log(w + eps)).sum(dim=1) / norm)
    return torch.cat(rows).mean()


def kld_loss(distances: torch.Tensor, labels: torch.Tensor, identity: torch.Tensor, scale_of: torch.Tensor,
             num_scales: int) -> torch.Tensor:
    """ProtoSeg's prototype-diversity term per scale: mean ``exp(-KL_sym)`` over same-class prototype pairs.

    Parameters
    ----------
    distances : torch.Tensor
        (B, P, h, w) prototype distances.
    labels : torch.Tensor
        (B, h, w) class of every latent pixel (outside ``[0, K)``: ignored).
    identity : torch.Tensor
        (P, K) one-hot class of each prototype.
    scale_of : torch.Tensor
        (P,) scale of each prototype.
    num_scales : int
        S.

    Returns
    -------
    torch.Tensor
        Scalar (0 when no class region has two pixels and two prototypes at one scale).
    """
    terms = []
    classes = identity.argmax(dim=1).to(distances.device)
    scale_of = scale_of.to(distances.device)
    for b in range(distances.shape[0]):
        for k in torch.unique(labels[b]).tolist():
            if not 0 <= k < identity.shape[1]:
                continue
            mask = labels[b] == k
            if int(mask.sum()) < 2:
                continue
            for s in range(num_scales):
                idx = torch.nonzero((classes == k) & (scale_of == s)).flatten()
                if idx.numel() < 2:
                    continue
                logp = F.log_softmax(distances[b, idx][:, mask], dim=1)  # (n, pixels)
                for i in range(idx.numel()):
                    for j in range(i + 1, idx.numel()):
                        kl1 = F.kl_div(logp[i], logp[j], log_target=True, reduction="sum")
                        kl2 = F.kl_div(logp[j], logp[i], log_target=True, reduction="sum")
                        terms.append((kl1 + kl2) / 2)
    return torch.exp(-torch.stack(terms)).mean() if terms else distances.new_zeros(())


class MultiScaleHead(nn.Module):
    """The scale branches: parallel 3×3 atrous convolutions (ASPP-like), concatenated, then a sigmoid.

    Parameters
    ----------
    in_channels : int
        Channels of the backbone map.
    channels : int
        D, channels of each scale map (the prototype depth).
    dilations : sequence of int
        Atrous rate of each branch (S = len(dilations)); the reference's DeepLab-v2 uses 6, 12, 18, 24.
    """

    def __init__(self, in_channels: int, channels: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.dilations = tuple(int(d) for d in dilations)
        self.branches = nn.ModuleList(nn.Conv2d(in_channels, channels, 3, padding=d, dilation=d)
                                      for d in self.dilations)
        self.add_on_layers = nn.Sigmoid()

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) backbone map → (B, S·D, h, w) latent map in (0, 1)."""
        return self.add_on_layers(torch.cat([branch(f) for branch in self.branches], dim=1))


class ScaleProtoSeg(nn.Module):
    """ScaleProtoSeg over a backbone, with the reference's layer names.

    Parameters
    ----------
    features : torch.nn.Module
        Backbone: (B, 3, H, W) → (B, C, h, w) (the reference: a DeepLab-v2 ResNet-101).
    feature_channels : int
        C.
    num_classes : int
        K.
    prototypes_per_class_scale : int
        m, prototypes of each class at each scale (P = S · K · m).
    prototype_dim : int
        D, channels per scale map.
    dilations : sequence of int
        Atrous rate of each scale branch (S = len(dilations)).
    num_groups : int
        G, groups per class.
    incorrect_strength : float
        Initial last-layer weight from a group to the other classes.

    Notes
    -----
    Layer names: ``features``, ``scale_head`` (``branches.0`` … and ``add_on_layers``: the
    (B, S·D, h, w) latent map), ``prototype_vectors`` ((P, D, 1, 1)), ``group_projection`` (one
    bias-free ``Linear(|P_k|, G)`` per class, rows on the simplex), ``last_layer_group``
    (K·G → K, no bias); buffers ``prototype_class_identity`` (P, K), ``prototype_scale`` (P,) and
    ``group_class_identity`` (K·G, K). ``forward`` returns (B, K, H, W) per-pixel logits.
    """

    prototype_activation_function = "log"

    def __init__(self, features: nn.Module, feature_channels: int, num_classes: int = 3,
                 prototypes_per_class_scale: int = 3, prototype_dim: int = 64,
                 dilations: Sequence[int] = (6, 12, 18, 24), num_groups: int = 3, incorrect_strength: float = -0.5
                 ) -> None:
        super().__init__()
        if num_classes < 1 or prototypes_per_class_scale < 1 or num_groups < 1 or not dilations:
            raise ConfigError("scaleprotoseg needs at least one class, prototype, group and scale")
        self.num_classes = int(num_classes)
        self.num_scales = len(tuple(dilations))
        self.num_groups = int(num_groups)
        self.features = features
        self.scale_head = MultiScaleHead(feature_channels, prototype_dim, dilations)
        per_scale = num_classes * prototypes_per_class_scale
        p = self.num_scales * per_scale
        j = torch.arange(p)
        identity = torch.zeros(p, num_classes)
        identity[j, (j % per_scale) // prototypes_per_class_scale] = 1
        self.register_buffer("prototype_class_identity", identity, persistent=False)
        self.register_buffer("prototype_scale", j // per_scale, persistent=False)
        self.prototype_vectors = nn.Parameter(torch.rand(p, prototype_dim, 1, 1))
        self.group_projection = nn.ModuleList(nn.Linear(int(identity[:, k].sum()), num_groups, bias=False)
                                              for k in range(num_classes))
        groups = torch.zeros(num_classes * num_groups, num_classes)
        groups[torch.arange(num_classes * num_groups), torch.arange(num_classes * num_groups) // num_groups] = 1
        self.register_buffer("group_class_identity", groups, persistent=False)
        self.last_layer_group = nn.Linear(num_classes * num_groups, num_classes, bias=False)
        with torch.no_grad():
            for proj in self.group_projection:
                proj.weight.copy_(project_simplex(proj.weight))
            self.last_layer_group.weight.copy_(groups.t() + incorrect_strength * (1 - groups.t()))

    def class_members(self) -> list[torch.Tensor]:
        """Per class, the indices of its prototypes (all scales, in index order)."""
        return [torch.nonzero(self.prototype_class_identity[:, k]).flatten() for k in range(self.num_classes)]

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, S·D, h, w) latent map."""
        return self.scale_head(self.features(x))

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """(B, S·D, h, w) latent map → (B, P, h, w) squared distances to each prototype at its scale."""
        return scale_distances(z, self.prototype_vectors, self.prototype_scale, self.num_scales)

    def similarity_maps(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, P, h, w) log similarities."""
        return log_similarity(self.distances(self.latent(x)))

    def groups(self, similarities: torch.Tensor) -> torch.Tensor:
        """(B, P, h, w) similarities → (B, K·G, h, w) group activations."""
        return group_activations(similarities, [proj.weight for proj in self.group_projection], self.class_members())

    def latent_logits(self, similarities: torch.Tensor) -> torch.Tensor:
        """(B, P, h, w) similarities → (B, K, h, w) logits at the latent resolution."""
        return torch.einsum("cg,bghw->bchw", self.last_layer_group.weight, self.groups(similarities))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) inputs → (B, K, H, W) per-pixel logits."""
        logits = self.latent_logits(self.similarity_maps(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    @torch.no_grad()
    def project_groups(self) -> None:
        """Project every group row back onto the simplex (the reference does this after every step)."""
        for proj in self.group_projection:
            proj.weight.copy_(project_simplex(proj.weight))


def downsample_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) label maps → (B, h, w) by nearest neighbour (the reference's ``resize_label``)."""
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


@dataclass(frozen=True)
class ScaleProtoSegLoss:
    """The reference's loss coefficients (``scaleproto_*.gin``, ``group_scaleproto_*.gin``) and the two stage losses.

    Pixels whose label is outside ``[0, K)`` are ignored (the reference's void class).
    """

    kld: float = 0.25
    l1_prototypes: float = 1e-4
    l1_groups: float = 1e-3
    group_entropy: float = 0.05

    def prototype_stage(self, model: ScaleProtoSeg, last_layer: nn.Linear, x: torch.Tensor, labels: torch.Tensor
                        ) -> torch.Tensor:
        """Stage 1: pixel cross-entropy of ``last_layer`` (P → K) + KLD + L1 on other-class weights."""
        d = model.distances(model.latent(x))
        y = downsample_labels(labels, tuple(d.shape[-2:]))
        logits = torch.einsum("cp,bphw->bchw", last_layer.weight, log_similarity(d))
        ce = _pixel_ce(logits, y)
        div = kld_loss(d, y, model.prototype_class_identity, model.prototype_scale, model.num_scales)
        l1 = (last_layer.weight * (1 - model.prototype_class_identity.t())).abs().sum()
        return ce + self.kld * div + self.l1_prototypes * l1

    def group_stage(self, model: ScaleProtoSeg, similarities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Stage 2: pixel cross-entropy of the grouped model + L1 on other-class weights + group entropy.

        ``similarities`` are the (B, P, h, w) maps of the frozen stage-1 model; ``labels`` (B, h, w).
        """
        ce = _pixel_ce(model.latent_logits(similarities), labels)
        l1 = (model.last_layer_group.weight * (1 - model.group_class_identity.t())).abs().sum()
        entropy = group_entropy([proj.weight for proj in model.group_projection])
        return ce + self.l1_groups * l1 + self.group_entropy * entropy


def _pixel_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    valid = (labels >= 0) & (labels < logits.shape[1])
    return F.cross_entropy(logits, torch.where(valid, labels, -100), ignore_index=-100)
