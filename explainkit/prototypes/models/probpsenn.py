"""Prob-PSENN: prototypes as probability distributions (Vadillo et al., 2024).

Vadillo, Santana, Lozano and Kwiatkowska, "Uncertainty-Aware Explanations Through Probabilistic
Self-Explainable Neural Networks" (2024). A prototype-based self-explainable network whose
prototypes are random variables instead of points. Every prediction and every explanation is an
expectation over prototype samples ``P^(s) ~ q``::

    p(y | x) = E_q[ softmax(h(x; P)) ] ≈ (1/S) Σ_s softmax(h(x; P^(s)))

so the spread over samples measures the model's explanatory uncertainty, and the usual decomposition
of the predictive entropy separates what the prototypes are unsure about::

    total     H[p̄(y|x)]
    aleatoric (1/S) Σ_s H[p(y|x; P^(s))]
    epistemic total - aleatoric   (mutual information between the label and the prototypes)

Our reference puts Gaussian prototypes ``q(p_j) = N(μ_j, diag σ_j²)`` (reparameterised sampling)
on ProtoPNet-style patch prototypes (TinyProtoPNet backbone, log similarity of the closest latent
cell, class-specific prototypes, last layer +1 / -0.5), so that every prototype sample has similarity
maps. The paper's exact regulariser of the prototype variances could not be checked here; we add
``kl_weight ×`` the mean KL divergence of every coordinate's ``N(μ, σ²)`` to ``N(μ, σ_0²)`` (a prior
on the spread only), which keeps σ from collapsing to a point estimate. In eval mode ``forward`` is
deterministic: the MC average over ``eval_samples`` samples drawn from a generator seeded with
``sample_seed`` (common random numbers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from explainkit.prototypes.models.common import class_specific_head
from explainkit.prototypes.similarity import log_similarity, squared_l2_distances

__all__ = ["GaussianPrototypes", "ProbPSENN", "ProbPSENNLoss", "predictive_uncertainty"]


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1)


def predictive_uncertainty(probabilities: torch.Tensor) -> dict[str, torch.Tensor]:
    """Entropy decomposition of MC class probabilities.

    Parameters
    ----------
    probabilities : torch.Tensor
        (S, N, K) class probabilities under S prototype samples.

    Returns
    -------
    dict of str to torch.Tensor
        (N,) ``total`` = H[mean], ``aleatoric`` = mean of H, ``epistemic`` = their difference (nats).
    """
    total = _entropy(probabilities.mean(0))
    aleatoric = _entropy(probabilities).mean(0)
    return {"total": total, "aleatoric": aleatoric, "epistemic": total - aleatoric}


class GaussianPrototypes(nn.Module):
    """P Gaussian prototypes with diagonal covariance.

    Parameters
    ----------
    num_prototypes, channels : int
        P and D.
    sigma : float
        Initial standard deviation of every coordinate.

    Notes
    -----
    Parameters ``prototype_mean`` and ``prototype_log_sigma``, both (P, D, 1, 1).
    """

    def __init__(self, num_prototypes: int, channels: int, sigma: float = 0.05) -> None:
        super().__init__()
        self.prototype_mean = nn.Parameter(torch.rand(num_prototypes, channels, 1, 1))
        self.prototype_log_sigma = nn.Parameter(torch.full((num_prototypes, channels, 1, 1), math.log(sigma)))

    @property
    def sigma(self) -> torch.Tensor:
        """(P, D, 1, 1) standard deviations."""
        return self.prototype_log_sigma.exp()

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, P, D, 1, 1) reparameterised samples ``μ + σ ε``."""
        eps = torch.randn((n, *self.prototype_mean.shape), generator=generator, dtype=self.prototype_mean.dtype)
        return self.prototype_mean + self.sigma * eps.to(self.prototype_mean.device)

    def variance_kl(self, prior_sigma: float) -> torch.Tensor:
        """Mean over coordinates of KL(N(μ, σ²) ‖ N(μ, σ_0²)) = log(σ_0/σ) + σ²/(2σ_0²) - 1/2."""
        s2 = self.sigma.pow(2)
        return (math.log(prior_sigma) - self.prototype_log_sigma + s2 / (2 * prior_sigma**2) - 0.5).mean()


class ProbPSENN(nn.Module):
    """A ProtoPNet-style network over a backbone, with Gaussian prototypes and MC predictions.

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
        P = K × prototypes_per_class.
    prototype_dim : int
        D (sigmoid add-on output).
    eval_samples : int
        S of the deterministic eval-mode prediction.
    sample_seed : int
        Seed of the eval-mode samples.

    Notes
    -----
    Layer names: ``features``, ``add_on`` (the latent map), ``prototype_layer``
    (:class:`GaussianPrototypes`), ``last_layer``; ``prototype_class_identity`` (P, K).
    ``forward`` returns (B, K) log MC-averaged probabilities (eval mode) or one sample's logits
    (train mode).
    """

    prototype_activation_function = "log"

    def __init__(self, features: nn.Module, feature_channels: int, num_classes: int = 3, prototypes_per_class: int = 4,
                 prototype_dim: int = 32, eval_samples: int = 16, sample_seed: int = 0) -> None:
        super().__init__()
        num_prototypes = num_classes * prototypes_per_class
        self.features = features
        self.add_on = nn.Sequential(nn.Conv2d(feature_channels, prototype_dim, 1), nn.ReLU(),
                                    nn.Conv2d(prototype_dim, prototype_dim, 1), nn.Sigmoid())
        self.prototype_layer = GaussianPrototypes(num_prototypes, prototype_dim)
        identity, self.last_layer = class_specific_head(num_classes, prototypes_per_class)
        self.register_buffer("prototype_class_identity", identity, persistent=False)
        self.eval_samples = eval_samples
        self.sample_seed = sample_seed

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) inputs → (B, D, h, w) latent map."""
        return self.add_on(self.features(x))

    def eval_prototypes(self, n: int | None = None) -> torch.Tensor:
        """The (n, P, D, 1, 1) fixed-seed prototype samples of eval mode (``n`` defaults to ``eval_samples``)."""
        gen = torch.Generator().manual_seed(self.sample_seed)
        return self.prototype_layer.sample(n or self.eval_samples, gen)

    def logits_and_distances(self, z: torch.Tensor, prototypes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K) logits and (B, P) min squared distances of a latent map under one prototype set."""
        d = squared_l2_distances(z, prototypes).flatten(2).amin(2)
        return self.last_layer(log_similarity(d)), d

    def sample_probabilities(self, x: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        """(S, B, K) class probabilities under each of the (S, P, D, 1, 1) prototype ``samples``."""
        z = self.latent(x)
        return torch.stack([self.logits_and_distances(z, p)[0].softmax(-1) for p in samples])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) inputs → (B, K) logits (see the class notes)."""
        if self.training:
            return self.logits_and_distances(self.latent(x), self.prototype_layer.sample(1)[0])[0]
        return torch.log(self.sample_probabilities(x, self.eval_prototypes()).mean(0).clamp_min(1e-12))


@dataclass(frozen=True)
class ProbPSENNLoss:
    """MC cross-entropy + ProtoPNet's cluster/separation costs + the variance prior (our choice, see the module)."""

    samples: int = 4
    cluster: float = 0.8
    separation: float = 0.08
    kl_weight: float = 0.1
    prior_sigma: float = 0.1

    def __call__(self, model: ProbPSENN, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and (B, K) log MC probabilities for inputs ``x`` and labels ``y``."""
        z = model.latent(x)
        own = model.prototype_class_identity[:, y].t().bool()
        log_probs, cluster, separation = [], 0.0, 0.0
        for p in model.prototype_layer.sample(self.samples):
            logits, d = model.logits_and_distances(z, p)
            log_probs.append(logits.log_softmax(-1))
            big = torch.finfo(d.dtype).max
            cluster = cluster + d.masked_fill(~own, big).amin(1).mean() / self.samples
            separation = separation + d.masked_fill(own, big).amin(1).mean() / self.samples
        log_mean = torch.logsumexp(torch.stack(log_probs), 0) - math.log(self.samples)
        loss = (F.nll_loss(log_mean, y) + self.cluster * cluster - self.separation * separation
                + self.kl_weight * model.prototype_layer.variance_kl(self.prior_sigma))
        return loss, log_mean

