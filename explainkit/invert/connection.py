"""How strongly a unit drives the output classes: gradient × activation toward the predicted class.

For each image, the predicted class's logit is differentiated with respect to the layer output
(the graph starts at the layer: ``capture_layers(grad_from_layers=True)``), and gradient × value
is summed over the positions the unit's pooling reads. That is the unit's first-order additive
share of the logit; for a spatially mean-pooled channel feeding a linear classifier it equals
``w[class, unit] · activation`` exactly. Averaged over the images predicted as each class, it says
which classes a unit (e.g. one labelled with an artifact concept) pushes up, in logit units.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from explainkit.adapters.activations import Pooler
from explainkit.adapters.targets import select_logits
from explainkit.analyzers.metric import metric
from explainkit.hooks import capture_layers
from explainkit.loading.handle import ModelHandle

__all__ = ["batch_contributions", "class_connection"]


def batch_contributions(handle: ModelHandle, inputs: torch.Tensor, pooler: Pooler) -> tuple[np.ndarray, np.ndarray]:
    """Per-image, per-unit gradient × activation toward the predicted class.

    Parameters
    ----------
    handle : ModelHandle
        The model (needs the ``gradients`` capability).
    inputs : torch.Tensor
        (B, 3, H, W) preprocessed inputs.
    pooler : Pooler
        The layer's pooler (its ``module`` is hooked).

    Returns
    -------
    contributions : ndarray
        (B, D) float32 logit contributions of each unit.
    predicted : ndarray
        (B,) int64 predicted class (the differentiated logit).
    """
    with torch.no_grad(), capture_layers(handle.module, {pooler.layer: pooler.module}, grad_from_layers=True) as cap:
        logits = select_logits(handle.forward(inputs))
        leaf = cap[pooler.layer]
        predicted = logits.argmax(1)
        target = logits.gather(1, predicted[:, None]).sum()
        (grad,) = torch.autograd.grad(target, leaf)
        contrib = pooler.contribution(leaf.detach(), grad)
    return contrib.cpu().numpy().astype(np.float32), predicted.cpu().numpy().astype(np.int64)


def class_connection(contributions: np.ndarray, predicted: np.ndarray, class_names: Sequence[str],
                     top: int = 3) -> dict[str, Any]:
    """Summarise one unit's contributions per predicted class.

    Parameters
    ----------
    contributions : ndarray
        (N,) the unit's contribution toward each image's predicted class (logit units).
    predicted : ndarray
        (N,) predicted class per image.
    class_names : sequence of str
        Names by class index (indices beyond it are named by number).
    top : int
        Classes listed, strongest first.

    Returns
    -------
    dict
        ``method``, ``strength`` (the largest per-class mean, logit), ``top_class`` and ``classes``
        (``[{"class", "mean_contribution"}]`` as metrics with n = images predicted as the class).
    """
    rows = []
    for k in np.unique(predicted):
        sel = predicted == k
        name = class_names[k] if k < len(class_names) else str(int(k))
        rows.append({"class": name, "mean_contribution": metric(float(contributions[sel].mean()), n=int(sel.sum()),
                                                                unit="logit", higher_is_better=None)})
    rows.sort(key=lambda r: -r["mean_contribution"]["value"])
    best = rows[0] if rows else None
    return {
        "method": "gradient x activation toward the predicted class, mean over images predicted as each class",
        "unit": "logit",
        "strength": best["mean_contribution"]["value"] if best else None,
        "top_class": best["class"] if best else None,
        "classes": rows[:top],
    }
