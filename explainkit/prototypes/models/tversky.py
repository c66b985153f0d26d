"""Tversky projection layers (Doumbouya, Jurafsky and Manning, "Tversky Neural Networks", 2025).

Objects are vectors and, at the same time, sets of learned features: with a feature bank
``Ω = {f_1, ..., f_F}`` (vectors in the same space), object ``a`` *has* feature ``k`` when
``a·f_k > 0``, with measure ``a·f_k``. Tversky's contrast model is made differentiable::

    S(a, b) = θ f(A ∩ B) - α f(A - B) - β f(B - A)
    f(A ∩ B) = Σ_k ψ(a·f_k, b·f_k) [a·f_k > 0 and b·f_k > 0]       ψ: product (default), min, max, mean, gmean
    f(A - B) = Σ_k a·f_k [a·f_k > 0 and b·f_k <= 0]                 "ignorematch"
             = Σ_k (a·f_k - b·f_k) [a·f_k > 0, b·f_k > 0, a·f_k > b·f_k]   "substractmatch"

(``f(A)``, the salience, is ``Σ_k a·f_k [a·f_k > 0]``). A Tversky projection layer holds prototypes
``π_1 … π_P``, the feature bank and the scalars θ, α, β (all learned), and maps ``a`` to
``(S(a, π_1), ..., S(a, π_P))``. The paper replaces a classifier's final linear layer with it (one
prototype per class) and compares the reductions (product intersection works best in its XOR study);
our defaults are product intersection and ignorematch difference (with substractmatch our small
network did not leave chance level on the synthetic shape world in 8 epochs; both are parameters).

Our reference network (:class:`TverskyNet`) applies the projection to every latent cell and averages
the similarities over cells. A linear head gives the same logits whether it is applied before or
after the average; for the non-linear Tversky similarity this order makes each cell's similarity
the model's own evidence (the similarity maps the adapter reads).
"""

from __future__ import annotations

import torch
from torch import nn

from explainkit.errors import ConfigError

__all__ = [
    "DIFFERENCES",
    "INTERSECTIONS",
    "TverskyNet",
    "TverskyProjection",
    "feature_sets",
    "salience",
    "tversky_similarity",
]

INTERSECTIONS = ("product", "min", "max", "mean", "gmean")
DIFFERENCES = ("ignorematch", "substractmatch")


def salience(measures: torch.Tensor) -> torch.Tensor:
    """``f(A) = Σ_k a·f_k [a·f_k > 0]`` from (..., F) feature measures."""
    return measures.clamp_min(0).sum(-1)


def feature_sets(vectors: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """(N, F) feature measures ``a·f_k`` of (N, D) vectors; the set of ``a`` is where they are > 0."""
    return vectors @ features.t()


def _intersection(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "product":
        return a * b
    if kind == "min":
        return torch.minimum(a, b)
    if kind == "max":
        return torch.maximum(a, b)
    if kind == "mean":
        return (a + b) / 2
    if kind == "gmean":
        return (a * b).clamp_min(0).sqrt()
    raise ConfigError(f"unknown intersection reduction {kind!r}; choose from {', '.join(INTERSECTIONS)}")


def _difference(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """Per feature, the contribution of ``a`` to ``f(A - B)`` (summed by the caller)."""
    if kind == "ignorematch":
        return a * ((a > 0) & (b <= 0))
    if kind == "substractmatch":
        return (a - b) * ((a > 0) & (b > 0) & (a > b))
    raise ConfigError(f"unknown difference reduction {kind!r}; choose from {', '.join(DIFFERENCES)}")


def tversky_similarity(a: torch.Tensor, b: torch.Tensor, features: torch.Tensor, alpha: torch.Tensor | float,
                       beta: torch.Tensor | float, theta: torch.Tensor | float, intersection: str = "product",
                       difference: str = "ignorematch") -> torch.Tensor:
    """Tversky similarity of every row of ``a`` to every row of ``b``.

    Parameters
    ----------
    a : torch.Tensor
        (N, D) objects (the stimuli: inputs).
    b : torch.Tensor
        (P, D) objects (the referents: prototypes).
    features : torch.Tensor
        (F, D) feature bank Ω.
    alpha, beta, theta : float or torch.Tensor
        Weights of the distinctive features of ``a``, of ``b``, and of the common features.
    intersection, difference : str
        Reductions (see the module docstring).

    Returns
    -------
    torch.Tensor
        (N, P) similarities ``θ f(A∩B) - α f(A-B) - β f(B-A)``.
    """
    ma = feature_sets(a, features)[:, None, :]  # (N, 1, F)
    mb = feature_sets(b, features)[None, :, :]  # (1, P, F)
    common = _intersection(ma, mb, intersection) * ((ma > 0) & (mb > 0))
    return (theta * common.sum(-1) - alpha * _difference(ma, mb, difference).sum(-1)
            - beta * _difference(mb, ma, difference).sum(-1))


class TverskyProjection(nn.Module):
    """A Tversky projection layer: similarities of the input to P learned prototypes.

    Parameters
    ----------
    in_features : int
        D.
    num_prototypes : int
        P.
    num_features : int
        F, size of the feature bank Ω.
    intersection, difference : str
        Reductions.
    alpha, beta, theta : float
        Initial values of the learned scalars.

    Notes
    -----
    Parameters ``prototypes`` (P, D), ``features`` (F, D), ``alpha``, ``beta``, ``theta``
    (scalars); prototypes and features start uniform in [-1/√D, 1/√D] (the paper finds uniform
    initialisation converges most often). ``forward`` maps (N, D) to (N, P).
    """

    def __init__(self, in_features: int, num_prototypes: int, num_features: int = 16,
                 intersection: str = "product", difference: str = "ignorematch", alpha: float = 0.5,
                 beta: float = 0.5, theta: float = 1.0) -> None:
        super().__init__()
        if intersection not in INTERSECTIONS or difference not in DIFFERENCES:
            raise ConfigError(f"intersection must be one of {INTERSECTIONS}, difference one of {DIFFERENCES}")
        bound = in_features ** -0.5
        self.prototypes = nn.Parameter(torch.empty(num_prototypes, in_features).uniform_(-bound, bound))
        self.features = nn.Parameter(torch.empty(num_features, in_features).uniform_(-bound, bound))
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.beta = nn.Parameter(torch.tensor(float(beta)))
        self.theta = nn.Parameter(torch.tensor(float(theta)))
        self.intersection = intersection
        self.difference = difference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) inputs → (N, P) Tversky similarities to the prototypes."""
        return tversky_similarity(x, self.prototypes, self.features, self.alpha, self.beta, self.theta,
                                  self.intersection, self.difference)


class TverskyNet(nn.Module):
    """A backbone, a 1×1 add-on, and a Tversky projection head (one prototype per class).

    Parameters
    ----------
    features : torch.nn.Module
        The backbone: (B, 3, H, W) inputs → (B, C, h, w) maps (the reference networks use a
        pretrained CNN; :mod:`explainkit.models` builds these with TinyCNN blocks).
    feature_channels : int
        C.
    num_classes : int
        K (= P, prototype ``k`` stands for class ``k``).
    latent_dim : int
        D, depth of the latent map the projection reads.
    num_features : int
        F, size of the feature bank.
    intersection, difference : str
        Reductions of the Tversky similarity.

    Notes
    -----
    Layer names: ``features``, ``add_on`` (the (B, D, 8, 8) latent map for 64 px), ``head``
    (:class:`TverskyProjection`). ``forward`` returns (B, K) logits: the mean over latent cells of
    each cell's similarity to each prototype.
    """

    def __init__(self, features: nn.Module, feature_channels: int, num_classes: int = 3, latent_dim: int = 32,
                 num_features: int = 16, intersection: str = "product", difference: str = "ignorematch") -> None:
        super().__init__()
        self.features = features
        self.add_on = nn.Sequential(nn.Conv2d(feature_channels, latent_dim, 1), nn.ReLU(),
                                    nn.Conv2d(latent_dim, latent_dim, 1))
        self.head = TverskyProjection(latent_dim, num_classes, num_features, intersection, difference)

    def similarity_maps(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) latent map → (B, P, h, w) per-cell Tversky similarities."""
        b, d, h, w = z.shape
        cells = z.permute(0, 2, 3, 1).reshape(-1, d)
        return self.head(cells).view(b, h, w, -1).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) inputs → (B, K) logits."""
        return self.similarity_maps(self.add_on(self.features(x))).mean(dim=(2, 3))

