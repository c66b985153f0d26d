"""Small reference models: the demo classifier and a ProtoPNet-like network for tests and demos.

They are ordinary ``nn.Module`` factories, usable as ``--arch explainkit.models:tiny_cnn(...)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["TinyCNN", "tiny_cnn"]

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
    """Factory for :class:`TinyCNN` (for ``--arch explainkit.models:tiny_cnn``)."""
    return TinyCNN(num_classes=num_classes, widths=tuple(widths))
