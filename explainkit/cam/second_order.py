"""Methods with a backward pass of their own on the clean input: ShapleyCAM and Finer-CAM.

ShapleyCAM needs the Hessian-vector product at the target layer (a second-order backward, which
the shared first-order pass does not build); Finer-CAM differentiates a contrastive target instead
of the explained one. Both reuse the layer maps and the bound class of the clean pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from explainkit.adapters import ClassLogit, Target, select_logits
from explainkit.cam.engine import CamRun, LayerData
from explainkit.cam.methods import EIGEN_SMOOTH, get_method, list_methods, register_method, weighted_sum
from explainkit.errors import ConfigError
from explainkit.options import Option

__all__ = ["FinerTarget", "finercam", "shapleycam"]


def _second_order(run: CamRun) -> dict[str, LayerData]:
    """Layer maps with gradients and Hessian-vector products of the clean inputs (cached per call)."""
    if "second_order" not in run.cache:
        _, _, run.cache["second_order"] = run.capture(run.inputs, run.rows, gradients=True, hvp=True)
    return run.cache["second_order"]


@register_method("shapleycam", "ShapleyCAM (Cai, 2025)", "backward", peer="ShapleyCAM", aliases=("shapley-cam",),
                 options={"eigen_smooth": EIGEN_SMOOTH})
def shapleycam(layer: LayerData, run: CamRun, *, eigen_smooth: bool = False) -> torch.Tensor:
    """ShapleyCAM: ``w_k = mean_ij (g - H A / 2)^k_ij``; map ``sum_k w_k A^k``.

    ``H A`` is the Hessian of the target score with respect to the layer's activations times the
    activations (a second-order backward from the layer). The weights are the second-order
    Taylor estimate of each channel's Shapley value (arXiv 2501.06261). After a piecewise-linear
    head (ReLU, pooling, a linear layer) and a plain logit target ``H = 0`` and ShapleyCAM equals
    Grad-CAM; the paper uses the ReST target (:class:`explainkit.adapters.ReSTScore`), whose
    softmax term makes ``H`` non-zero. Cost: one forward and a double backward to the layer.
    """
    data = _second_order(run)[layer.name]
    assert data.gradient is not None and data.hvp is not None
    weights = (data.gradient - 0.5 * data.hvp).mean(dim=data.spatial_dims)
    return weighted_sum(weights, layer.activation, eigen_smooth)


class FinerTarget(Target):
    """Finer-CAM's contrastive score: ``sum_j p_j (y_c - alpha y_j) / (sum_j p_j + 1e-9)``.

    ``c`` is the explained class, ``j`` its comparison classes and ``p = softmax(y)``
    (differentiated through, as pytorch-grad-cam's ``FinerWeightedTarget``).

    Parameters
    ----------
    main : torch.Tensor
        (B,) explained class per image.
    comparisons : torch.Tensor
        (B, m) comparison classes per image.
    alpha : float
        Strength of the comparison.
    output_key : str or int, optional
        Entry of the output holding the logits.
    """

    def __init__(self, main: torch.Tensor, comparisons: torch.Tensor, alpha: float,
                 output_key: str | int | None = None) -> None:
        self.main = main
        self.comparisons = comparisons
        self.alpha = float(alpha)
        self.output_key = output_key

    def scores(self, output: Any, rows: torch.Tensor) -> torch.Tensor:
        """(n,) contrastive scores."""
        logits = select_logits(output, self.output_key)
        rows = rows.to(self.main.device)
        main = logits.gather(1, self.main[rows].to(logits.device)[:, None])
        comps = self.comparisons[rows].to(logits.device)
        others = logits.gather(1, comps)
        weights = torch.softmax(logits, dim=-1).gather(1, comps)
        return (weights * (main - self.alpha * others)).sum(1) / (weights.sum(1) + 1e-9)


def comparison_classes(logits: torch.Tensor, main: torch.Tensor, ranks: Sequence[int]) -> torch.Tensor:
    """(B, m) classes at ``ranks`` when sorted by ``|y_k - y_main|`` (rank 0 is the class itself)."""
    ranks = [int(r) for r in ranks if int(r) < logits.shape[1]]
    if not ranks:
        raise ConfigError(f"no comparison class: a model with {logits.shape[1]} classes has no rank "
                          "among the requested comparisons")
    distance = (logits - logits.gather(1, main[:, None])).abs()
    order = torch.argsort(distance, dim=1, stable=True)
    return order[:, ranks]


@register_method("finercam", "Finer-CAM (Zhang et al., 2025)", "backward", peer="FinerCAM", aliases=("finer-cam",),
                 options={
                     "base": Option("choice", choices=lambda: list_methods("gradient"),
                                    help="gradient method run on the contrastive target"),
                     "alpha": Option("float", low=0, help="strength of the comparison with similar classes"),
                     "comparisons": Option("int", many=True, or_one=True, low=1,
                                           help="ranks of the comparison classes by logit similarity (1 = closest)"),
                 })
def finercam(layer: LayerData, run: CamRun, *, base: str = "gradcam", alpha: float = 1.0,
             comparisons: Sequence[int] | int = (1, 2, 3)) -> torch.Tensor:
    """Finer-CAM: the ``base`` method on the explained class contrasted with its most similar classes.

    The classes compared are those whose logits are closest to the explained class's on the clean
    image (ranks ``comparisons`` of ``|y_k - y_c|``, 1 the closest; ranks beyond the number of
    classes are dropped, as pytorch-grad-cam); the target is :class:`FinerTarget`. With
    ``alpha = 0`` it is the base method on a softmax-weighted logit. Needs a class target. Cost:
    one extra backward to the layer.
    """
    classes = run.classes
    if classes is None or not isinstance(run.bound, ClassLogit):
        raise ConfigError("finercam contrasts classes: it needs a class target (a class index per image, or none "
                          "for the predicted class)")
    ranks = (comparisons,) if isinstance(comparisons, int) else tuple(comparisons)
    key = ("finer", float(alpha), ranks)
    if key not in run.cache:
        logits = select_logits(run.output, run.bound.output_key).detach()
        comps = comparison_classes(logits, classes.to(logits.device), ranks)
        target = FinerTarget(classes.to(logits.device), comps, alpha, run.bound.output_key)
        _, _, run.cache[key] = run.capture(run.inputs, run.rows, gradients=True, target=target)
    method = get_method(base)
    if method.kind != "gradient":
        raise ConfigError(f"finercam's base must be a gradient method ({', '.join(list_methods('gradient'))})")
    return method.compute(run.cache[key][layer.name], run)
