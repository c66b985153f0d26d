"""Small reference models: the demo classifier and a ProtoPNet-like network for tests and demos.

Their factories are the ``explainkit:`` architectures (``--arch explainkit:tiny_cnn(num_classes=3)``,
see :data:`explainkit.loading.arch.EXPLAINKIT_ARCHITECTURES`), which a model file's metadata, a config
file or the environment may also name.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from explainkit.prototypes.similarity import log_similarity, squared_l2_distances

__all__ = ["PrototypeLayer", "TinyCNN", "TinyProtoPNet", "tiny_cnn", "tiny_protopnet"]

#: Preprocessing of the synthetic worlds (images already at 64 px, values scaled to [-1, 1]).
SYNTHETIC_PREPROCESSING = {"input_size": (64, 64), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


class TinyCNN(nn.Module):
    """A four-block CNN for 64 px images (about 100k parameters).

    Parameters
    ----------
    num_classes : int
        Number of output logits.
    widths : sequence of int
        Channels of the four conv blocks.

    Notes
    -----
    Layer names: ``features.0`` … ``features.3`` (conv-BN-ReLU blocks, the last one at 8×8 for
    64 px inputs), ``pool``, ``classifier``. Output: logits of shape (B, num_classes).
    """

    def __init__(self, num_classes: int = 3, widths: Sequence[int] = (16, 32, 64, 64)) -> None:
        super().__init__()
        blocks = []
        in_ch = 3
        for i, out_ch in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks.append(nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(),
            ))
            in_ch = out_ch
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_ch, num_classes)
        self.explainkit_preprocessing = dict(SYNTHETIC_PREPROCESSING)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, 3, H, W) inputs to (B, num_classes) logits."""
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def tiny_cnn(num_classes: int = 3, widths: Sequence[int] = (16, 32, 64, 64)) -> TinyCNN:
    """Factory for :class:`TinyCNN` (``--arch explainkit:tiny_cnn``)."""
    return TinyCNN(num_classes=num_classes, widths=tuple(widths))


class PrototypeLayer(nn.Module):
    """ProtoPNet's prototype layer: squared L2 distance of every latent cell to every prototype.

    Parameters
    ----------
    num_prototypes : int
        P, the number of prototypes.
    channels : int
        D, the latent depth.

    Notes
    -----
    ``prototype_vectors`` has shape (P, D, 1, 1); ``forward`` maps a (B, D, h, w) latent map to
    (B, P, h, w) squared distances.
    """

    def __init__(self, num_prototypes: int, channels: int) -> None:
        super().__init__()
        self.prototype_vectors = nn.Parameter(torch.rand(num_prototypes, channels, 1, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) latent map → (B, P, h, w) squared L2 distances."""
        return squared_l2_distances(z, self.prototype_vectors)


class TinyProtoPNet(nn.Module):
    """A small ProtoPNet (Chen et al. 2019) for 64 px images: TinyCNN features, add-on, prototypes.

    Parameters
    ----------
    num_classes : int
        K, the number of classes.
    prototypes_per_class : int
        Class-specific prototypes per class (P = K × prototypes_per_class).
    prototype_dim : int
        D, the depth of the latent space (output of the sigmoid add-on layers).
    widths : sequence of int
        Channels of the four TinyCNN conv blocks.

    Notes
    -----
    Layer names: ``features.0`` … ``features.3`` (8×8 for 64 px inputs), ``add_on`` (1×1 conv,
    ReLU, 1×1 conv, sigmoid; the latent map), ``prototype_layer`` (holds ``prototype_vectors``),
    ``last_layer`` (P → K, no bias, initialised to +1 for the own class and -0.5 otherwise).
    Prototype ``j`` belongs to class ``j // prototypes_per_class`` (``prototype_class_identity``,
    (P, K)). The forward pass returns (B, K) logits of the log-similarities
    ``log((d + 1) / (d + 1e-4))`` of the closest latent cell (global min pooling of distances).
    """

    prototype_activation_function = "log"

    def __init__(self, num_classes: int = 3, prototypes_per_class: int = 4, prototype_dim: int = 32,
                 widths: Sequence[int] = (16, 32, 64, 64)) -> None:
        super().__init__()
        num_prototypes = num_classes * prototypes_per_class
        self.features = TinyCNN(num_classes, widths).features
        self.add_on = nn.Sequential(
            nn.Conv2d(widths[-1], prototype_dim, 1), nn.ReLU(),
            nn.Conv2d(prototype_dim, prototype_dim, 1), nn.Sigmoid(),
        )
        self.prototype_layer = PrototypeLayer(num_prototypes, prototype_dim)
        self.last_layer = nn.Linear(num_prototypes, num_classes, bias=False)
        identity = torch.zeros(num_prototypes, num_classes)
        identity[torch.arange(num_prototypes), torch.arange(num_prototypes) // prototypes_per_class] = 1
        self.register_buffer("prototype_class_identity", identity, persistent=False)
        with torch.no_grad():
            self.last_layer.weight.copy_(1.5 * identity.t() - 0.5)
        self.explainkit_preprocessing = dict(SYNTHETIC_PREPROCESSING)

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) inputs → (B, D, h, w) latent map."""
        return self.add_on(self.features(x))

    def forward_with_distances(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, K) and each prototype's minimum squared distance over locations (B, P)."""
        distances = self.prototype_layer(self.latent(x))
        min_distances = distances.flatten(2).amin(dim=2)
        similarities = log_similarity(min_distances)
        return self.last_layer(similarities), min_distances

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, 3, H, W) inputs to (B, K) logits."""
        return self.forward_with_distances(x)[0]


def tiny_protopnet(num_classes: int = 3, prototypes_per_class: int = 4, prototype_dim: int = 32,
                   widths: Sequence[int] = (16, 32, 64, 64)) -> TinyProtoPNet:
    """Factory for :class:`TinyProtoPNet` (``--arch explainkit:tiny_protopnet``)."""
    return TinyProtoPNet(num_classes=num_classes, prototypes_per_class=prototypes_per_class,
                         prototype_dim=prototype_dim, widths=tuple(widths))
