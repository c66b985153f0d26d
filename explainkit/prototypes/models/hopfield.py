"""Modern Hopfield association layers (Ramsauer et al., "Hopfield Networks is All You Need", ICLR 2021).

The continuous modern Hopfield network stores patterns ``X = (x_1, ..., x_N)`` and retrieves from a
state (query) pattern ``ξ`` with one update::

    ξ_new = X softmax(β Xᵀ ξ)

The softmax weights ``p = softmax(β Xᵀ ξ)`` say how much each stored pattern is retrieved; β is the
inverse temperature: large β retrieves single patterns, small β averages many (the paper's global
and metastable fixed points). The Hopfield *layer* (``ml-jku/hopfield-layers``, ``HopfieldLayer``:
stored patterns are trainable lookup weights) first layer-normalises the state and stored patterns
and maps them to an association space, ``Q = ξ W_Q``, ``K = Y W_K``, with β = 1/√d_k unless given.

Our reference network (:class:`HopfieldNet`) uses one association layer as a prototype layer:
every latent cell is a state pattern, the stored patterns are the prototypes (class-specific, like
ProtoPNet's), the retrieval weights are the similarities, each pattern's weight is max-pooled over
cells and a last layer (+1 own class, -0.5 others) gives the logits.
"""

from __future__ import annotations

import torch
from torch import nn

from explainkit.prototypes.models.common import class_specific_head

__all__ = ["HopfieldAssociation", "HopfieldNet", "hopfield_retrieval"]


def hopfield_retrieval(state: torch.Tensor, stored: torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
    """Retrieval weights ``softmax(β Xᵀ ξ)`` of (N, d) state patterns over (P, d) stored patterns → (N, P)."""
    return torch.softmax(beta * state @ stored.t(), dim=-1)


class HopfieldAssociation(nn.Module):
    """A Hopfield lookup layer with trainable stored patterns; returns the retrieval weights.

    Parameters
    ----------
    input_size : int
        d, depth of state and stored patterns.
    num_patterns : int
        P, number of stored patterns.
    hidden_size : int, optional
        d_k, depth of the association space (default ``input_size``).
    beta : float, optional
        Inverse temperature (default 1/√d_k, the reference's scaling).
    normalize : bool
        Layer-normalise state and stored patterns (the reference's default).
    projections : bool
        Map both into the association space with ``W_Q``, ``W_K`` (the reference); without them
        the retrieval is the bare ``softmax(β Xᵀ ξ)``.

    Notes
    -----
    Parameters: ``stored_patterns`` (P, d, normal with std 0.02 as the reference's lookup
    weights), ``query``/``key`` (``nn.Linear``), ``norm_state``/``norm_stored``; buffer ``beta``.
    """

    def __init__(self, input_size: int, num_patterns: int, hidden_size: int | None = None,
                 beta: float | None = None, normalize: bool = True, projections: bool = True) -> None:
        super().__init__()
        hidden = hidden_size or input_size
        self.stored_patterns = nn.Parameter(torch.randn(num_patterns, input_size) * 0.02)
        self.query = nn.Linear(input_size, hidden) if projections else nn.Identity()
        self.key = nn.Linear(input_size, hidden) if projections else nn.Identity()
        self.norm_state = nn.LayerNorm(input_size) if normalize else nn.Identity()
        self.norm_stored = nn.LayerNorm(input_size) if normalize else nn.Identity()
        depth = hidden if projections else input_size
        self.register_buffer("beta", torch.tensor(float(beta) if beta is not None else depth**-0.5))

    def association_space(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries (N, d_k) of (N, d) state patterns and keys (P, d_k) of the stored patterns."""
        return self.query(self.norm_state(state)), self.key(self.norm_stored(self.stored_patterns))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        """(N, d) state patterns → (N, P) retrieval weights."""
        q, k = self.association_space(state)
        return hopfield_retrieval(q, k, self.beta)


class HopfieldNet(nn.Module):
    """A backbone, a 1×1 add-on and a Hopfield association layer as the prototype layer.

    Parameters
    ----------
    features : torch.nn.Module
        The backbone: (B, 3, H, W) inputs → (B, C, h, w) maps (the reference networks use a
        pretrained CNN; :mod:`explainkit.models` builds these with TinyCNN blocks).
    feature_channels : int
        C.
    num_classes : int
        K.
    patterns_per_class : int
        Stored patterns per class (P = K × patterns_per_class).
    latent_dim : int
        d.
    beta : float, optional
        Inverse temperature (default 1/√d).

    Notes
    -----
    Layer names: ``features``, ``add_on`` (the (B, d, 8, 8) latent map), ``association``
    (:class:`HopfieldAssociation`), ``last_layer``; ``prototype_class_identity`` (P, K).
    ``forward`` returns (B, K) logits.
    """

    def __init__(self, features: nn.Module, feature_channels: int, num_classes: int = 3, patterns_per_class: int = 4,
                 latent_dim: int = 32, beta: float | None = None) -> None:
        super().__init__()
        num_patterns = num_classes * patterns_per_class
        self.features = features
        self.add_on = nn.Sequential(nn.Conv2d(feature_channels, latent_dim, 1), nn.ReLU(),
                                    nn.Conv2d(latent_dim, latent_dim, 1))
        self.association = HopfieldAssociation(latent_dim, num_patterns, beta=beta)
        identity, self.last_layer = class_specific_head(num_classes, patterns_per_class)
        self.register_buffer("prototype_class_identity", identity, persistent=False)

    def retrieval_maps(self, z: torch.Tensor) -> torch.Tensor:
        """(B, d, h, w) latent map → (B, P, h, w) retrieval weights of every cell."""
        b, d, h, w = z.shape
        weights = self.association(z.permute(0, 2, 3, 1).reshape(-1, d))
        return weights.view(b, h, w, -1).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) inputs → (B, K) logits."""
        maps = self.retrieval_maps(self.add_on(self.features(x)))
        return self.last_layer(maps.flatten(2).amax(2))

