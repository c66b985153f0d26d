"""Case-based reasoning through prototypes (Li, Liu, Chen and Rudin, AAAI 2018).

An autoencoder whose latent space holds ``m`` prototypes; the classifier is a linear layer on the
squared L2 distances of the input's latent code to every prototype (``OscarcarLi/PrototypeDL``,
``CAE_MNIST.py``)::

    z = f(x)                          encoder, flattened code of shape (D·h·w,)
    d_j = ||z - p_j||²                prototype layer
    logits = d @ W                    W: (m, K), no bias, uniform [0, 1) initialisation
    loss = λ_class CE + λ_ae R + λ_1 R_1 + λ_2 R_2
    R   = mean_i ||g(f(x_i)) - x_i||²             (sum of squared pixel errors, mean over images)
    R_1 = mean_j min_i ||p_j - f(x_i)||²          every prototype is close to some input
    R_2 = mean_i min_j ||f(x_i) - p_j||²          every input is close to some prototype

with the reference's defaults λ_class = 20, λ_ae = λ_1 = λ_2 = 1. Prototypes are shown by decoding
them, ``g(p_j)``. A prototype speaks for the class whose weight is most negative (a small distance
then raises that class's logit most).

The encoder is the reference's four 3×3 stride-2 convolutions with ReLU (32, 32, 32, 10 maps; the
code keeps the 2-D layout ``(D, h, w)``, which flattened is the paper's vector), the decoder mirrors
it with transposed convolutions and ends in a sigmoid, so decoded images are in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from explainkit.errors import ConfigError

__all__ = ["CaseBasedLoss", "CaseBasedNet", "r1_term", "r2_term", "squared_distances"]


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared L2 distances between the rows of ``a`` (N, F) and ``b`` (M, F) → (N, M), clipped at 0."""
    return (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1)[None] - 2 * a @ b.t()).clamp_min(0)


def r1_term(prototypes: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """R_1: mean over prototypes of the squared distance to the closest code (P, F), (N, F) → scalar."""
    return squared_distances(prototypes, codes).amin(dim=1).mean()


def r2_term(prototypes: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """R_2: mean over codes of the squared distance to the closest prototype (P, F), (N, F) → scalar."""
    return squared_distances(codes, prototypes).amin(dim=1).mean()


class CaseBasedNet(nn.Module):
    """The prototype autoencoder of Li et al. (2018) for small RGB images.

    Parameters
    ----------
    num_classes : int
        K.
    num_prototypes : int
        m (the reference uses 15 for MNIST).
    channels : sequence of int
        Maps of the four encoder convolutions (the last one is the code depth D).
    image_size : int
        Side of the (square) input; must be divisible by 16.
    mean, std : sequence of float
        The input normalisation, so that the decoder reconstructs the [0, 1] image.

    Notes
    -----
    Layer names: ``encoder`` (its output is the (B, D, s/16, s/16) code), ``decoder``,
    ``prototypes`` ((m, D, s/16, s/16): each prototype is a whole code), ``last_layer``
    (``weight`` is Wᵀ, shape (K, m)). ``forward`` returns (B, K) logits ``d @ W``.
    """

    def __init__(self, num_classes: int = 3, num_prototypes: int = 15, channels: Sequence[int] = (32, 32, 32, 10),
                 image_size: int = 64, mean: Sequence[float] = (0.5, 0.5, 0.5),
                 std: Sequence[float] = (0.5, 0.5, 0.5)) -> None:
        super().__init__()
        if image_size % 16 or len(channels) != 4:
            raise ConfigError("case_based_net needs an image size divisible by 16 and four encoder widths")
        widths = [3, *channels]
        enc: list[nn.Module] = []
        dec: list[nn.Module] = []
        for i in range(4):
            enc += [nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1), nn.ReLU()]
        for i in reversed(range(4)):
            dec += [nn.ConvTranspose2d(widths[i + 1], widths[i], 3, stride=2, padding=1, output_padding=1),
                    nn.Sigmoid() if i == 0 else nn.ReLU()]
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)
        side = image_size // 16
        self.prototypes = nn.Parameter(torch.rand(num_prototypes, channels[-1], side, side))
        self.last_layer = nn.Linear(num_prototypes, num_classes, bias=False)
        nn.init.uniform_(self.last_layer.weight, 0.0, 1.0)
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def class_weights(self) -> torch.Tensor:
        """W of the paper, (m, K): ``logits = d @ W``."""
        return self.last_layer.weight.t()

    def prototype_classes(self) -> list[int]:
        """The class each prototype speaks for: its most negative weight."""
        return self.class_weights.argmin(dim=1).tolist()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) model inputs → (B, D, h, w) codes."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) codes → (B, 3, H, W) images in [0, 1]."""
        return self.decoder(z)

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Model inputs → the [0, 1] images the decoder reconstructs."""
        return x * self.pixel_std + self.pixel_mean

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) codes → (B, m) squared distances to the prototypes."""
        return squared_distances(z.flatten(1), self.prototypes.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) inputs → (B, K) logits."""
        return self.distances(self.encode(x)) @ self.class_weights


@dataclass(frozen=True)
class CaseBasedLoss:
    """The reference's objective: λ_class CE + λ_ae R + λ_1 R_1 + λ_2 R_2 (``CAE_MNIST.py`` defaults)."""

    class_weight: float = 20.0
    ae: float = 1.0
    r1: float = 1.0
    r2: float = 1.0

    def __call__(self, model: CaseBasedNet, x: torch.Tensor, y: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Total loss, (B, K) logits and the four terms for a batch of inputs ``x`` and labels ``y``."""
        z = model.encode(x)
        logits = model.distances(z) @ model.class_weights
        recon = (model.decode(z) - model.to_unit(x)).pow(2).flatten(1).sum(1).mean()
        codes, protos = z.flatten(1), model.prototypes.flatten(1)
        terms = {"class": F.cross_entropy(logits, y), "ae": recon, "r1": r1_term(protos, codes),
                 "r2": r2_term(protos, codes)}
        total = (self.class_weight * terms["class"] + self.ae * terms["ae"] + self.r1 * terms["r1"]
                 + self.r2 * terms["r2"])
        return total, logits, {k: float(v.detach()) for k, v in terms.items()}

