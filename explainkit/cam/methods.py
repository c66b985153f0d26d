"""The CAM method registry and the methods computed from one forward and one backward pass.

Notation: activations ``A`` and gradients ``g = dy/dA`` of shape (B, K, h, w) for channel ``k``
and position ``(i, j)``; ``y`` is the target score (by default the logit of the explained class);
``S_k = sum_ij A^k_ij``. Each method returns the *raw* map (B, h, w) — signed and un-normalised —
that :mod:`explainkit.cam.postprocess` turns into a heatmap. The formulas sum over all spatial
axes (:attr:`LayerData.spatial_dims`), so they hold for (B, K, d, h, w) volumes unchanged.

Common options
--------------
``eigen_smooth`` (methods that sum per-channel terms ``T_k``, e.g. ``w_k A^k``): the map is the
first principal component of the terms instead of their sum (pytorch-grad-cam's ``eigen_smooth``;
the sign is fixed by :func:`first_component`'s rule). ``aug_smooth`` (every method, handled by
:func:`explainkit.cam.compute`): the mean of the maps of six test-time augmentations.

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
``backward``
    Extra backward passes of their own on the clean input: a second-order backward (ShapleyCAM),
    a contrastive target (Finer-CAM), a guided backward (Guided Grad-CAM).
``input``
    Input-level attributions: captum's, no hooks needed (:mod:`explainkit.cam.captum_bridge`), and
    FullGrad and Guided Backprop, which hook modules of their choosing (``hooks=True``).
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

__all__ = [
    "COMMON_OPTIONS", "EIGEN_SMOOTH", "KINDS", "METHODS", "CamMethod", "channel_sum", "expand", "first_component",
    "get_method", "list_methods", "method_choices", "register_method", "weighted_sum",
]

KINDS = ("gradient", "activation", "noise", "perturbation", "backward", "input")
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
    gradients : bool
        Whether it reads the clean pass's layer gradients.
    hooks : bool
        Whether it needs module hooks (every layer method; FullGrad and Guided Backprop).
    to_input : bool
        Whether its backward runs to the input (input-level methods, Guided Grad-CAM) instead of
        stopping at the target layer.
    """

    name: str
    title: str
    kind: str
    compute: Callable[..., torch.Tensor]
    peer: str | None = None
    options: dict[str, Option] = field(default_factory=dict)
    default: bool = False
    gradients: bool = False
    hooks: bool = True
    to_input: bool = False

    @property
    def defaults(self) -> dict[str, Any]:
        """Keyword parameters and their defaults."""
        return {k: o.default for k, o in self.options.items()}

    @property
    def uses_gradients(self) -> bool:
        """Whether the clean pass needs gradients."""
        return self.gradients

    @property
    def uses_layers(self) -> bool:
        """Whether the method reads target-layer activations."""
        return self.kind != "input"

    def own_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters ``compute`` takes (without the common options such as ``aug_smooth``)."""
        return {k: v for k, v in params.items() if k not in COMMON_OPTIONS}

    def check_params(self, params: Mapping[str, Any]) -> None:
        """Raise :class:`ConfigError` for parameters the method does not take or values it does not allow."""
        unknown = sorted(set(params) - set(self.options))
        if unknown:
            allowed = ", ".join(sorted(self.options)) or "none"
            raise ConfigError(f"method {self.name!r} has no parameter {', '.join(unknown)} (takes: {allowed})")
        check_values(f"method {self.name!r}", self.options, params)


#: Every CAM method, in registration order (the modules of :mod:`explainkit.cam` register theirs).
METHODS: Registry[CamMethod] = Registry("CAM method", normalize=lambda n: str(n).strip().lower())
#: Options every method takes, handled by :func:`explainkit.cam.compute` rather than the method.
COMMON_OPTIONS = {
    "aug_smooth": Option("bool", default=False, help="mean of the maps of 6 test-time augmentations (horizontal "
                                                     "flip x brightness 0.9/1/1.1), as pytorch-grad-cam; 6x the cost"),
}
#: The declaration of ``eigen_smooth`` (methods summing per-channel terms).
EIGEN_SMOOTH = Option("bool", help="first principal component of the per-channel terms instead of their sum "
                                   "(pytorch-grad-cam's eigen_smooth)")


def register_method(name: str, title: str, kind: str, peer: str | None = None, *,
                    options: Mapping[str, Option] | None = None, aliases: Sequence[str] = (),
                    default: bool = False, gradients: bool | None = None, hooks: bool | None = None,
                    to_input: bool | None = None) -> Callable:
    """Decorator registering ``compute`` as method ``name`` (duplicate names raise).

    Parameters
    ----------
    name, title, kind, peer
        See :class:`CamMethod`.
    options : mapping of str to Option, optional
        The declaration of every keyword-only parameter of the function (its default is the
        function's); :data:`COMMON_OPTIONS` are added.
    aliases : sequence of str
        Other spellings accepted by :func:`get_method` (lower case), e.g. ``"grad-cam++"``.
    default : bool
        Run by its analyzer when no methods are named.
    gradients : bool, optional
        Reads the clean pass's gradients (default: for the ``gradient`` kind).
    hooks : bool, optional
        Needs module hooks (default: every kind but ``input``).
    to_input : bool, optional
        Its backward runs to the input (default: the ``input`` kind).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown method kind {kind!r}")

    def add(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        declared = {**bind_options(options or {}, fn, f"CAM method {name!r}", keyword_only=True), **COMMON_OPTIONS}
        method = CamMethod(name, title, kind, fn, peer, declared, default,
                           gradients=kind == "gradient" if gradients is None else gradients,
                           hooks=kind != "input" if hooks is None else hooks,
                           to_input=kind == "input" if to_input is None else to_input)
        METHODS.register(name, method, aliases=aliases)
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


def channel_sum(terms: torch.Tensor, eigen_smooth: bool = False) -> torch.Tensor:
    """(B, K, *spatial) per-channel terms → (B, *spatial): their sum, or their first principal component.

    The latter with ``eigen_smooth`` (:func:`first_component`).
    """
    return first_component(terms) if eigen_smooth else terms.sum(dim=1)


def expand(weights: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """(B, K) channel weights broadcast over the spatial axes of (B, K, *spatial) activations."""
    return weights.reshape(*weights.shape, *([1] * (acts.dim() - 2)))


def weighted_sum(weights: torch.Tensor, acts: torch.Tensor, eigen_smooth: bool = False) -> torch.Tensor:
    """``sum_k w_k A^k`` (or its eigen-smoothed version): (B, K) weights, (B, K, *spatial) activations."""
    return channel_sum(expand(weights, acts) * acts, eigen_smooth)


def _grad(layer: LayerData) -> torch.Tensor:
    if layer.gradient is None:  # pragma: no cover - guarded by the kind
        raise ConfigError(f"no gradient recorded at layer {layer.name!r}")
    return layer.gradient


@register_method("gradcam", "Grad-CAM (Selvaraju et al., ICCV 2017)", "gradient", peer="GradCAM",
                 aliases=("grad-cam",), default=True, options={"eigen_smooth": EIGEN_SMOOTH})
def gradcam(layer: LayerData, run: CamRun, *, eigen_smooth: bool = False) -> torch.Tensor:
    """Grad-CAM: ``w_k = mean_ij g^k_ij``; map ``sum_k w_k A^k``."""
    return weighted_sum(_grad(layer).mean(dim=layer.spatial_dims), layer.activation, eigen_smooth)


@register_method("gradcampp", "Grad-CAM++ (Chattopadhay et al., WACV 2018)", "gradient", peer="GradCAMPlusPlus",
                 aliases=("gradcam++", "grad-cam++"), default=True, options={
                     "eps": Option("float", low=0, help="added to the denominator of alpha"),
                     "variant": Option("choice", choices=("paper", "torchcam"),
                                       help="'torchcam': torchcam 0.5.0's undivided alpha (for comparisons)"),
                     "eigen_smooth": EIGEN_SMOOTH,
                 })
def gradcampp(layer: LayerData, run: CamRun, *, eps: float = 1e-6, variant: str = "paper",
              eigen_smooth: bool = False) -> torch.Tensor:
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
    dims = layer.spatial_dims
    g2 = g * g
    if variant == "torchcam":
        alpha = g2
    else:
        s = a.sum(dim=dims, keepdim=True)
        alpha = g2 / (2 * g2 + s * (g2 * g) + eps)
        alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    return weighted_sum((alpha * torch.relu(g)).sum(dim=dims), a, eigen_smooth)


@register_method("xgradcam", "XGrad-CAM (Fu et al., BMVC 2020)", "gradient", peer="XGradCAM",
                 aliases=("xgrad-cam",), default=True,
                 options={"eps": Option("float", low=0, help="added to the channel sums"),
                          "eigen_smooth": EIGEN_SMOOTH})
def xgradcam(layer: LayerData, run: CamRun, *, eps: float = 1e-7, eigen_smooth: bool = False) -> torch.Tensor:
    """XGrad-CAM: ``w_k = sum_ij g^k_ij A^k_ij / (S_k + eps)``; map ``sum_k w_k A^k``."""
    a = layer.activation
    dims = layer.spatial_dims
    w = (_grad(layer) * a).sum(dim=dims) / (a.sum(dim=dims) + eps)
    return weighted_sum(w, a, eigen_smooth)


@register_method("layercam", "LayerCAM (Jiang et al., IEEE TIP 2021)", "gradient", peer="LayerCAM",
                 aliases=("layer-cam",), default=True, options={"eigen_smooth": EIGEN_SMOOTH})
def layercam(layer: LayerData, run: CamRun, *, eigen_smooth: bool = False) -> torch.Tensor:
    """LayerCAM: ``sum_k ReLU(g^k_ij) A^k_ij`` (element-wise positive-gradient weights)."""
    return channel_sum(torch.relu(_grad(layer)) * layer.activation, eigen_smooth)


@register_method("hirescam", "HiResCAM (Draelos & Carin, 2020)", "gradient", peer="HiResCAM",
                 aliases=("hires-cam",), default=True, options={"eigen_smooth": EIGEN_SMOOTH})
def hirescam(layer: LayerData, run: CamRun, *, eigen_smooth: bool = False) -> torch.Tensor:
    """HiResCAM: ``sum_k g^k_ij A^k_ij`` (element-wise, signed; ReLU comes after the sum).

    With ``eigen_smooth`` the faithfulness guarantee of HiResCAM (the map sums to the score's
    first-order change) no longer holds.
    """
    return channel_sum(_grad(layer) * layer.activation, eigen_smooth)


@register_method("gradcam_elementwise", "Grad-CAM element-wise (pytorch-grad-cam)", "gradient",
                 peer="GradCAMElementWise", options={"eigen_smooth": EIGEN_SMOOTH})
def gradcam_elementwise(layer: LayerData, run: CamRun, *, eigen_smooth: bool = False) -> torch.Tensor:
    """Element-wise Grad-CAM: ``sum_k ReLU(g^k_ij A^k_ij)`` (ReLU before the channel sum)."""
    return channel_sum(torch.relu(_grad(layer) * layer.activation), eigen_smooth)


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
        (B, K, *spatial) features.
    sign : str
        Sign rule.

    Returns
    -------
    torch.Tensor
        (B, *spatial) projections.
    """
    b, spatial = features.shape[0], tuple(features.shape[2:])
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
    return _fix_sign(proj, loading_sum, sign).view(b, *spatial).to(dtype)


def _fix_sign(proj: torch.Tensor, loading_sum: torch.Tensor, sign: str) -> torch.Tensor:
    """Apply a sign rule of :data:`SIGNS` to (B, n) projections (``loading_sum``: correlation with the channel sum)."""
    if sign == "channel_sum":
        return torch.where((loading_sum < 0)[:, None], -proj, proj)
    if sign == "max_abs":
        flip = proj.min(dim=1).values.abs() > proj.max(dim=1).values.abs()
        return torch.where(flip[:, None], -proj, proj)
    if sign != "none":
        raise ConfigError(f"sign must be one of {', '.join(SIGNS)}, not {sign!r}")
    return proj


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


#: Kernels of :func:`kernel_first_component` (scikit-learn's names and formulas).
KERNELS = ("sigmoid", "rbf", "poly", "linear", "cosine")


def kernel_first_component(features: torch.Tensor, kernel: str = "sigmoid", gamma: float | None = None,
                           coef0: float = 1.0, degree: int = 3, sign: str = "channel_sum") -> torch.Tensor:
    """Projection of each image's centred features on their first kernel principal component.

    Per image, ``X`` is the (n, K) matrix of the n positions × K channels with column means removed,
    ``G = k(X, X)`` the (n, n) kernel matrix (``sigmoid``: ``tanh(gamma <x, y> + coef0)``; ``rbf``:
    ``exp(-gamma |x - y|^2)``; ``poly``: ``(gamma <x, y> + coef0)^degree``; ``linear``; ``cosine``;
    ``gamma`` defaults to ``1 / K``), double-centred; the map is ``sqrt(lambda_1) u_1`` for its
    leading eigenpair (in float64), which is what scikit-learn's ``KernelPCA(n_components=1)
    .fit_transform`` returns. Signs: ``"max_abs"`` is scikit-learn's rule (the largest entry in
    absolute value is positive); ``"channel_sum"`` (default) makes the map correlate positively
    with the channel sum of ``X``, as :func:`first_component`; ``"none"`` leaves the solver's.

    Parameters
    ----------
    features : torch.Tensor
        (B, K, *spatial) features.
    kernel, gamma, coef0, degree
        The kernel.
    sign : str
        Sign rule.

    Returns
    -------
    torch.Tensor
        (B, *spatial) projections.
    """
    if kernel not in KERNELS:
        raise ConfigError(f"kernel must be one of {', '.join(KERNELS)}, not {kernel!r}")
    b, k, spatial = features.shape[0], features.shape[1], tuple(features.shape[2:])
    x = torch.nan_to_num(features.double()).flatten(2).transpose(1, 2)  # (B, n, K)
    x = x - x.mean(dim=1, keepdim=True)
    g = 1.0 / k if gamma is None else float(gamma)
    dot = x @ x.transpose(1, 2)
    if kernel == "sigmoid":
        gram = torch.tanh(g * dot + coef0)
    elif kernel == "rbf":
        sq = dot.diagonal(dim1=1, dim2=2)
        gram = torch.exp(-g * (sq[:, :, None] + sq[:, None, :] - 2 * dot).clamp_min(0))
    elif kernel == "poly":
        gram = (g * dot + coef0) ** int(degree)
    elif kernel == "cosine":
        norm = x.norm(dim=2).clamp_min(1e-300)
        gram = dot / (norm[:, :, None] * norm[:, None, :])
    else:
        gram = dot
    gram = (gram - gram.mean(dim=1, keepdim=True) - gram.mean(dim=2, keepdim=True)
            + gram.mean(dim=(1, 2), keepdim=True))
    evals, evecs = torch.linalg.eigh(gram)
    u1 = evecs[:, :, -1]
    proj = u1 * evals[:, -1:].clamp_min(0).sqrt()
    return _fix_sign(proj, (u1 * x.sum(dim=2)).sum(dim=1), sign).view(b, *spatial).to(torch.float32)


@register_method("kpcacam", "KPCA-CAM (Karmani et al., 2024)", "activation", peer="KPCA_CAM",
                 aliases=("kpca-cam", "kpca_cam"), options={
                     "kernel": Option("choice", choices=KERNELS, help="kernel of the kernel PCA"),
                     "gamma": Option("float", low=0, low_open=True, help="kernel coefficient (default 1 / channels)"),
                     "sign": SIGN_OPTION,
                 })
def kpcacam(layer: LayerData, run: CamRun, *, kernel: str = "sigmoid", gamma: float | None = None,
            sign: str = "channel_sum") -> torch.Tensor:
    """KPCA-CAM: first kernel principal component of ``A`` (class-agnostic); see :func:`kernel_first_component`.

    pytorch-grad-cam's sign is scikit-learn's ``"max_abs"`` rule; the default here is the
    ``"channel_sum"`` rule of EigenCAM.
    """
    return kernel_first_component(layer.activation, kernel, gamma, sign=sign)


@register_method("fem", "FEM, Feature Explanation Method (Fuad et al., IPTA 2020)", "activation", peer="FEM",
                 options={"k": Option("float", low=0, help="a position is salient above mean + k std of its channel")})
def fem(layer: LayerData, run: CamRun, *, k: float = 2.0) -> torch.Tensor:
    """FEM: ``w_k = mean_ij 1[A^k_ij > mu_k + k sigma_k]``; map ``sum_k w_k A^k`` (class-agnostic).

    ``mu_k`` and ``sigma_k`` are the channel's mean and population sd over positions.
    """
    a = layer.activation
    dims = layer.spatial_dims
    threshold = a.mean(dim=dims, keepdim=True) + k * a.std(dim=dims, keepdim=True, correction=0)
    return weighted_sum((a > threshold).float().mean(dim=dims), a)
