"""Input-level attributions from captum, usable wherever a CAM method is (no module hooks needed).

Saliency, Integrated Gradients, SmoothGrad (``NoiseTunnel`` over Saliency), Occlusion and
GradientSHAP attribute the target to input pixels, so they also explain TorchScript models
(``handle.module_hooks`` False). Each returns a (B, H, W) map reduced over input channels:
``reduce="abs"`` (default) sums absolute attributions, ``reduce="sum"`` keeps the signed sum (the
post-processing ReLU then keeps positive evidence). What is attributed is the target bound on the
clean pass (any target, per-image data included); captum's own random draws run under a forked RNG
seeded with ``run.seed``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from explainkit.adapters import ClassLogit
from explainkit.cam.engine import CamRun
from explainkit.cam.methods import register_method
from explainkit.errors import ConfigError
from explainkit.hooks import eval_mode
from explainkit.options import Option

__all__ = ["REDUCE", "gradient_shap", "integrated_gradients", "occlusion", "reduce_channels", "saliency", "smoothgrad"]


def _forward(run: CamRun) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Captum ``forward_func(x, rows)``: the bound target's (n,) scores, row ``j`` from image ``rows[j]``.

    The image index travels as an additional forward argument, which captum expands exactly as it
    expands the inputs (repeated for Integrated Gradients' steps, interleaved for NoiseTunnel and
    GradientSHAP samples), so per-image targets stay with their image.
    """
    assert run.bound is not None, "record() first"
    bound = run.bound
    return lambda x, rows: bound(run.handle.forward(x), rows.cpu())


#: ``reduce``: how attributions are summed over input channels.
REDUCE = Option("choice", choices=("abs", "sum"), help="sum of absolute attributions over channels, or the signed sum")
_SAMPLES = Option("int", low=1, help="noisy samples per image")


def reduce_channels(attr: torch.Tensor, reduce: str) -> torch.Tensor:
    """(B, C, H, W) attributions → (B, H, W): the sum of absolute values (``"abs"``) or the signed sum."""
    attr = attr.detach()
    return (attr.abs() if reduce == "abs" else attr).sum(dim=1).float()


def _attribute(run: CamRun, make: Callable[[Callable], Any], reduce: str, *, needs_grad: bool = True,
               **kwargs: Any) -> torch.Tensor:
    if needs_grad and not run.handle.gradients:
        raise ConfigError("this attribution needs gradients, which the model does not support; use occlusion")
    fn = _forward(run)
    b = run.inputs.shape[0]
    step = max(1, min(int(run.batch_size), b))
    out = []
    with eval_mode(run.handle.module), torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.seed)
        for start in range(0, b, step):  # chunks of run.batch_size rows: bounded autograd graphs
            inputs = run.inputs[start:start + step].clone().requires_grad_(needs_grad)
            rows = run.rows[start:start + step].to(inputs.device)
            out.append(reduce_channels(make(fn).attribute(inputs, additional_forward_args=(rows,), **kwargs), reduce))
    return torch.cat(out)


@register_method("saliency", "Saliency (Simonyan et al., 2014; captum)", "input", default=True,
                 options={"reduce": REDUCE})
def saliency(run: CamRun, *, reduce: str = "abs") -> torch.Tensor:
    """Input gradient ``dy/dx`` (taken from the run when a shared pass already computed it)."""
    if run.input_gradient is not None and isinstance(run.target, ClassLogit) and run.target.output_key is None:
        return reduce_channels(run.input_gradient, reduce)
    from captum.attr import Saliency

    return _attribute(run, Saliency, reduce, abs=False)


@register_method("integrated_gradients", "Integrated Gradients (Sundararajan et al., 2017; captum)", "input",
                 aliases=("ig",), options={
                     "n_steps": Option("int", low=1, help="Gauss–Legendre points (the first try with delta_tolerance)"),
                     "reduce": REDUCE,
                     "delta_tolerance": Option("float", low=0, low_open=True,
                                               help="double the steps per image until |convergence delta| <= this "
                                                    "fraction of |f(x) - f(0)| (default: fixed n_steps)"),
                     "max_steps": Option("int", low=1, help="most steps with delta_tolerance"),
                 })
def integrated_gradients(run: CamRun, *, n_steps: int = 16, reduce: str = "abs", delta_tolerance: float | None = None,
                         max_steps: int = 128) -> torch.Tensor:
    """Integrated Gradients from an all-zero baseline (Gauss–Legendre, ``n_steps`` points).

    With ``delta_tolerance``, the number of steps is tied to captum's convergence delta
    (completeness error ``sum(attributions) - (f(x) - f(0))``): each image starts at ``n_steps``
    and doubles until ``|delta| <= delta_tolerance * |f(x) - f(0)|`` or ``max_steps``; the steps
    each image needed are left in ``run.cache["integrated_gradients_steps"]``.
    """
    from captum.attr import IntegratedGradients

    if delta_tolerance is None:
        return _attribute(run, IntegratedGradients, reduce, baselines=0.0, n_steps=int(n_steps),
                          internal_batch_size=max(1, int(run.batch_size)))
    batch = max(run.batch_size, run.inputs.shape[0])
    fn = _forward(run)
    b = run.inputs.shape[0]
    out = torch.empty(run.inputs.shape[0], *run.inputs.shape[2:], device=run.inputs.device)
    used = torch.zeros(b, dtype=torch.long)
    todo = torch.arange(b)
    steps = int(n_steps)
    with eval_mode(run.handle.module):
        while todo.numel():
            rows = todo.to(run.inputs.device)
            x = run.inputs[rows].clone().requires_grad_(True)
            attr, delta = IntegratedGradients(fn).attribute(x, baselines=0.0, n_steps=steps,
                                                            additional_forward_args=(rows,), internal_batch_size=batch,
                                                            return_convergence_delta=True)
            with torch.no_grad():
                gap = fn(run.inputs[rows], rows) - fn(torch.zeros_like(run.inputs[rows]), rows)
            done = (delta.detach().abs().cpu() <= float(delta_tolerance) * gap.abs().cpu()) | (2 * steps > max_steps)
            out[rows[done.to(rows.device)]] = reduce_channels(attr[done.to(attr.device)], reduce)
            used[todo[done]] = steps
            todo = todo[~done]
            steps *= 2
    run.cache["integrated_gradients_steps"] = used
    return out


@register_method("smoothgrad", "SmoothGrad (Smilkov et al., 2017; captum NoiseTunnel)", "input", options={
    "n_samples": _SAMPLES, "noise_level": Option("float", low=0, help="noise sd as a fraction of the batch's range"),
    "reduce": REDUCE})
def smoothgrad(run: CamRun, *, n_samples: int = 16, noise_level: float = 0.15, reduce: str = "abs") -> torch.Tensor:
    """Mean input gradient over noisy copies, sd ``noise_level * (max(x) - min(x))`` of the batch."""
    from captum.attr import NoiseTunnel, Saliency

    span = float(run.inputs.max() - run.inputs.min())
    return _attribute(run, lambda f: NoiseTunnel(Saliency(f)), reduce, nt_type="smoothgrad",
                      nt_samples=int(n_samples), nt_samples_batch_size=max(1, run.batch_size // run.inputs.shape[0]),
                      stdevs=float(noise_level) * span, abs=False)


@register_method("occlusion", "Occlusion (Zeiler & Fergus, 2014; captum)", "input", options={
    "window": Option("int", low=1, help="side of the occluded square in pixels (default 1/8 of the side)"),
    "stride": Option("int", low=1, help="step between windows (default: the window)"), "reduce": REDUCE})
def occlusion(run: CamRun, *, window: int | None = None, stride: int | None = None,
              reduce: str = "abs") -> torch.Tensor:
    """Score change when a ``window`` square (default 1/8 of the side) is set to 0; gradient-free.

    The default ``stride`` equals the window (64 occlusions per image); a smaller stride gives
    smoother maps at ``(side / stride)^2`` forward passes per image.
    """
    from captum.attr import Occlusion

    c, h, w = run.inputs.shape[1:]
    win = int(window or max(1, min(h, w) // 8))
    step = int(stride or win)
    return _attribute(run, Occlusion, reduce, sliding_window_shapes=(c, win, win), strides=(c, step, step),
                      baselines=0.0, perturbations_per_eval=max(1, run.batch_size // run.inputs.shape[0]),
                      needs_grad=False)


@register_method("gradient_shap", "GradientSHAP (Lundberg & Lee, 2017; captum)", "input", options={
    "n_samples": _SAMPLES, "n_baselines": Option("int", low=1, help="baselines: a zero image and Gaussian noise"),
    "reduce": REDUCE})
def gradient_shap(run: CamRun, *, n_samples: int = 16, n_baselines: int = 4, reduce: str = "abs") -> torch.Tensor:
    """Expected gradients × (input − baseline) over a zero image and Gaussian-noise baselines."""
    from captum.attr import GradientShap

    x = run.inputs
    g = torch.Generator().manual_seed(run.seed)
    noise = torch.randn((max(0, int(n_baselines) - 1), *x.shape[1:]), generator=g) * float(x.std())
    baselines = torch.cat([torch.zeros((1, *x.shape[1:])), noise]).to(x.device)
    return _attribute(run, GradientShap, reduce, baselines=baselines, n_samples=int(n_samples))
