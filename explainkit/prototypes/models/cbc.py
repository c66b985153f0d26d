"""Deep RBF and classification-by-components (CBC) networks.

Classification-by-components (Saralajew, Holdijk, Rees, Asan and Villmann, NeurIPS 2019;
``saralajew/cbc_networks``) detects components and reasons over the detections with probabilities:
for class ``c`` and component ``k``, positive reasoning ``r⁺`` (the component must be detected),
negative reasoning ``r⁻`` (it must not be) and indefinite reasoning ``r⁰`` (it does not matter),
``r⁺ + r⁻ + r⁰ = 1``. With detection probabilities ``d_k(x)`` in [0, 1] the class probability is::

    p_c(x) = Σ_k (r⁺_kc d_k + r⁻_kc (1 - d_k)) / Σ_k (r⁺_kc + r⁻_kc)

The reference encodes the reasoning with two numbers per (k, c) in [0, 1]: ``r⁺ = A``,
``r⁻ = (1 - A) B``, ``r⁰ = (1 - A)(1 - B)`` (``Reasoning`` layer; it clips A and B, we use a
sigmoid of unconstrained parameters), optionally weighted by component priors (softmax), and trains
with the margin loss ``relu(max_{c≠y} p_c - p_y + 0.3)``.

The robust prototype-based network of Saralajew, Rana, Villmann and Shaker ("A Robust
Prototype-Based Network with Interpretable RBF Classifier Foundations", AAAI 2025) detects with an
RBF kernel on latent distances, ``d_k(z) = exp(-|z - w_k|² / (2σ²))``, and relates deep
prototype networks to deep RBF classifiers (a linear layer on the RBF activations). Our reference
(:class:`CBCNet`) detects components with that kernel at every latent cell, max-pools over cells
and ends in either head: ``"cbc"`` (the reasoning above; the logits are ``log p_c``) or ``"rbf"``
(a linear layer; the logits are its output).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from explainkit.errors import ConfigError
from explainkit.prototypes.similarity import squared_l2_distances

__all__ = ["CBCNet", "CBCReasoning", "cbc_probabilities", "margin_loss", "rbf_detection"]

#: Logits of the CBC head are log(p + LOG_EPS).
LOG_EPS = 1e-6


def rbf_detection(z: torch.Tensor, components: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """RBF detection probabilities ``exp(-|z - w_k|² / (2σ²))`` of every latent cell.

    Parameters
    ----------
    z : torch.Tensor
        (B, D, h, w) latent map.
    components : torch.Tensor
        (K, D) components.
    sigma : float or torch.Tensor
        Kernel width (> 0).

    Returns
    -------
    torch.Tensor
        (B, K, h, w) detection probabilities in (0, 1].
    """
    d = squared_l2_distances(z, components[:, :, None, None])
    return torch.exp(-d / (2 * torch.as_tensor(sigma, dtype=z.dtype, device=z.device) ** 2))


def cbc_probabilities(detection: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                      eps: float = 1e-7) -> torch.Tensor:
    """Class probabilities of CBC reasoning.

    Parameters
    ----------
    detection : torch.Tensor
        (N, K) detection probabilities.
    positive, negative : torch.Tensor
        (K, C) reasoning probabilities ``r⁺``, ``r⁻`` (component priors already multiplied in).
    eps : float
        Stabilises the division (the reference adds Keras' epsilon).

    Returns
    -------
    torch.Tensor
        (N, C) ``Σ_k (r⁺ d + r⁻ (1 - d)) / Σ_k (r⁺ + r⁻)``.
    """
    return (detection @ (positive - negative) + negative.sum(0)) / ((positive + negative).sum(0) + eps)


def margin_loss(probabilities: torch.Tensor, labels: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """The reference's margin loss ``mean relu(max_{c≠y} p_c - p_y + margin)``."""
    own = probabilities.gather(1, labels[:, None])[:, 0]
    other = probabilities.masked_fill(F.one_hot(labels, probabilities.shape[1]).bool(), -1.0).amax(1)
    return F.relu(other - own + margin).mean()


class CBCReasoning(nn.Module):
    """CBC reasoning over K component detections for C classes.

    Parameters
    ----------
    num_components, num_classes : int
        K and C.
    priors : bool
        Learn component priors (softmax over components) that weight ``r⁺`` and ``r⁻``.

    Notes
    -----
    ``encoded`` (2, K, C) holds the unconstrained A and B; :meth:`probabilities` gives the
    (K, C) ``positive``, ``negative`` and ``indefinite`` reasoning probabilities.
    """

    def __init__(self, num_components: int, num_classes: int, priors: bool = False) -> None:
        super().__init__()
        self.encoded = nn.Parameter(torch.randn(2, num_components, num_classes) * 0.5)
        self.prior_logits = nn.Parameter(torch.zeros(num_components)) if priors else None

    def probabilities(self) -> dict[str, torch.Tensor]:
        """(K, C) ``positive``, ``negative``, ``indefinite`` reasoning and (K,) component ``prior``."""
        a, b = torch.sigmoid(self.encoded)
        k = a.shape[0]
        prior = torch.softmax(self.prior_logits, 0) if self.prior_logits is not None else torch.full((k,), 1.0 / k)
        return {"positive": a, "negative": (1 - a) * b, "indefinite": (1 - a) * (1 - b), "prior": prior.to(a)}

    def forward(self, detection: torch.Tensor) -> torch.Tensor:
        """(N, K) detections → (N, C) class probabilities."""
        r = self.probabilities()
        w = r["prior"][:, None]
        return cbc_probabilities(detection, r["positive"] * w, r["negative"] * w)


class CBCNet(nn.Module):
    """A backbone, a sigmoid 1×1 add-on, RBF component detection and a CBC or RBF head.

    Parameters
    ----------
    features : torch.nn.Module
        The backbone: (B, 3, H, W) inputs → (B, C, h, w) maps (the reference networks use a
        pretrained CNN; :mod:`explainkit.models` builds these with TinyCNN blocks).
    feature_channels : int
        C.
    num_classes : int
        Number of classes.
    num_components : int
        K (shared by all classes).
    latent_dim : int
        D.
    head : str
        ``"cbc"`` (reasoning; logits are log class probabilities) or ``"rbf"`` (linear layer).
    sigma : float
        Initial RBF width (learned, kept positive through its logarithm).
    priors : bool
        CBC head: learn component priors.

    Notes
    -----
    Layer names: ``features``, ``add_on`` (the (B, D, 8, 8) latent map), ``components`` (K, D),
    ``log_sigma``, ``reasoning`` (:class:`CBCReasoning`, CBC head) or ``rbf_head``
    (``nn.Linear``, RBF head). ``forward`` returns (B, C) logits.
    """

    def __init__(self, features: nn.Module, feature_channels: int, num_classes: int = 3, num_components: int = 9,
                 latent_dim: int = 32, head: str = "cbc", sigma: float = 1.0, priors: bool = False) -> None:
        super().__init__()
        if head not in ("cbc", "rbf"):
            raise ConfigError("cbc_net head must be 'cbc' or 'rbf'")
        self.head = head
        self.features = features
        self.add_on = nn.Sequential(nn.Conv2d(feature_channels, latent_dim, 1), nn.ReLU(),
                                    nn.Conv2d(latent_dim, latent_dim, 1), nn.Sigmoid())
        self.components = nn.Parameter(torch.rand(num_components, latent_dim))
        self.log_sigma = nn.Parameter(torch.tensor(float(sigma)).log())
        self.reasoning = CBCReasoning(num_components, num_classes, priors) if head == "cbc" else None
        self.rbf_head = nn.Linear(num_components, num_classes) if head == "rbf" else None

    @property
    def sigma(self) -> torch.Tensor:
        """The RBF width σ."""
        return self.log_sigma.exp()

    def detection_maps(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) latent map → (B, K, h, w) detection probabilities."""
        return rbf_detection(z, self.components, self.sigma)

    def detections(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) inputs → (B, K) detections (max over cells)."""
        return self.detection_maps(self.add_on(self.features(x))).flatten(2).amax(2)

    def class_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """CBC head: (B, C) class probabilities."""
        if self.reasoning is None:
            raise ConfigError("class_probabilities needs the CBC head")
        return self.reasoning(self.detections(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) inputs → (B, C) logits."""
        d = self.detections(x)
        if self.reasoning is not None:
            return torch.log(self.reasoning(d) + LOG_EPS)
        return self.rbf_head(d)

