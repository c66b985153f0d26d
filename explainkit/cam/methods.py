"""The CAM method registry and the methods computed from one forward and one backward pass.

Notation: activations ``A`` and gradients ``g = dy/dA`` of shape (B, K, h, w) for channel ``k``
and position ``(i, j)``; ``y`` is the target score (by default the logit of the explained class);
``S_k = sum_ij A^k_ij``. Each method returns the *raw* map (B, h, w) — signed and un-normalised —
that :mod:`explainkit.cam.postprocess` turns into a heatmap.

Kinds
-----
``gradient``
    Needs ``A`` and ``g`` of the clean pass (all of them share one forward and one backward).
``activation``
    Needs ``A`` only (same forward).
``noise``
    Needs gradients on noisy copies (:mod:`explainkit.cam.smooth`).
``perturbation``
    Extra forward passes on masked inputs or edited activations
    (:mod:`explainkit.cam.perturbation`).
``input``
    Input-level attributions from captum, no hooks needed
    (:mod:`explainkit.cam.captum_bridge`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from explainkit.cam.engine import CamRun, LayerData
from explainkit.errors import ConfigError
from explainkit.options import Option, bind_options, check_values
from explainkit.registry import Registry

__all__ = ["KINDS", "METHODS", "CamMethod", "get_method", "list_methods", "method_choices", "register_method"]

KINDS = ("gradient", "activation", "noise", "perturbation", "input")
#: Kinds whose methods need only the clean forward pass and (for ``gradient``) one backward pass.
ONE_PASS_KINDS = ("gradient", "activation")


@dataclass(frozen=True)
class CamMethod:
    """A registered explanation method.

    Attributes
    ----------
    name : str
        Registry name (``gradcam``, ``scorecam`` ...).
    title : str
        Human title with the reference.
    kind : str
        One of :data:`KINDS`.
    compute : callable
        ``compute(layer, run, **params) -> (B, h, w)`` for layer methods;
        ``compute(run, **params) -> (B, C, H, W)`` attributions for ``input`` methods.
    peer : str or None
        The pytorch-grad-cam 1.5.7 class it matches numerically with default parameters.
    options : dict of str to Option
        The declared keyword parameters (defaults from ``compute``'s signature).
    default : bool
        Whether the analyzer of its kind (``gradcam`` for layer methods, ``captum`` for input
        methods) runs it when no methods are named.
    """

    name: str
    title: str
    kind: str
    compute: Callable[..., torch.Tensor]
    peer: str | None = None
    options: dict[str, Option] = field(default_factory=dict)
    default: bool = False

    @property
    def defaults(self) -> dict[str, Any]:
        """Keyword parameters and their defaults."""
        return {k: o.default for k, o in self.options.items()}

    @property
    def uses_gradients(self) -> bool:
        """Whether the clean pass needs gradients."""
        return self.kind == "gradient"

    @property
    def uses_layers(self) -> bool:
        """Whether the method reads layer activations (needs module hooks)."""
        return self.kind != "input"

    def check_params(self, params: Mapping[str, Any]) -> None:
        """Raise :class:`ConfigError` for parameters the method does not take or values it does not allow."""
        unknown = sorted(set(params) - set(self.options))
        if unknown:
            allowed = ", ".join(sorted(self.options)) or "none"
            raise ConfigError(f"method {self.name!r} has no parameter {', '.join(unknown)} (takes: {allowed})")
        check_values(f"method {self.name!r}", self.options, params)


#: Every CAM method, in registration order (the modules of :mod:`explainkit.cam` register theirs).
METHODS: Registry[CamMethod] = Registry("CAM method", normalize=lambda n: str(n).strip().lower())


def register_method(name: str, title: str, kind: str, peer: str | None = None, *,
                    options: Mapping[str, Option] | None = None, aliases: Sequence[str] = (),
                    default: bool = False) -> Callable:
    """Decorator registering ``compute`` as method ``name`` (duplicate names raise).

    Parameters
    ----------
    name, title, kind, peer
        See :class:`CamMethod`.
    options : mapping of str to Option, optional
        The declaration of every keyword-only parameter of the function (its default is the
        function's).
    aliases : sequence of str
        Other spellings accepted by :func:`get_method` (lower case), e.g. ``"grad-cam++"``.
    default : bool
        Run by its analyzer when no methods are named.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown method kind {kind!r}")

    def add(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        declared = bind_options(options or {}, fn, f"CAM method {name!r}", keyword_only=True)
        METHODS.register(name, CamMethod(name, title, kind, fn, peer, declared, default), aliases=aliases)
        return fn

    return add


def get_method(name: str) -> CamMethod:
    """The method registered as ``name`` (common spellings like ``grad-cam++`` accepted)."""
    return METHODS.get(name)


def list_methods(kind: str | Sequence[str] | None = None, *, default: bool | None = None) -> list[str]:
    """Registered method names in registration order, optionally of one kind (or several) or only defaults."""
    kinds = (kind,) if isinstance(kind, str) else kind
    return [n for n, m in METHODS.items()
            if (kinds is None or m.kind in kinds) and (default is None or m.default == default)]


def method_choices() -> list[str]:
    """Every name :func:`get_method` accepts: the registered names, then their aliases."""
    return [*METHODS.names(), *METHODS.aliases]


def _weighted_sum(weights: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """``sum_k w_k A^k``: (B, K) weights and (B, K, h, w) activations → (B, h, w)."""
    return (weights[:, :, None, None] * acts).sum(dim=1)


def _grad(layer: LayerData) -> torch.Tensor:
    if layer.gradient is None:  # pragma: no cover - guarded by the kind
        raise ConfigError(f"no gradient recorded at layer {layer.name!r}")
    return layer.gradient


@register_method("gradcam", "Grad-CAM (Selvaraju et al., ICCV 2017)", "gradient", peer="GradCAM",
                 aliases=("grad-cam",), default=True)
def gradcam(layer: LayerData, run: CamRun) -> torch.Tensor:
    """Grad-CAM: ``w_k = mean_ij g^k_ij``; map ``sum_k w_k A^k``."""
    return _weighted_sum(_grad(layer).mean(dim=(2, 3)), layer.activation)


@register_method("gradcampp", "Grad-CAM++ (Chattopadhay et al., WACV 2018)", "gradient", peer="GradCAMPlusPlus",
                 aliases=("gradcam++", "grad-cam++"), default=True, options={
                     "eps": Option("float", low=0, help="added to the denominator of alpha"),
                     "variant": Option("choice", choices=("paper", "torchcam"),
                                       help="'torchcam': torchcam 0.5.0's undivided alpha (for comparisons)"),
                 })
def gradcampp(layer: LayerData, run: CamRun, *, eps: float = 1e-6, variant: str = "paper") -> torch.Tensor:
    """Grad-CAM++ with the closed-form coefficients of eq. 19 of the paper.

    ``alpha^k_ij = g^2 / (2 g^2 + S_k g^3 + eps)`` (0 where ``g == 0``), ``w_k = sum_ij alpha^k_ij
    ReLU(g^k_ij)``, map ``sum_k w_k A^k``. Eq. 19 assumes an exponential of the score; its exp
    factor cancels in alpha and only rescales w. ``eps`` (1e-6, as pytorch-grad-cam) is not
    negligible for the small gradients of deep layers, so maps depend on the target's scale.

    Parameters
    ----------
    eps : float
        Added to the denominator of alpha.
    variant : {"paper", "torchcam"}
        ``"torchcam"`` reproduces torchcam 0.5.0, whose in-place division on a boolean-indexed
        copy is lost, so ``alpha = g^2`` undivided (a bug, offered for comparisons only).
    """
    g = _grad(layer)
    a = layer.activation
    g2 = g * g
    if variant == "torchcam":
        alpha = g2
    else:
        s = a.sum(dim=(2, 3), keepdim=True)
        alpha = g2 / (2 * g2 + s * (g2 * g) + eps)
        alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    return _weighted_sum((alpha * torch.relu(g)).sum(dim=(2, 3)), a)


@register_method("xgradcam", "XGrad-CAM (Fu et al., BMVC 2020)", "gradient", peer="XGradCAM",
                 aliases=("xgrad-cam",), default=True,
                 options={"eps": Option("float", low=0, help="added to the channel sums")})
def xgradcam(layer: LayerData, run: CamRun, *, eps: float = 1e-7) -> torch.Tensor:
    """XGrad-CAM: ``w_k = sum_ij g^k_ij A^k_ij / (S_k + eps)``; map ``sum_k w_k A^k``."""
    a = layer.activation
    w = (_grad(layer) * a).sum(dim=(2, 3)) / (a.sum(dim=(2, 3)) + eps)
    return _weighted_sum(w, a)


@register_method("layercam", "LayerCAM (Jiang et al., IEEE TIP 2021)", "gradient", peer="LayerCAM",
                 aliases=("layer-cam",), default=True)
def layercam(layer: LayerData, run: CamRun) -> torch.Tensor:
    """LayerCAM: ``sum_k ReLU(g^k_ij) A^k_ij`` (element-wise positive-gradient weights)."""
    return (torch.relu(_grad(layer)) * layer.activation).sum(dim=1)


@register_method("hirescam", "HiResCAM (Draelos & Carin, 2020)", "gradient", peer="HiResCAM",
                 aliases=("hires-cam",), default=True)
def hirescam(layer: LayerData, run: CamRun) -> torch.Tensor:
    """HiResCAM: ``sum_k g^k_ij A^k_ij`` (element-wise, signed; ReLU comes after the sum)."""
    return (_grad(layer) * layer.activation).sum(dim=1)


@register_method("gradcam_elementwise", "Grad-CAM element-wise (pytorch-grad-cam)", "gradient",
                 peer="GradCAMElementWise")
def gradcam_elementwise(layer: LayerData, run: CamRun) -> torch.Tensor:
    """Element-wise Grad-CAM: ``sum_k ReLU(g^k_ij A^k_ij)`` (ReLU before the channel sum)."""
    return torch.relu(_grad(layer) * layer.activation).sum(dim=1)


#: The sign rules of :func:`first_component`.
SIGNS = ("channel_sum", "max_abs", "none")
SIGN_OPTION = Option("choice", choices=SIGNS, help="how the arbitrary sign of the principal axis is fixed")


def first_component(features: torch.Tensor, sign: str = "channel_sum") -> torch.Tensor:
    """Projection of each image's centred features on their first principal axis.

    Per image, ``X`` is the (h*w, K) matrix of positions × channels with column means removed;
    the map is ``X v1`` for the first right singular vector ``v1`` (from the eigenvectors of the
    smaller Gram matrix, in float64). The sign of
    ``v1`` arbitrary (it flips between BLAS builds), so it is fixed by a rule:

    * ``"channel_sum"`` (default): make ``sum_k v1_k > 0``, i.e. the map correlates positively
      with the channel sum of the features (for EigenCAM the total activation, for
      EigenGradCAM the HiResCAM map): ``<X v1, X 1> = sigma_1^2 (v1 . 1)``;
    * ``"max_abs"``: Seg-Eigen-CAM's rule, flip when ``|min| > |max|`` of the map;
    * ``"none"``: whatever the eigen-solver returned (arbitrary, like pytorch-grad-cam's SVD).

    Parameters
    ----------
    features : torch.Tensor
        (B, K, h, w) features.
    sign : str
        Sign rule.

    Returns
    -------
    torch.Tensor
        (B, h, w) projections.
    """
    b, _, h, w = features.shape
    dtype = features.dtype if features.is_floating_point() else torch.float32
    # Eigenvectors of the smaller Gram matrix, X X^T (hw x hw) or X^T X (K x K), solved in
    # float64: a float32 SVD solver loses ~1e-5 of the map when the leading singular values are
    # close, while rounding the Gram product itself costs only ~1e-7 / relative eigen-gap.
    x = torch.nan_to_num(features.float()).flatten(2).transpose(1, 2)  # (B, hw, K)
    x = x - x.mean(dim=1, keepdim=True)
    if x.shape[1] <= x.shape[2]:
        evals, evecs = torch.linalg.eigh((x @ x.transpose(1, 2)).double())
        u1 = evecs[:, :, -1]  # X v1 = sigma_1 u1 and v1 = X^T u1 / sigma_1
        proj = u1 * evals[:, -1:].clamp_min(0).sqrt()
        loading_sum = (u1 * x.sum(dim=2).double()).sum(dim=1)  # sigma_1 (v1 . 1)
    else:
        _, evecs = torch.linalg.eigh((x.transpose(1, 2) @ x).double())
        v1 = evecs[:, :, -1]
        proj = torch.bmm(x.double(), v1[:, :, None])[:, :, 0]
        loading_sum = v1.sum(dim=1)
    if sign == "channel_sum":
        proj = torch.where((loading_sum < 0)[:, None], -proj, proj)
    elif sign == "max_abs":
        flip = proj.min(dim=1).values.abs() > proj.max(dim=1).values.abs()
        proj = torch.where(flip[:, None], -proj, proj)
    elif sign != "none":
        raise ConfigError(f"sign must be one of {', '.join(SIGNS)}, not {sign!r}")
    return proj.view(b, h, w).to(dtype)


@register_method("eigencam", "EigenCAM (Muhammad & Yeasin, 2020)", "activation", peer="EigenCAM",
                 aliases=("eigen-cam",), default=True, options={"sign": SIGN_OPTION})
def eigencam(layer: LayerData, run: CamRun, *, sign: str = "channel_sum") -> torch.Tensor:
    """EigenCAM: first principal component of ``A`` (class-agnostic); see :func:`first_component`."""
    return first_component(layer.activation, sign)


@register_method("eigengradcam", "EigenGradCAM (pytorch-grad-cam)", "gradient", peer="EigenGradCAM",
                 aliases=("eigengrad-cam",), options={"sign": SIGN_OPTION})
def eigengradcam(layer: LayerData, run: CamRun, *, sign: str = "channel_sum") -> torch.Tensor:
    """EigenGradCAM: first principal component of ``g * A``; see :func:`first_component`."""
    return first_component(_grad(layer) * layer.activation, sign)
