"""FullGrad (Srinivas & Fleuret, NeurIPS 2019, arXiv 1905.00780).

The full-gradient decomposition of the score: the input-gradient term ``x * dy/dx`` plus, for every
layer with a bias, the bias-gradient term ``b_c * dy/dz_c`` at its output ``z``. The saliency map is

    S(x) = psi(|x * dy/dx|) + sum_l sum_c psi(|b_c * dy/dz_c|),

``psi`` = min-max to [0, 1] and bilinear upsampling to the input. Target layers are not used: every
``Conv2d`` and ``BatchNorm2d`` with a bias is (for batch norm in eval mode the effective bias
``beta - mu gamma / sqrt(var + eps)``). One forward and one backward to the input, with the bias
layers' outputs recorded (each output is cloned before later modules can change it in place).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from explainkit.cam.engine import CamRun
from explainkit.cam.methods import EIGEN_SMOOTH, first_component, register_method
from explainkit.cam.postprocess import minmax, resize
from explainkit.errors import ConfigError
from explainkit.hooks import capture_layers, eval_mode
from explainkit.options import Option

__all__ = ["bias_layers", "fullgrad"]


def bias_layers(model: nn.Module) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """Name → (module, (K,) effective bias) of every ``Conv2d`` / ``BatchNorm2d`` with a bias."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.bias is not None:
            out[name] = (m, m.bias.detach())
        elif isinstance(m, nn.BatchNorm2d) and m.bias is not None:
            if m.running_mean is None or m.running_var is None:
                raise ConfigError(f"FullGrad needs batch-norm running statistics; {name!r} keeps none")
            scale = m.weight.detach() if m.weight is not None else torch.ones_like(m.bias)
            out[name] = (m, m.bias.detach() - m.running_mean * scale / torch.sqrt(m.running_var + m.eps))
    return out


def _psi(maps: torch.Tensor, variant: str) -> torch.Tensor:
    """(B, K, h, w) absolute contributions → (B, h, w) normalised sums (before resizing).

    ``per_channel``: each channel min-maxed, then summed (resizing is linear, so summing first is
    exact); ``per_layer``: the whole (K, h, w) tensor min-maxed (eps 1e-6), then summed over channels.
    """
    if variant == "per_channel":
        return minmax(maps.flatten(0, 1)).view_as(maps).sum(dim=1)
    return minmax(maps.flatten(1), eps=1e-6).view_as(maps).sum(dim=1)


def _upsample(maps: torch.Tensor, size: tuple[int, int], variant: str) -> torch.Tensor:
    if variant == "per_channel":
        return resize(maps, size)
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]


@register_method("fullgrad", "FullGrad (Srinivas & Fleuret, NeurIPS 2019)", "input", peer="FullGrad", hooks=True,
                 aliases=("full-grad",), options={
                     "variant": Option("choice", choices=("per_channel", "per_layer"),
                                       help="psi per channel (the paper's equation, pytorch-grad-cam) or per "
                                            "layer tensor (the authors' code)"),
                     "eigen_smooth": EIGEN_SMOOTH,
                 })
def fullgrad(run: CamRun, *, variant: str = "per_channel", eigen_smooth: bool = False) -> torch.Tensor:
    """FullGrad saliency (see the module docstring), (B, H, W) at input resolution.

    Parameters
    ----------
    variant : {"per_channel", "per_layer"}
        ``"per_channel"`` (default): ``psi`` on every channel of every term, as the paper's
        equation and pytorch-grad-cam (min-max eps 1e-7, bilinear with ``align_corners=False``);
        ``"per_layer"``: ``psi`` on each term's whole (C, h, w) tensor (eps 1e-6, then summed over
        channels, upsampled with ``align_corners=True``), as the authors' code.
    eigen_smooth : bool
        pytorch-grad-cam's eigen smoothing of FullGrad: the normalised maps of every term (input
        channels, then one per bias layer) min-maxed and downsampled to 1/8 of the input size, their
        first principal component (:func:`explainkit.cam.methods.first_component`), min-maxed and
        upsampled back.
    """
    assert run.bound is not None, "record() first"
    model = run.handle.module
    layers = bias_layers(model)
    if not run.handle.gradients:
        raise ConfigError("FullGrad needs gradients, which the model does not support")
    size = run.size
    with eval_mode(model), torch.enable_grad(), capture_layers(
            model, {n: m for n, (m, _) in layers.items()}, clone=True, tensors_only=False) as cap:
        x = run.inputs.clone().requires_grad_(True)
        scores = run.bound(run.handle.forward(x), run.rows)
        outs = [(name, out) for name in layers for out in cap.outputs[name] if out.dim() == 4 and out.requires_grad]
        grads = torch.autograd.grad(scores.sum(), [x, *(o for _, o in outs)], allow_unused=True)
    input_term = (x.detach() * grads[0]).abs()
    terms = []  # (B, h, w) per term, normalised, at feature resolution
    if variant == "per_channel":
        terms += [minmax(input_term.flatten(0, 1)).view_as(input_term)[:, c] for c in range(input_term.shape[1])]
    else:
        terms.append(_psi(input_term, variant))
    for (name, _), g in zip(outs, grads[1:]):
        if g is None:
            continue
        bias = layers[name][1].to(g)
        terms.append(_psi((bias[None, :, None, None] * g).abs().float(), variant))
    maps = torch.stack([_upsample(t.float(), size, variant) for t in terms], dim=1)  # (B, T, H, W)
    if not eigen_smooth:
        return maps.sum(dim=1)
    small = (max(1, size[0] // 8), max(1, size[1] // 8))
    scaled = resize(minmax(maps.flatten(0, 1)), small).view(maps.shape[0], maps.shape[1], *small)
    return resize(minmax(first_component(scaled)), size)
