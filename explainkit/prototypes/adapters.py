"""Prototype adapters: per prototype a similarity map (B, P, h, w), a class and a patch box.

Every adapter reads a latent map (B, D, h, w) from one layer of the model (through
:func:`explainkit.hooks.capture_layers`, stopping the forward pass there; ViT token sequences
and channels-last maps are turned into grids by :func:`explainkit.adapters.infer_layout`) and turns
it into similarity maps, higher = more similar:

* :class:`VectorPrototypes` — prototype vectors compared with every latent cell: ProtoPNet
  (``log`` similarity of squared L2 distances), ProtoTree (``exp(-d)``), TesNet / ST-ProtoPNet
  (``cosine``, ``projection``). :meth:`VectorPrototypes.from_model` finds the prototype tensor of
  a prototype network; :func:`exemplar_prototypes` and :func:`kmeans_prototypes` make prototypes
  for ordinary models from latent cells of training images (a post-hoc "push").
* :class:`ChannelPrototypes` — each channel of a layer is a prototype (PIP-Net style), optionally
  with a softmax over channels at every location.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import cv2
import numpy as np
import torch
from torch import nn

from explainkit.adapters import SpatialLayout, infer_layout, resolve_layer, select_logits, token_hints
from explainkit.errors import ConfigError
from explainkit.hooks import capture_layers, eval_mode
from explainkit.loading.handle import ModelHandle
from explainkit.prototypes.similarity import NONNEGATIVE, SIMILARITIES, similarity

if TYPE_CHECKING:
    from explainkit.prototypes.explanation import ModelExplanation

__all__ = [
    "ChannelPrototypes",
    "PrototypeAdapter",
    "VectorPrototypes",
    "exemplar_prototypes",
    "find_prototype_tensor",
    "kmeans_prototypes",
    "patch_box",
    "read_latent",
    "read_latents",
    "read_latents_and_output",
]

#: Parameter/buffer names recognised as prototype tensors (last dotted component).
PROTOTYPE_TENSOR_NAMES = ("prototype_vectors", "prototypes")


def _module(model: ModelHandle | nn.Module) -> nn.Module:
    return model.module if isinstance(model, ModelHandle) else model


def read_latent(model: ModelHandle | nn.Module, x: torch.Tensor, layer: str, *, layout: str = "auto",
                grid: tuple[int, int] | None = None, prefix_tokens: int | None = None) -> torch.Tensor:
    """The output of ``layer`` for inputs ``x`` as a (B, D, h, w) map (the pass stops at the layer).

    Parameters
    ----------
    model : ModelHandle or torch.nn.Module
        The model (a handle pads fixed-batch programs).
    x : torch.Tensor
        (B, 3, H, W) preprocessed inputs on the model's device.
    layer : str
        Dotted layer name.
    layout, grid, prefix_tokens
        How to read the output (see :func:`explainkit.adapters.infer_layout`); ViT grids and
        prefix tokens default to what the model declares (:func:`explainkit.adapters.token_hints`).

    Returns
    -------
    torch.Tensor
        (B, D, h, w) latent map, detached.
    """
    return read_latents(model, x, [layer], layout=layout, grid=grid, prefix_tokens=prefix_tokens)[0]


def read_latents(model: ModelHandle | nn.Module, x: torch.Tensor, layers: Sequence[str], *, layout: str = "auto",
                 grid: tuple[int, int] | None = None, prefix_tokens: int | None = None) -> list[torch.Tensor]:
    """The outputs of several ``layers`` in one pass (stopped once all fired), as (B, D_i, h, w) maps.

    See :func:`read_latent` for the parameters; every layer is read with the same layout.
    """
    return _read(model, x, layers, layout, grid, prefix_tokens, full=False)[0]


def read_latents_and_output(model: ModelHandle | nn.Module, x: torch.Tensor, layers: Sequence[str], *,
                            layout: str = "auto", grid: tuple[int, int] | None = None,
                            prefix_tokens: int | None = None) -> tuple[list[torch.Tensor], Any]:
    """:func:`read_latents` from a complete forward pass, with the model's output.

    Returns
    -------
    latents : list of torch.Tensor
        (B, D_i, h, w) latent map of each layer, detached.
    output : Any
        What the model returned (no gradients).
    """
    return _read(model, x, layers, layout, grid, prefix_tokens, full=True)


def _read(model: ModelHandle | nn.Module, x: torch.Tensor, layers: Sequence[str], layout: str,
          grid: tuple[int, int] | None, prefix_tokens: int | None, *, full: bool) -> tuple[list[torch.Tensor], Any]:
    root = _module(model)
    resolved = dict(resolve_layer(root, name) for name in layers)
    forward = model.forward if isinstance(model, ModelHandle) else root
    with torch.no_grad(), capture_layers(root, resolved, detach=True, stop_early=not full) as cap:
        output = cap.forward(forward, x)
    size = tuple(x.shape[-2:])
    return [latent_layout(root, module, cap[name], size, layout, grid, prefix_tokens).apply(cap[name]).float()
            for name, module in resolved.items()], output


def latent_layout(root: nn.Module, module: nn.Module, out: torch.Tensor, input_size: tuple[int, ...], layout: str,
                  grid: tuple[int, int] | None, prefix_tokens: int | None) -> SpatialLayout:
    """How to read ``module``'s output ``out`` as a map (user settings first, then the model's token hints)."""
    hints = token_hints(root)
    return infer_layout(out, module, input_size=(int(input_size[0]), int(input_size[1])), layout=layout,
                        grid=grid or hints.get("grid"),
                        prefix_tokens=prefix_tokens if prefix_tokens is not None else hints.get("prefix_tokens"))


def patch_box(similarity_map: np.ndarray, input_size: tuple[int, int], percentile: float = 95.0
              ) -> tuple[int, int, int, int]:
    """ProtoPNet's visualisation box: bicubic upsampling, then the 95th-percentile rectangle.

    Parameters
    ----------
    similarity_map : ndarray
        (h, w) similarity map of one prototype on one image.
    input_size : tuple of int
        (H, W) model input size.
    percentile : float
        Pixels at or above this percentile of the upsampled map define the box.

    Returns
    -------
    tuple of int
        ``(y0, y1, x0, x1)`` in model-input pixels, half-open (``y1``, ``x1`` exclusive).
    """
    height, width = input_size
    up = cv2.resize(np.asarray(similarity_map, np.float32), (int(width), int(height)), interpolation=cv2.INTER_CUBIC)
    mask = up >= np.percentile(up, percentile)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


class PrototypeAdapter(ABC):
    """Turns a model's latent map into per-prototype similarity maps.

    Parameters
    ----------
    layer : str
        Dotted name of the latent layer.
    layout, grid, prefix_tokens
        How to read the layer output (see :func:`read_latent`).

    Attributes
    ----------
    kind : str
        Adapter family (``"vectors"``, ``"channels"``).
    num_prototypes : int
        P (known after :meth:`bind` for channel adapters).
    nonnegative : bool
        Whether similarities are never negative, so the reference's similarity weighting applies.
    default_weight : str
        Weight rule of the global mean when ``weight="auto"`` (see
        :mod:`explainkit.prototypes.importance`).
    unit : str
        What a similarity value is.
    """

    kind: ClassVar[str] = ""

    def __init__(self, layer: str, *, layout: str = "auto", grid: tuple[int, int] | None = None,
                 prefix_tokens: int | None = None) -> None:
        self.layer = layer
        self.layout = layout
        self.grid = grid
        self.prefix_tokens = prefix_tokens

    num_prototypes: int = 0
    nonnegative: bool = False
    default_weight: str = "softplus"
    unit: str = "similarity"

    def latent_layers(self) -> list[str]:
        """Layers whose outputs, concatenated along channels, are the latent map (default: ``layer``)."""
        return [self.layer]

    def latent(self, model: ModelHandle | nn.Module, x: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) latent map of inputs ``x`` (the pass stops once every latent layer has fired)."""
        return torch.cat(read_latents(model, x, self.latent_layers(), layout=self.layout, grid=self.grid,
                                      prefix_tokens=self.prefix_tokens), dim=1)

    def bind(self, model: ModelHandle | nn.Module, input_size: tuple[int, int]) -> PrototypeAdapter:
        """Resolve the layer and check the adapter against a dry pass on a zero image; returns ``self``."""
        root = _module(model)
        self.layer = resolve_layer(root, self.layer)[0]
        device = next((p.device for p in root.parameters()), torch.device("cpu"))
        with eval_mode(root):
            z = self.latent(model, torch.zeros(1, 3, *input_size, device=device))
        self._check_latent(z)
        return self

    @abstractmethod
    def _check_latent(self, z: torch.Tensor) -> None:
        """Validate the (1, D, h, w) latent map of the dry pass (subclasses learn their sizes here)."""

    @abstractmethod
    def similarity_from_latent(self, z: torch.Tensor, prototypes: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D, h, w) latent map → (B, P', h', w') similarities of the prototypes asked for (all if None)."""

    def similarity_maps(self, model: ModelHandle | nn.Module, x: torch.Tensor,
                        prototypes: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """Similarity maps of inputs ``x``.

        Parameters
        ----------
        model : ModelHandle or torch.nn.Module
            The model.
        x : torch.Tensor
            (B, 3, H, W) preprocessed inputs.
        prototypes : sequence of int, optional
            Which prototypes (default all); only their maps are computed.

        Returns
        -------
        torch.Tensor
            (B, P', h', w') similarities, higher = more similar.
        """
        idx = None if prototypes is None else torch.as_tensor(prototypes, dtype=torch.long)
        return self.similarity_from_latent(self.latent(model, x), idx)

    def similarity_and_output(self, model: ModelHandle | nn.Module, x: torch.Tensor,
                              prototypes: Sequence[int] | torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        """:meth:`similarity_maps` from a complete forward pass, with the model's output (for decisions)."""
        idx = None if prototypes is None else torch.as_tensor(prototypes, dtype=torch.long)
        zs, output = read_latents_and_output(model, x, self.latent_layers(), layout=self.layout, grid=self.grid,
                                             prefix_tokens=self.prefix_tokens)
        return self.similarity_from_latent(torch.cat(zs, dim=1), idx), output

    def contributions(self, model: ModelHandle | nn.Module, x: torch.Tensor, targets: torch.Tensor,
                      best: torch.Tensor, prototypes: Sequence[int] | None = None) -> torch.Tensor | None:
        """Each prototype's additive contribution to the target logit (see :mod:`explainkit.prototypes.decision`).

        Parameters
        ----------
        model : ModelHandle or torch.nn.Module
            The model.
        x : torch.Tensor
            (B, 3, H, W) preprocessed original images.
        targets : torch.Tensor
            (B,) target classes.
        best : torch.Tensor
            (B, P') each prototype's best similarity on the images.
        prototypes : sequence of int, optional
            Which prototypes (default all).

        Returns
        -------
        torch.Tensor or None
            (B, P') contributions in logit units, or ``None`` when the adapter has no link to the
            decision (prototypes are then weighted equally).
        """
        return None

    def patch_box(self, model: ModelHandle | nn.Module, x: torch.Tensor, prototype: int,
                  percentile: float = 95.0) -> tuple[int, int, int, int]:
        """Where ``prototype`` matches on one image: :func:`patch_box` of its similarity map.

        Parameters
        ----------
        model : ModelHandle or torch.nn.Module
            The model.
        x : torch.Tensor
            (1, 3, H, W) preprocessed image.
        prototype : int
            Prototype index.
        percentile : float
            See :func:`patch_box`.

        Returns
        -------
        tuple of int
            ``(y0, y1, x0, x1)`` in input pixels (half-open).
        """
        sim = self.similarity_maps(model, x[:1], [prototype])[0, 0].detach().cpu().numpy()
        return patch_box(sim, (int(x.shape[-2]), int(x.shape[-1])), percentile)

    def prototype_class(self, p: int) -> int | None:
        """Class index prototype ``p`` belongs to, or ``None`` for shared prototypes."""
        return None

    def vectors(self) -> torch.Tensor | None:
        """(P, F) flattened prototype vectors (for redundancy checks), or ``None``."""
        return None

    def explanation(self) -> ModelExplanation | None:
        """The model's own explanation (prototype models of :mod:`explainkit.prototypes.models`), or ``None``."""
        return None

    def describe(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {"kind": self.kind, "layer": self.layer, "num_prototypes": self.num_prototypes,
                "similarity_unit": self.unit, "nonnegative": self.nonnegative}


class VectorPrototypes(PrototypeAdapter):
    """Prototype vectors compared with every latent cell (ProtoPNet, ProtoTree, TesNet, exemplars).

    Parameters
    ----------
    layer : str
        Latent layer (for ProtoPNet: the output of the add-on layers).
    vectors : torch.Tensor
        (P, D) or (P, D, k, k) prototype vectors.
    similarity : str
        ``log``, ``linear``, ``exp``, ``cosine`` or ``projection`` (see
        :mod:`explainkit.prototypes.similarity`).
    classes : sequence of int or None, optional
        Class of each prototype (``None`` entries, or no sequence, for shared prototypes).
    source : str
        Where the vectors came from (recorded in reports).
    layout, grid, prefix_tokens
        See :class:`PrototypeAdapter`.
    """

    kind = "vectors"

    def __init__(self, layer: str, vectors: torch.Tensor, similarity: str = "log",
                 classes: Sequence[int | None] | None = None, source: str = "given", **layout: Any) -> None:
        super().__init__(layer, **layout)
        v = torch.as_tensor(vectors).detach().float().cpu()
        if v.dim() == 2:
            v = v[:, :, None, None]
        if v.dim() != 4 or v.shape[0] == 0 or v.shape[2] != v.shape[3]:
            raise ConfigError(f"prototype vectors must be (P, D) or (P, D, k, k), not {tuple(v.shape)}")
        if similarity not in SIMILARITIES:
            raise ConfigError(f"unknown similarity {similarity!r}; choose from {', '.join(SIMILARITIES)}")
        if classes is not None and len(classes) != v.shape[0]:
            raise ConfigError(f"{len(classes)} prototype classes given for {v.shape[0]} prototypes")
        self.prototype_vectors = v
        self.head_weight: torch.Tensor | None = None
        self.similarity = similarity
        self.classes = None if classes is None else [None if c is None else int(c) for c in classes]
        self.source = source
        self.num_prototypes = int(v.shape[0])
        self.nonnegative = similarity in NONNEGATIVE
        self.default_weight = "similarity" if self.nonnegative else "softplus"
        self.unit = f"{similarity} similarity"

    def _check_latent(self, z: torch.Tensor) -> None:
        d, k = self.prototype_vectors.shape[1], self.prototype_vectors.shape[-1]
        if z.shape[1] != d:
            raise ConfigError(f"layer {self.layer!r} has {z.shape[1]} channels but the prototypes have {d}")
        if min(z.shape[2:]) < k:
            raise ConfigError(f"layer {self.layer!r} map {tuple(z.shape[2:])} is smaller than the {k}x{k} prototypes")

    def similarity_from_latent(self, z: torch.Tensor, prototypes: torch.Tensor | None = None) -> torch.Tensor:
        """See :meth:`PrototypeAdapter.similarity_from_latent`."""
        v = self.prototype_vectors if prototypes is None else self.prototype_vectors[prototypes]
        return similarity(z, v.to(device=z.device, dtype=z.dtype), self.similarity)

    def prototype_class(self, p: int) -> int | None:
        """See :meth:`PrototypeAdapter.prototype_class`."""
        return None if self.classes is None else self.classes[p]

    def contributions(self, model: ModelHandle | nn.Module, x: torch.Tensor, targets: torch.Tensor,
                      best: torch.Tensor, prototypes: Sequence[int] | None = None) -> torch.Tensor | None:
        """``W[t, p] * s_p(x)`` with the class head found by :meth:`from_model` (``None`` without one)."""
        if self.head_weight is None:
            return None
        w = self.head_weight if prototypes is None else self.head_weight[:, torch.as_tensor(prototypes)]
        return w.to(best.device, best.dtype)[targets.to(best.device)] * best

    def vectors(self) -> torch.Tensor:
        """(P, D·k·k) prototype vectors."""
        return self.prototype_vectors.flatten(1)

    def describe(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {**super().describe(), "similarity": self.similarity, "source": self.source,
                "prototype_shape": list(self.prototype_vectors.shape)}

    @classmethod
    def from_model(cls, model: ModelHandle | nn.Module, *, tensor: str | None = None, layer: str | None = None,
                   similarity: str = "auto", input_size: tuple[int, int] = (224, 224), **layout: Any
                   ) -> VectorPrototypes:
        """The prototypes of a prototype network (a module holding a prototype tensor).

        Parameters
        ----------
        model : ModelHandle or torch.nn.Module
            The network.
        tensor : str, optional
            Dotted parameter/buffer name of the (P, D[, k, k]) prototypes; found automatically
            (:func:`find_prototype_tensor`) when omitted.
        layer : str, optional
            The latent layer; default the last module before the prototype layer whose output is a
            spatial map with D channels (ProtoPNet: the add-on layers).
        similarity : str
            ``"auto"`` reads ``prototype_activation_function`` (``log`` / ``linear``) from the
            module holding the tensor or the root, takes ``exp`` for ProtoTree's ``L2Conv2D``, and
            ``log`` otherwise; or any name of :data:`~explainkit.prototypes.similarity.SIMILARITIES`.
        input_size : tuple of int
            (H, W) for the dry pass that finds the latent layer.
        **layout
            ``layout``, ``grid``, ``prefix_tokens`` for the latent layer.

        Returns
        -------
        VectorPrototypes
            The adapter (bound).
        """
        root = _module(model)
        name = tensor or find_prototype_tensor(root)
        if name is None:
            raise ConfigError(f"no prototype tensor found in {type(root).__name__}; "
                              "name it (prototype_tensor=) or use channel / exemplar prototypes")
        owner_name, _, attr = name.rpartition(".")
        try:
            owner = root.get_submodule(owner_name)
            vectors = getattr(owner, attr)
        except AttributeError:
            raise ConfigError(f"no parameter or buffer named {name!r} in {type(root).__name__}") from None
        if not isinstance(vectors, torch.Tensor) or vectors.dim() not in (2, 4):
            raise ConfigError(f"{name!r} is not a (P, D) or (P, D, k, k) tensor")
        if similarity == "auto":
            similarity = _guess_similarity(owner, root)
        identity = getattr(owner, "prototype_class_identity", getattr(root, "prototype_class_identity", None))
        has_identity = isinstance(identity, torch.Tensor) and identity.dim() == 2
        classes = identity.argmax(dim=1).tolist() if has_identity else None
        if layer is None:
            layer = _latent_layer_before(model, owner_name, int(vectors.shape[1]), input_size)
        adapter = cls(layer, vectors, similarity, classes, source=f"model tensor {name}", **layout)
        adapter.head_weight = _class_head(root, int(vectors.shape[0]))
        return adapter.bind(model, input_size)


def find_prototype_tensor(model: nn.Module) -> str | None:
    """Dotted name of the model's prototype tensor, ``None`` when there is none.

    A parameter or buffer whose last name component is one of :data:`PROTOTYPE_TENSOR_NAMES` and
    that is 2-D (P, D) or 4-D (P, D, k, k).

    Raises
    ------
    ConfigError
        Several candidates (name one explicitly).
    """
    found = [n for n, t in (*model.named_parameters(), *model.named_buffers())
             if n.rpartition(".")[2] in PROTOTYPE_TENSOR_NAMES and t.dim() in (2, 4)]
    if len(found) > 1:
        raise ConfigError(f"several prototype tensors ({', '.join(found)}); name one with prototype_tensor=")
    return found[0] if found else None


def _class_head(root: nn.Module, n_prototypes: int) -> torch.Tensor | None:
    """(K, P) weight of the linear layer from similarities to classes (ProtoPNet's ``last_layer``), if unique."""
    heads = [(n, m) for n, m in root.named_modules() if isinstance(m, nn.Linear) and m.in_features == n_prototypes]
    named = [h for h in heads if h[0].rpartition(".")[2] == "last_layer"]
    chosen = named if len(named) == 1 else heads
    return chosen[0][1].weight.detach().float().cpu().clone() if len(chosen) == 1 else None


def _guess_similarity(owner: nn.Module, root: nn.Module) -> str:
    act = getattr(owner, "prototype_activation_function", getattr(root, "prototype_activation_function", None))
    if act in ("log", "linear"):
        return str(act)
    if "L2Conv" in type(owner).__name__:
        return "exp"
    return "log"


def _latent_layer_before(model: ModelHandle | nn.Module, owner: str, channels: int,
                         input_size: tuple[int, int]) -> str:
    """The last module (in completion order) outside ``owner`` whose output is a map with ``channels`` channels."""
    root = _module(model)
    # when the root holds the prototypes (cfchen-duke ProtoPNet) any submodule may give the latent map
    modules = {n: m for n, m in root.named_modules()
               if n and not (owner and (n == owner or n.startswith(owner + ".")))}
    device = next((p.device for p in root.parameters()), torch.device("cpu"))
    x = torch.zeros(1, 3, *input_size, device=device)
    forward = model.forward if isinstance(model, ModelHandle) else root
    try:
        with eval_mode(root), torch.no_grad(), capture_layers(
            root, modules, detach=True, transform=lambda t: torch.empty(t.shape, device="meta"), tensors_only=False,
        ) as cap:
            forward(x)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot run the model on a {tuple(x.shape)} input ({exc}); pass the latent layer") from None
    for name in reversed(cap.order):
        shape = cap.outputs[name][-1].shape
        if len(shape) == 4 and shape[1] == channels and min(shape[2:]) >= 1:
            return name
    raise ConfigError(f"no layer outputs a map with {channels} channels before the prototypes; pass the latent layer")


class ChannelPrototypes(PrototypeAdapter):
    """Each channel of a layer is a prototype; its activation map is the similarity (PIP-Net style).

    Parameters
    ----------
    layer : str
        The layer.
    channels : sequence of int, optional
        Which channels are prototypes (default all).
    softmax : bool
        Softmax over all channels at every location first (PIP-Net), so values are in [0, 1] and
        comparable across channels.
    layout, grid, prefix_tokens
        See :class:`PrototypeAdapter`.
    """

    kind = "channels"

    def __init__(self, layer: str, channels: Sequence[int] | None = None, softmax: bool = False,
                 **layout: Any) -> None:
        super().__init__(layer, **layout)
        self.channels = None if channels is None else [int(c) for c in channels]
        self.softmax = softmax
        self.nonnegative = softmax
        self.default_weight = "similarity" if softmax else "clip"
        self.unit = "softmax activation" if softmax else "activation"
        self.num_prototypes = len(self.channels) if self.channels is not None else 0

    def _check_latent(self, z: torch.Tensor) -> None:
        depth = int(z.shape[1])
        if self.channels is None:
            self.channels = list(range(depth))
        bad = [c for c in self.channels if not 0 <= c < depth]
        if bad or not self.channels:
            raise ConfigError(f"layer {self.layer!r} has {depth} channels; bad channel index {bad[:3]}")
        self.num_prototypes = len(self.channels)

    def similarity_from_latent(self, z: torch.Tensor, prototypes: torch.Tensor | None = None) -> torch.Tensor:
        """See :meth:`PrototypeAdapter.similarity_from_latent`."""
        if self.channels is None:
            raise ConfigError("bind() the channel adapter to a model first")
        if self.softmax:
            z = z.softmax(dim=1)
        chans = torch.as_tensor(self.channels, dtype=torch.long, device=z.device)
        if prototypes is not None:
            chans = chans[prototypes.to(z.device)]
        return z.index_select(1, chans)

    def contributions(self, model: ModelHandle | nn.Module, x: torch.Tensor, targets: torch.Tensor,
                      best: torch.Tensor, prototypes: Sequence[int] | None = None) -> torch.Tensor | None:
        """Gradient × activation of the target logit at the layer, summed over locations, per channel."""
        if isinstance(model, ModelHandle) and not model.gradients:
            return None
        root = _module(model)
        name, module = resolve_layer(root, self.layer)
        forward = model.forward if isinstance(model, ModelHandle) else root
        with torch.no_grad(), capture_layers(root, {name: module}, grad_from_layers=True) as cap:
            logits = select_logits(forward(x))
            leaf = cap[name]
            (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None].to(logits.device)).sum(), leaf)
        spatial = latent_layout(root, module, leaf, tuple(x.shape[-2:]), self.layout, self.grid, self.prefix_tokens)
        per_channel = spatial.apply(leaf.detach().float() * grad.float()).sum(dim=(2, 3))  # (B, D)
        chans = torch.as_tensor(self.channels or [], dtype=torch.long)
        if prototypes is not None:
            chans = chans[torch.as_tensor(prototypes, dtype=torch.long)]
        return per_channel[:, chans.to(per_channel.device)]

    def describe(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {**super().describe(), "softmax": self.softmax,
                "channels": self.channels if self.channels is None or len(self.channels) <= 64 else "many"}


def exemplar_prototypes(model: ModelHandle | nn.Module, inputs: torch.Tensor, cells: Sequence[tuple[int, int, int]],
                        layer: str, *, similarity: str = "log", classes: Sequence[int | None] | None = None,
                        **layout: Any) -> VectorPrototypes:
    """Prototypes that are latent cells of given images (a post-hoc ProtoPNet "push").

    Parameters
    ----------
    model : ModelHandle or torch.nn.Module
        The model.
    inputs : torch.Tensor
        (N, 3, H, W) preprocessed images.
    cells : sequence of (int, int, int)
        ``(image, row, column)`` of each prototype's latent cell.
    layer : str
        The latent layer.
    similarity : str
        How latent cells are compared with the exemplars (``log`` or ``cosine`` are usual).
    classes : sequence, optional
        Class of each prototype.
    **layout
        See :func:`read_latent`.

    Returns
    -------
    VectorPrototypes
        The adapter (bound).
    """
    if not cells:
        raise ConfigError("exemplar prototypes need at least one (image, row, column) cell")
    vectors = []
    for i, r, c in cells:
        if not 0 <= int(i) < len(inputs):
            raise ConfigError(f"exemplar image index {i} out of range (have {len(inputs)} images)")
        z = read_latent(model, inputs[int(i) : int(i) + 1], layer, **layout)
        if not (0 <= int(r) < z.shape[2] and 0 <= int(c) < z.shape[3]):
            raise ConfigError(f"exemplar cell ({r}, {c}) outside the {z.shape[2]}x{z.shape[3]} latent grid")
        vectors.append(z[0, :, int(r), int(c)].cpu())
    adapter = VectorPrototypes(layer, torch.stack(vectors), similarity, classes, source="exemplar cells", **layout)
    return adapter.bind(model, tuple(inputs.shape[-2:]))


def kmeans_prototypes(model: ModelHandle | nn.Module, inputs: torch.Tensor, labels: torch.Tensor, layer: str, *,
                      per_class: int = 3, similarity: str = "log", seed: int = 0, max_cells: int = 4000,
                      batch_size: int = 64, **layout: Any) -> VectorPrototypes:
    """Prototypes that are k-means centres of each class's latent cells (KMEx-style, post hoc).

    Parameters
    ----------
    model : ModelHandle or torch.nn.Module
        The model.
    inputs : torch.Tensor
        (N, 3, H, W) preprocessed training images.
    labels : torch.Tensor
        (N,) class of each image.
    layer : str
        The latent layer.
    per_class : int
        Centres per class.
    similarity : str
        How latent cells are compared with the centres.
    seed : int
        Seeds the cell subsample and k-means.
    max_cells : int
        At most this many cells per class enter k-means (a seeded subsample).
    batch_size : int
        Images per forward pass.
    **layout
        See :func:`read_latent`.

    Returns
    -------
    VectorPrototypes
        ``per_class`` prototypes per class present in ``labels``, in class order (bound).
    """
    from sklearn.cluster import KMeans

    labels = torch.as_tensor(labels).cpu()
    if per_class < 1 or len(inputs) != len(labels) or len(inputs) == 0:
        raise ConfigError("k-means prototypes need labelled images and per_class >= 1")
    z = torch.cat([read_latent(model, inputs[i : i + batch_size], layer, **layout).cpu()
                   for i in range(0, len(inputs), batch_size)])
    cells = z.permute(0, 2, 3, 1).reshape(len(inputs), -1, z.shape[1])  # (N, h*w, D)
    rng = np.random.default_rng(seed)
    centres, classes = [], []
    for c in sorted(set(labels.tolist())):
        pts = cells[labels == c].reshape(-1, z.shape[1]).numpy().astype(np.float64)
        if len(pts) > max_cells:
            pts = pts[np.sort(rng.choice(len(pts), max_cells, replace=False))]
        k = min(per_class, len(pts))
        km = KMeans(n_clusters=k, n_init=4, random_state=int(rng.integers(2**31))).fit(pts)
        centres.append(torch.as_tensor(km.cluster_centers_, dtype=torch.float32))
        classes += [int(c)] * k
    adapter = VectorPrototypes(layer, torch.cat(centres), similarity, classes, source="k-means class centres",
                               **layout)
    return adapter.bind(model, tuple(inputs.shape[-2:]))
