"""Guided Backpropagation and Guided Grad-CAM.

Guided Backpropagation (Springenberg et al., ICLR-W 2015) is the input gradient with every ReLU's
backward replaced by ``g_in = g_out * 1[x > 0] * 1[g_out > 0]``: only positive gradients pass
back through positive activations. Guided Grad-CAM (Selvaraju et al., ICCV 2017) multiplies it,
pixel by pixel, with the Grad-CAM map upsampled to the input. The guided backward is obtained by
wrapping the output of every ``nn.ReLU`` module (the model is not modified); ReLUs applied as
functions (``F.relu``) are not guided, exactly as in pytorch-grad-cam, which swaps ``nn.ReLU``
modules. Both attribute the target bound on the clean images, one map per image.
"""

from __future__ import annotations

import torch
from torch import nn

from explainkit.cam.captum_bridge import REDUCE, reduce_channels
from explainkit.cam.engine import CamRun, LayerData
from explainkit.cam.methods import gradcam, register_method
from explainkit.cam.postprocess import combine_layers
from explainkit.errors import ConfigError
from explainkit.hooks import edit_outputs, eval_mode

__all__ = ["guided_backprop", "guided_gradcam", "guided_gradient"]


class _GuidedReLU(torch.autograd.Function):
    """Identity forward on a ReLU's output; backward passes ``g * 1[out > 0] * 1[g > 0]``."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, out: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(out)
        return out.clone()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad * (out > 0).to(grad.dtype) * (grad > 0).to(grad.dtype)


def guided_gradient(run: CamRun) -> torch.Tensor:
    """(B, C, H, W) guided-backpropagation gradient of the bound target with respect to the inputs (cached).

    Raises
    ------
    ConfigError
        The model has no ``nn.ReLU`` module to guide.
    """
    if "guided_gradient" in run.cache:
        return run.cache["guided_gradient"]
    assert run.bound is not None, "record() first"
    model = run.handle.module
    relus = {name: m for name, m in model.named_modules() if isinstance(m, nn.ReLU)}
    if not relus:
        raise ConfigError("guided backpropagation changes the backward of nn.ReLU modules and this model has none "
                          "(ReLU applied as a function, or other activations)")
    with eval_mode(model), edit_outputs(relus, lambda _name, out: _GuidedReLU.apply(out)), torch.enable_grad():
        x = run.inputs.clone().requires_grad_(True)
        scores = run.bound(run.handle.forward(x), run.rows)
        (grad,) = torch.autograd.grad(scores.sum(), x)
    run.cache["guided_gradient"] = grad.detach()
    return run.cache["guided_gradient"]


@register_method("guided_backprop", "Guided Backpropagation (Springenberg et al., 2015)", "input",
                 peer="GuidedBackpropReLUModel", aliases=("guided-backprop", "guidedbackprop"), hooks=True,
                 options={"reduce": REDUCE})
def guided_backprop(run: CamRun, *, reduce: str = "abs") -> torch.Tensor:
    """Guided Backpropagation, reduced over input channels (see the module docstring).

    pytorch-grad-cam's ``GuidedBackpropReLUModel`` returns the (H, W, C) gradient of the first
    image only; here every image gets its map.
    """
    return reduce_channels(guided_gradient(run), reduce)


@register_method("guided_gradcam", "Guided Grad-CAM (Selvaraju et al., ICCV 2017)", "backward",
                 aliases=("guided-gradcam", "guided-grad-cam"), gradients=True, to_input=True,
                 options={"reduce": REDUCE})
def guided_gradcam(layer: LayerData, run: CamRun, *, reduce: str = "abs") -> torch.Tensor:
    """Guided Grad-CAM: guided backpropagation times the [0, 1] Grad-CAM map at input resolution.

    Per pixel and channel ``G_c(x) * M(x)``, ``M`` the layer's Grad-CAM map normalised and
    upsampled as :func:`explainkit.cam.postprocess.combine_layers` does, then reduced over input
    channels. Returned at input resolution.
    """
    cam = combine_layers([gradcam(layer, run)], run.size).to(run.inputs.device)
    return reduce_channels(guided_gradient(run) * cam[:, None], reduce)
