"""Smooth Grad-CAM++ (Omeiza, Speakman, Cintas & Weldermariam 2019, arXiv 1908.01224).

SmoothGrad's input-noise averaging applied at the level of the derivatives Grad-CAM++ uses:
for ``n`` noisy copies ``x_m = x + N(0, sigma^2)`` with gradients ``g_m = dy/dA(x_m)`` at the target
layer (the class stays the one explained on the clean image),

    D1 = mean_m g_m,   D2 = mean_m g_m^2,   D3 = mean_m g_m^3,
    alpha^k_ij = N^k_ij / (2 D2^k_ij + S_k D3^k_ij + eps),   0 where D2 == 0,
    w_k = sum_ij alpha^k_ij ReLU(D1^k_ij),   map = sum_k w_k A^k,

with ``S_k = sum_ij A^k_ij``. Switches (documented choices, since published implementations
differ):

* ``numerator="grad2"`` (default): ``N = D2``, the second-derivative term of Grad-CAM++
  (what torchcam uses, calling the paper's ``D1`` a typo); ``numerator="grad1"``: ``N = D1`` as
  the paper's equation is printed.
* ``activations="clean"`` (default): ``A`` (in ``S_k`` and the final sum) from the clean input;
  ``activations="noisy"``: the mean of the noisy copies' activations.

Noise: ``sigma = noise_level * (max(x) - min(x))`` per image (SmoothGrad's convention, 10–20 %
recommended; default 0.15), or an absolute ``sigma`` in model-input units when given. The ``n``
noise tensors are shared by all images of the batch and drawn from ``seed``, so a batch gives the
same maps as its images one by one. Cost: ``n`` forward passes plus ``n`` backward passes that stop
at the target layer, in chunks of ``run.batch_size`` rows.
"""

from __future__ import annotations

import torch

from explainkit.cam.engine import CamRun, LayerData, chunks
from explainkit.cam.methods import EIGEN_SMOOTH, register_method, weighted_sum
from explainkit.options import Option

__all__ = ["noisy_moments", "smoothgradcampp"]


def _noise(seed: int, sample: int, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(sample)) % (2**63))
    return torch.randn(shape, generator=g)


def noisy_moments(run: CamRun, n_samples: int, noise_level: float, sigma: float | None
                  ) -> dict[str, tuple[torch.Tensor, ...]]:
    """Per layer ``(D1, D2, D3, mean activation)`` over ``n_samples`` noisy copies (cached per call).

    Parameters
    ----------
    run : CamRun
        The recorded call.
    n_samples : int
        Number of noisy copies per image.
    noise_level : float
        Noise standard deviation as a fraction of each image's value range.
    sigma : float or None
        Absolute standard deviation (overrides ``noise_level``).

    Returns
    -------
    dict of str to tuple of torch.Tensor
        Layer name → four (B, K, h, w) tensors.
    """
    key = ("noisy_moments", n_samples, noise_level, sigma)
    if key in run.cache:
        return run.cache[key]
    x = run.inputs
    b = x.shape[0]
    flat = x.flatten(1)
    scale = (flat.max(1).values - flat.min(1).values) * noise_level if sigma is None else torch.full((b,), sigma)
    scale = scale.to(x.device)[:, None, None, None]
    sums: dict[str, list[torch.Tensor]] = {}
    for idx in chunks(n_samples * b, run.batch_size):
        samples, rows = idx // b, idx % b
        noise = torch.stack([_noise(run.seed, int(m), tuple(x.shape[1:])) for m in samples]).to(x.device)
        _, _, layers = run.capture(x[rows.to(x.device)] + scale[rows.to(x.device)] * noise, rows, gradients=True)
        for name, data in layers.items():
            g = data.gradient
            assert g is not None
            terms = (g, g * g, g * g * g, data.activation)
            acc = sums.setdefault(name, [torch.zeros((b, *t.shape[1:]), device=t.device) for t in terms])
            for a, t in zip(acc, terms):
                a.index_add_(0, rows.to(t.device), t)
    out = {name: tuple(a / n_samples for a in acc) for name, acc in sums.items()}
    run.cache[key] = out
    return out


@register_method("smoothgradcampp", "Smooth Grad-CAM++ (Omeiza et al., 2019)", "noise",
                 aliases=("smoothgradcam++", "smooth-grad-cam++"), options={
                     "n_samples": Option("int", low=1, help="noisy copies per image"),
                     "noise_level": Option("float", low=0, help="noise sd as a fraction of each image's value range"),
                     "sigma": Option("float", low=0, help="absolute noise sd in model-input units (overrides "
                                                          "noise_level)"),
                     "numerator": Option("choice", choices=("grad2", "grad1"),
                                         help="numerator of alpha: mean squared gradients or mean gradients"),
                     "activations": Option("choice", choices=("clean", "noisy"),
                                           help="activations for S_k and the weighted sum"),
                     "eps": Option("float", low=0, help="added to alpha's denominator"),
                     "eigen_smooth": EIGEN_SMOOTH,
                 })
def smoothgradcampp(layer: LayerData, run: CamRun, *, n_samples: int = 16, noise_level: float = 0.15,
                    sigma: float | None = None, numerator: str = "grad2", activations: str = "clean",
                    eps: float = 1e-6, eigen_smooth: bool = False) -> torch.Tensor:
    """Smooth Grad-CAM++ (see the module docstring for the formula and the switches).

    Parameters
    ----------
    n_samples : int
        Noisy copies per image (default 16; the SmoothGrad paper suggests about 50).
    noise_level : float
        Noise sd as a fraction of each image's value range (default 0.15).
    sigma : float, optional
        Absolute noise sd in model-input units (overrides ``noise_level``).
    numerator : {"grad2", "grad1"}
        Numerator of alpha: averaged squared gradients (default) or averaged gradients.
    activations : {"clean", "noisy"}
        Activations for ``S_k`` and the weighted sum.
    eps : float
        Added to alpha's denominator (as Grad-CAM++).
    eigen_smooth : bool
        First principal component of ``w_k A^k`` instead of the sum.
    """
    d1, d2, d3, noisy_act = noisy_moments(run, int(n_samples), float(noise_level), sigma)[layer.name]
    a = layer.activation if activations == "clean" else noisy_act
    dims = layer.spatial_dims
    s = a.sum(dim=dims, keepdim=True)
    num = d2 if numerator == "grad2" else d1
    alpha = num / (2 * d2 + s * d3 + eps)
    alpha = torch.where(d2 != 0, alpha, torch.zeros_like(alpha))
    return weighted_sum((alpha * torch.relu(d1)).sum(dim=dims), a, eigen_smooth)
