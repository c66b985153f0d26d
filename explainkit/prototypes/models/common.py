"""Pieces the prototype models share: ProtoPNet's class-specific head."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["class_specific_head"]


def class_specific_head(num_classes: int, per_class: int) -> tuple[torch.Tensor, nn.Linear]:
    """ProtoPNet's class-specific prototypes: the (P, K) identity and the last layer (+1 own class, -0.5 others).

    Prototype ``j`` belongs to class ``j // per_class`` (P = K × per_class); the last layer maps
    P prototype activations to K logits without bias.
    """
    num_prototypes = num_classes * per_class
    identity = torch.zeros(num_prototypes, num_classes)
    identity[torch.arange(num_prototypes), torch.arange(num_prototypes) // per_class] = 1
    last = nn.Linear(num_prototypes, num_classes, bias=False)
    with torch.no_grad():
        last.weight.copy_(1.5 * identity.t() - 0.5)
    return identity, last
