"""Small reference models: the demo classifier, a ProtoPNet-like network and the seed papers' prototype models.

Their factories are the ``explainkit:`` architectures (``--arch explainkit:tiny_cnn(num_classes=3)``,
see :data:`explainkit.loading.arch.EXPLAINKIT_ARCHITECTURES`), which a model file's metadata, a config
file or the environment may also name.
The prototype models' layers and equations are the prototypes family's library
(:mod:`explainkit.prototypes.models`); the factories here put them on TinyCNN blocks for 64 px
synthetic worlds: ``case_based_net``, ``st_protopnet``, ``tversky_net``, ``hopfield_net``,
``cbc_net``, ``prob_psenn``; and one segmentation model, ``scaleprotoseg``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from explainkit.prototypes.models.casebased import CaseBasedNet
from explainkit.prototypes.models.cbc import CBCNet
from explainkit.prototypes.models.common import class_specific_head
from explainkit.prototypes.models.hopfield import HopfieldNet
from explainkit.prototypes.models.probpsenn import ProbPSENN
from explainkit.prototypes.models.scaleprotoseg import ScaleProtoSeg
from explainkit.prototypes.models.stprotopnet import STProtoPNet
from explainkit.prototypes.models.tversky import TverskyNet
from explainkit.prototypes.similarity import log_similarity, squared_l2_distances

__all__ = ["PROTOTYPE_MODELS", "SEGMENTATION_PROTOTYPE_MODELS", "PrototypeLayer", "TinyCNN", "TinyFCN", "TinyProtoPNet",
           "case_based_net", "cbc_net", "hopfield_net", "prob_psenn", "scaleprotoseg", "st_protopnet", "tiny_cnn",
           "tiny_fcn", "tiny_protopnet", "tversky_net"]

#: The factories of the seed papers' prototype models (classifiers: (B, K) logits).
PROTOTYPE_MODELS = ("case_based_net", "st_protopnet", "tversky_net", "hopfield_net", "cbc_net", "prob_psenn")
#: The factories of the seed papers' prototype segmentation models ((B, K, H, W) logits).
SEGMENTATION_PROTOTYPE_MODELS = ("scaleprotoseg",)
WIDTHS = (16, 32, 64, 64)

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


class TinyFCN(nn.Module):
    """A small fully convolutional segmentation net with torchvision's output, ``{"out": (B, K, H, W)}``.

    Parameters
    ----------
    num_classes : int
        Classes scored per pixel.
    width : int
        Channels of the two conv blocks.

    Notes
    -----
    Layer names: ``features.0`` (conv-BN-ReLU at input resolution), ``features.1`` (stride 2),
    ``classifier`` (1×1 conv); the scores are upsampled bilinearly to the input size, as torchvision's
    FCN / DeepLab / LR-ASPP do.
    """

    def __init__(self, num_classes: int = 4, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(*(nn.Sequential(
            nn.Conv2d(c_in, width, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
            for c_in, stride in ((3, 1), (width, 2))))
        self.classifier = nn.Conv2d(width, num_classes, 1)
        self.explainkit_preprocessing = dict(SYNTHETIC_PREPROCESSING)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Map (B, 3, H, W) inputs to ``{"out": (B, num_classes, H, W)}`` scores."""
        scores = self.classifier(self.features(x))
        return {"out": nn.functional.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)}


def tiny_fcn(num_classes: int = 4, width: int = 16) -> TinyFCN:
    """Factory for :class:`TinyFCN` (``--arch explainkit:tiny_fcn``)."""
    return TinyFCN(num_classes=num_classes, width=width)


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
        identity, self.last_layer = class_specific_head(num_classes, prototypes_per_class)
        self.register_buffer("prototype_class_identity", identity, persistent=False)
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



def _synthetic(model: nn.Module, input_size: int = 64) -> nn.Module:
    model.explainkit_preprocessing = dict(SYNTHETIC_PREPROCESSING, input_size=(input_size, input_size))
    return model


def case_based_net(num_classes: int = 3, num_prototypes: int = 15, channels: Sequence[int] = (32, 32, 32, 10),
                   image_size: int = 64) -> CaseBasedNet:
    """The case-based prototype autoencoder of Li et al. (2018).

    See :class:`~explainkit.prototypes.models.casebased.CaseBasedNet`.
    """
    return _synthetic(CaseBasedNet(num_classes, num_prototypes, tuple(channels), image_size), image_size)


def st_protopnet(num_classes: int = 3, prototypes_per_class: int = 4, prototype_dim: int = 32,
                 widths: Sequence[int] = WIDTHS, similarity: str = "projection") -> STProtoPNet:
    """ST-ProtoPNet (Wang et al. 2023) on TinyCNN blocks.

    See :class:`~explainkit.prototypes.models.stprotopnet.STProtoPNet`.
    """
    return _synthetic(STProtoPNet(TinyCNN(num_classes, widths).features, widths[-1], num_classes,
                                  prototypes_per_class, prototype_dim, similarity))


def tversky_net(num_classes: int = 3, latent_dim: int = 32, num_features: int = 16, intersection: str = "product",
                difference: str = "ignorematch", widths: Sequence[int] = WIDTHS) -> TverskyNet:
    """A Tversky projection head (Doumbouya et al. 2025) on TinyCNN blocks.

    See :class:`~explainkit.prototypes.models.tversky.TverskyNet`.
    """
    return _synthetic(TverskyNet(TinyCNN(num_classes, widths).features, widths[-1], num_classes, latent_dim,
                                 num_features, intersection, difference))


def hopfield_net(num_classes: int = 3, patterns_per_class: int = 4, latent_dim: int = 32, beta: float | None = None,
                 widths: Sequence[int] = WIDTHS) -> HopfieldNet:
    """A Hopfield association prototype layer (Ramsauer et al. 2021) on TinyCNN blocks.

    See :class:`~explainkit.prototypes.models.hopfield.HopfieldNet`.
    """
    return _synthetic(HopfieldNet(TinyCNN(num_classes, widths).features, widths[-1], num_classes, patterns_per_class,
                                  latent_dim, beta))


def cbc_net(num_classes: int = 3, num_components: int = 9, latent_dim: int = 32, head: str = "cbc",
            sigma: float = 1.0, priors: bool = False, widths: Sequence[int] = WIDTHS) -> CBCNet:
    """RBF detection with a CBC or RBF head (Saralajew et al. 2019, 2025) on TinyCNN blocks.

    See :class:`~explainkit.prototypes.models.cbc.CBCNet`.
    """
    return _synthetic(CBCNet(TinyCNN(num_classes, widths).features, widths[-1], num_classes, num_components,
                             latent_dim, head, sigma, priors))


def prob_psenn(num_classes: int = 3, prototypes_per_class: int = 4, prototype_dim: int = 32, eval_samples: int = 16,
               sample_seed: int = 0, widths: Sequence[int] = WIDTHS) -> ProbPSENN:
    """Prob-PSENN (Vadillo et al. 2024) on TinyCNN blocks.

    See :class:`~explainkit.prototypes.models.probpsenn.ProbPSENN`.
    """
    return _synthetic(ProbPSENN(TinyCNN(num_classes, widths).features, widths[-1], num_classes, prototypes_per_class,
                                prototype_dim, eval_samples, sample_seed))


def scaleprotoseg(num_classes: int = 3, prototypes_per_class_scale: int = 2, prototype_dim: int = 16,
                  dilations: Sequence[int] = (1, 2, 4, 6), num_groups: int = 3, widths: Sequence[int] = (16, 32, 64)
                  ) -> ScaleProtoSeg:
    """ScaleProtoSeg (Porta et al. 2025) on the first TinyCNN blocks (stride 4: a 16×16 latent map at 64 px).

    Reduced from the reference (DeepLab-v2 ResNet-101 at output stride 8, atrous rates 6, 12, 18,
    24, D = 64, 3 prototypes per class and scale): ``len(widths)`` TinyCNN blocks, rates 1, 2, 4, 6
    on the 16×16 map, D = 16, 2 prototypes per class and scale; G = 3 groups per class as in the
    reference. See :class:`~explainkit.prototypes.models.scaleprotoseg.ScaleProtoSeg`.
    """
    return _synthetic(ScaleProtoSeg(TinyCNN(num_classes, widths).features, widths[-1], num_classes,
                                    prototypes_per_class_scale, prototype_dim, dilations, num_groups))
