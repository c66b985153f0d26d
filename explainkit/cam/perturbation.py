"""Gradient-free CAMs that weight channels by extra forward passes: Score-CAM and Ablation-CAM.

Both enumerate (image, channel) pairs in chunks of ``run.batch_size`` rows; each chunk builds only
its own ``(batch_size, C, H, W)`` inputs, so the ``B x K x C x H x W`` tensor of all masked
copies is never materialised, and every pass runs under ``torch.no_grad()``.
"""

from __future__ import annotations

from typing import Any

import torch

from explainkit.cam.engine import CamRun, LayerData, chunks
from explainkit.cam.methods import EIGEN_SMOOTH, expand, register_method, weighted_sum
from explainkit.cam.postprocess import interpolate
from explainkit.options import Option

__all__ = ["ablationcam", "scorecam"]


def _masks(acts: torch.Tensor, size: tuple[int, ...], align_corners: bool, eps: float) -> torch.Tensor:
    """(n, *spatial) activation maps → (n, *size) masks min-max scaled to [0, 1] (constant maps → 0).

    Bilinear for images, trilinear for volumes.
    """
    # (1, n, h, w): the same kernel path as interpolating a (B, K, h, w) stack at once
    up = interpolate(acts[None], size, align_corners=align_corners)[0]
    flat = up.flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    masks = (flat - lo) / (hi - lo + eps)
    return masks.view_as(up)


@register_method("scorecam", "Score-CAM (Wang et al., CVPR-W 2020)", "perturbation", peer="ScoreCAM",
                 aliases=("score-cam",), options={
                     "variant": Option("choice", choices=("paper", "channel_softmax"),
                                       help="the authors' weights, or pytorch-grad-cam's softmax over channels"),
                     "score": Option("choice", choices=("probability", "target"),
                                     help="paper variant: softmax probability or the target score"),
                     "baseline": Option("choice", choices=("zeros",),
                                        help="paper variant: subtract the score of an all-zero input"),
                     "eigen_smooth": EIGEN_SMOOTH,
                 })
def scorecam(layer: LayerData, run: CamRun, *, variant: str = "paper", score: str = "probability",
             baseline: str | None = None, eigen_smooth: bool = False) -> torch.Tensor:
    """Score-CAM: weight each channel by the score of the input masked with that channel.

    ``M_k`` = activation map ``A^k`` upsampled bilinearly to the input size and min-max scaled
    to [0, 1]; the masked copy ``x * M_k`` multiplies the (normalised) model input.

    * ``variant="paper"`` (default; the authors' code): ``w_k = f_c(x * M_k)`` with ``f_c`` the
      softmax probability of the explained class (``score="probability"``) or the target score
      (``score="target"``); channels whose map is constant get ``w_k = 0``; upsampling with
      ``align_corners=False``. ``baseline="zeros"`` subtracts ``f_c`` of an all-zero input, the
      paper's "increase of confidence" (a constant shift of all weights).
    * ``variant="channel_softmax"``: pytorch-grad-cam's version, ``w = softmax_k(y(x * M_k))``
      over channels of the target score (logit), masks upsampled with ``align_corners=True``
      and scaled with eps 1e-8. The softmax across channels is not in the authors' code and
      makes any baseline subtraction irrelevant; offered for parity.

    The map is ``sum_k w_k A^k``. Cost: ``B * K`` extra forward passes in chunks of
    ``run.batch_size``; the target scores copy ``j`` as a copy of its own image (per-image targets
    such as segmentation masks stay with their image for any ``batch_size``).
    """
    acts = layer.activation
    b, k = acts.shape[:2]
    x = run.inputs
    paper = variant == "paper"
    probability = paper and score == "probability"
    weights = torch.empty(b * k)
    for idx in chunks(b * k, run.batch_size):
        rows, chans = idx // k, idx % k
        maps = acts[rows, chans]
        masks = _masks(maps, run.size, align_corners=not paper, eps=0.0 if paper else 1e-8)
        if paper:
            flat = maps.flatten(1)
            constant = (flat.max(dim=1).values == flat.min(dim=1).values)
            flat_const = constant.view(-1, *[1] * (masks.dim() - 1))
            masks = torch.where(flat_const, torch.zeros_like(masks), torch.nan_to_num(masks))
        s = run.scores(x[rows.to(x.device)] * masks[:, None], rows, probability=probability)
        if paper:
            s = torch.where(constant.cpu(), torch.zeros_like(s), s)
        weights[idx] = s
    weights = weights.view(b, k)
    if paper and baseline == "zeros":
        ref = run.scores(torch.zeros_like(x), run.rows, probability=probability)
        weights = weights - ref[:, None]
    if not paper:
        weights = torch.softmax(weights, dim=1).to(acts.device)
        if not eigen_smooth:
            return _sequential_sum(expand(weights, acts) * acts)
    return weighted_sum(weights.to(acts.device), acts, eigen_smooth)


def _sequential_sum(terms: torch.Tensor) -> torch.Tensor:
    """Sum (B, K, h, w) over K one channel at a time in float32, as NumPy does in pytorch-grad-cam.

    With softmax weights all close to 1/K the map is a large common offset plus a small spatial
    signal, so min-max scaling magnifies summation-order rounding (~1e-7) by the offset/range
    ratio; the parity variant therefore accumulates in the peer's order.
    """
    out = terms[:, 0].clone()
    for k in range(1, terms.shape[1]):
        out += terms[:, k]
    return out


@register_method("ablationcam", "Ablation-CAM (Desai & Ramaswamy, WACV 2020)", "perturbation", peer="AblationCAM",
                 aliases=("ablation-cam",),
                 options={"ablation_value": Option("float", help="value an ablated channel is set to"),
                          "eigen_smooth": EIGEN_SMOOTH})
def ablationcam(layer: LayerData, run: CamRun, *, ablation_value: float = 0.0,
                eigen_smooth: bool = False) -> torch.Tensor:
    """Ablation-CAM: ``w_k = (y - y_k) / y``, ``y_k`` the score with channel ``k`` set to a value.

    Channel ``k`` of the target layer's output is replaced by ``ablation_value`` (0, as in the
    paper) for every position (for token layers, every token including the class token, as
    pytorch-grad-cam's ``AblationLayerVit``); the layers after the target are re-run. The map is
    ``sum_k w_k A^k``. A negative score ``y`` flips the sign of all weights (as in the paper's
    formula). Cost: ``B * K`` extra forward passes in chunks of ``run.batch_size``.

    pytorch-grad-cam replaces channels by ``min(A) - 1e7`` when the layer has negative values and,
    because it updates the ablation tensor in place, the value drifts by a further ``-1e7`` per
    row of a chunk; on non-negative (post-ReLU) layers both use 0 and agree.
    """
    assert run.scores0 is not None, "record() first"
    acts = layer.activation
    b, k = acts.shape[:2]
    x = run.inputs
    axis = layer.channel_axis
    y = run.scores0.float().cpu()
    ablated = torch.empty(b * k)
    for idx in chunks(b * k, run.batch_size):
        rows, chans = idx // k, idx % k
        dev_chans = chans.to(x.device)

        def ablate(t: torch.Tensor, chans: torch.Tensor = dev_chans) -> torch.Tensor:
            t = t.clone()
            t.movedim(axis, 1)[torch.arange(t.shape[0], device=t.device), chans] = ablation_value
            return t

        def edit(_name: str, out: Any, ablate: Any = ablate) -> Any:
            if layer.key is None:
                return ablate(out)
            return type(out)((key, ablate(v) if key == layer.key else v) for key, v in out.items())

        ablated[idx] = run.scores(x[rows.to(x.device)], rows, edit=edit, layer=layer.module)
    weights = (y[:, None] - ablated.view(b, k)) / y[:, None]
    return weighted_sum(weights.to(acts.device), acts, eigen_smooth)
