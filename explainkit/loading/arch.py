"""Build an architecture from a spec string, and load a state dict into it strictly.

Specs
-----
``torchvision:resnet18``
    ``torchvision.models.get_model(name, weights=None, **kwargs)``.
``timm:vit_tiny_patch16_224``
    ``timm.create_model(name, pretrained=False, **kwargs)`` (needs the ``timm`` extra).
``explainkit:tiny_cnn``
    A factory of :data:`EXPLAINKIT_ARCHITECTURES` (explainkit's own models; never any other attribute).
``package.module:factory``
    ``importlib.import_module(package.module).factory(**kwargs)``.

Keyword arguments follow in parentheses as Python literals, e.g.
``torchvision:resnet18(num_classes=10)``.

Trust
-----
A spec chooses code to run, so where it comes from matters. From the command line (``--arch``) or
the Python API any spec is honoured (:func:`parse_arch`). From anything else — a config file, an
``EXPLAINKIT_*`` environment variable, a model file's metadata — only :func:`parse_untrusted_arch`
is used: a ``torchvision:``, ``timm:`` or ``explainkit:`` architecture by its registered name, with
literal keyword arguments from :data:`UNTRUSTED_KWARGS` (sizes, counts, rates and flags, each with
a type and a range). Strings are accepted only from a fixed set of choices, so no argument can name a
file (timm's ``checkpoint_path``), a URL, weights to download or a module.
"""

from __future__ import annotations

import ast
import importlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from explainkit.errors import ConfigError, ExplainkitError
from explainkit.registry import Registry

__all__ = ["EXPLAINKIT_ARCHITECTURES", "UNTRUSTED_KWARGS", "UNTRUSTED_SOURCES", "ArchSpec", "build_arch",
           "load_state_dict_strict", "parse_arch", "parse_untrusted_arch", "strip_prefixes"]

_SPEC = re.compile(r"^\s*(?P<source>[A-Za-z_][\w.]*)\s*:\s*(?P<name>[A-Za-z_]\w*)\s*(?:\((?P<kw>.*)\))?\s*$")
_PREFIXES = ("module.", "_orig_mod.")

#: The ``explainkit:NAME`` architectures: these factories only, never other attributes of their module.
EXPLAINKIT_ARCHITECTURES: Registry[Callable[..., nn.Module]] = Registry(
    "explainkit architecture",
    builtins={name: f"explainkit.models:{name}" for name in (
        "tiny_cnn", "tiny_fcn", "tiny_protopnet", "case_based_net", "st_protopnet", "tversky_net", "hopfield_net",
        "cbc_net", "prob_psenn", "scaleprotoseg")},
)

#: Architecture sources a config file, the environment or model metadata may name.
UNTRUSTED_SOURCES = ("torchvision", "timm", "explainkit")
_LEGACY_SOURCES = {"explainkit.models": "explainkit"}  # how explainkit < 0.x wrote its own models


@dataclass(frozen=True)
class _Arg:
    """An allowed keyword argument and its type, within ``[low, high]``.

    Kinds: ``int``, ``float``, ``bool``, ``size`` (int or (h, w)), ``ints`` (a short list of ints)
    or ``choice`` (one of ``choices``).
    """

    kind: str
    low: float = 0
    high: float = 0
    choices: tuple[str, ...] = ()

    def check(self, value: object) -> str | None:
        """``None`` when ``value`` is allowed, else what was expected."""
        def is_int(v: object) -> bool:
            return type(v) is int and self.low <= v <= self.high

        if self.kind == "int":
            ok = is_int(value)
        elif self.kind == "float":
            ok = type(value) in (int, float) and math.isfinite(value) and self.low <= value <= self.high
        elif self.kind == "bool":
            ok = type(value) is bool
        elif self.kind == "choice":
            ok = type(value) is str and value in self.choices
        elif self.kind == "size":
            ok = is_int(value) or (type(value) in (tuple, list) and len(value) == 2 and all(map(is_int, value)))
        else:  # ints
            ok = type(value) in (tuple, list) and 1 <= len(value) <= 16 and all(map(is_int, value))
        if ok:
            return None
        if self.kind == "choice":
            return f"one of {', '.join(map(repr, self.choices))}"
        what = {"int": "an integer", "float": "a number", "bool": "true or false", "size": "an integer or (h, w)",
                "ints": "a list of up to 16 integers"}[self.kind]
        return what if self.kind == "bool" else f"{what} in [{self.low:g}, {self.high:g}]"


_RATE = _Arg("float", 0, 1)
_DIM = _Arg("int", 1, 65536)
#: Keyword arguments an untrusted spec may carry, with their types and ranges.
UNTRUSTED_KWARGS: dict[str, _Arg] = {
    "num_classes": _Arg("int", 0, 100_000), "in_chans": _Arg("int", 1, 64), "in_channels": _Arg("int", 1, 64),
    "img_size": _Arg("size", 8, 8192), "image_size": _Arg("int", 8, 8192), "patch_size": _Arg("size", 1, 1024),
    "global_pool": _Arg("choice", choices=("", "avg", "max", "avgmax", "catavgmax", "fast", "token", "map",
                                           "avg_token")),
    "embed_dim": _DIM, "hidden_dim": _DIM, "mlp_dim": _DIM, "depth": _Arg("int", 1, 256),
    "num_layers": _Arg("int", 1, 256), "num_heads": _Arg("int", 1, 256), "mlp_ratio": _Arg("float", 0, 64),
    "width_mult": _Arg("float", 0, 16), "reg_tokens": _Arg("int", 0, 64), "class_token": _Arg("bool"),
    "no_embed_class": _Arg("bool"), "qkv_bias": _Arg("bool"), "aux_logits": _Arg("bool"),
    "init_weights": _Arg("bool"), "transform_input": _Arg("bool"), "zero_init_residual": _Arg("bool"),
    "drop_rate": _RATE, "drop_path_rate": _RATE, "proj_drop_rate": _RATE, "attn_drop_rate": _RATE,
    "pos_drop_rate": _RATE, "dropout": _RATE, "attention_dropout": _RATE,
    "widths": _Arg("ints", 1, 8192), "prototypes_per_class": _Arg("int", 1, 1024),
    "prototype_dim": _Arg("int", 1, 8192),
}


@dataclass(frozen=True)
class ArchSpec:
    """A parsed ``--arch`` value."""

    source: str
    name: str
    kwargs: Mapping[str, object] = field(default_factory=dict)

    def __str__(self) -> str:
        kw = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.source}:{self.name}" + (f"({kw})" if kw else "")


def parse_arch(spec: str) -> ArchSpec:
    """Parse ``source:name(key=literal, ...)`` from a trusted source (command line, Python API).

    Parameters
    ----------
    spec : str
        The architecture spec.

    Returns
    -------
    ArchSpec
        The parsed spec.

    Raises
    ------
    ConfigError
        The spec is malformed.
    """
    match = _SPEC.match(spec or "")
    if not match:
        raise ConfigError(
            f"bad --arch {spec!r}: expected torchvision:NAME, timm:NAME, explainkit:NAME or package.module:factory, "
            "optionally followed by (key=value, ...)"
        )
    kwargs: dict[str, object] = {}
    if match["kw"] and match["kw"].strip():
        try:
            call = ast.parse(f"f({match['kw']})", mode="eval").body
            if not isinstance(call, ast.Call) or call.args or any(kw.arg is None for kw in call.keywords):
                raise ValueError
            kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
        except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
            raise ConfigError(f"bad --arch {spec!r}: arguments must be key=literal pairs") from None
    return ArchSpec(match["source"], match["name"], kwargs)


def parse_untrusted_arch(spec: str, origin: str, error: type[ExplainkitError] = ConfigError) -> ArchSpec:
    """Parse a spec from a source that must not choose code (config file, environment, model metadata).

    Parameters
    ----------
    spec : str
        The architecture spec.
    origin : str
        Where it came from, for the message (``"policy.toml line 3: 'arch'"``,
        ``"environment variable EXPLAINKIT_ARCH"``, ``"model metadata 'explainkit.arch' of m.safetensors"``).
    error : type
        The exception to raise (:class:`ConfigError`, exit code 2, for configuration;
        :class:`~explainkit.errors.ModelRefusedError`, exit code 4, for model metadata).

    Returns
    -------
    ArchSpec
        A ``torchvision:``, ``timm:`` or ``explainkit:`` spec whose name exists and whose arguments
        are in :data:`UNTRUSTED_KWARGS` with allowed values.

    Raises
    ------
    ExplainkitError
        ``error``, naming ``origin`` and the reason.
    """
    def refuse(reason: str) -> ExplainkitError:
        return error(f"{origin}: refusing architecture {spec!r}: {reason}; only torchvision:NAME, timm:NAME and "
                     "explainkit:NAME with size and count arguments are accepted from here "
                     "(pass --arch on the command line to choose other code)")

    try:
        parsed = parse_arch(spec)
    except ConfigError:
        raise refuse("arguments must be key=literal pairs") from None
    source = _LEGACY_SOURCES.get(parsed.source, parsed.source)
    if source not in UNTRUSTED_SOURCES:
        raise refuse(f"{parsed.source!r} is not one of {', '.join(UNTRUSTED_SOURCES)}")
    for key, value in parsed.kwargs.items():
        rule = UNTRUSTED_KWARGS.get(key)
        if rule is None:
            raise refuse(f"argument {key!r} is not allowed (allowed: {', '.join(sorted(UNTRUSTED_KWARGS))})")
        expected = rule.check(value)
        if expected is not None:
            raise refuse(f"argument {key!r} must be {expected}, got {value!r}")
    if not _known_name(source, parsed.name):
        raise refuse(f"{parsed.name!r} is not a registered {source} architecture")
    return ArchSpec(source, parsed.name, parsed.kwargs)


def _known_name(source: str, name: str) -> bool:
    if source == "explainkit":
        return name in EXPLAINKIT_ARCHITECTURES.names()
    if source == "torchvision":
        import torchvision

        return name in torchvision.models.list_models()
    try:
        import timm
    except ImportError:
        return True  # build_arch explains the missing extra
    return bool(timm.is_model(name))


def build_arch(spec: ArchSpec) -> nn.Module:
    """Instantiate the architecture named by ``spec`` with random weights.

    Parameters
    ----------
    spec : ArchSpec
        The parsed spec.

    Returns
    -------
    torch.nn.Module
        The untrained model.

    Raises
    ------
    ConfigError
        Unknown source, name or arguments, or a missing optional dependency.
    """
    try:
        if spec.source == "torchvision":
            import torchvision

            if spec.name not in torchvision.models.list_models():
                raise ConfigError(f"unknown torchvision architecture {spec.name!r}")
            return torchvision.models.get_model(spec.name, weights=None, **spec.kwargs)
        if spec.source == "timm":
            try:
                import timm
            except ImportError:
                raise ConfigError("--arch timm:... needs timm: pip install 'explainkit[timm]'") from None
            if not timm.is_model(spec.name):
                raise ConfigError(f"unknown timm architecture {spec.name!r}")
            return timm.create_model(spec.name, pretrained=False, **spec.kwargs)
        if spec.source == "explainkit":
            return EXPLAINKIT_ARCHITECTURES.get(spec.name)(**spec.kwargs)
        try:
            module = importlib.import_module("explainkit.models" if spec.source == "explainkit" else spec.source)
        except ImportError as exc:
            raise ConfigError(f"--arch {spec}: cannot import {spec.source!r} ({exc})") from None
        factory = getattr(module, spec.name, None)
        if not callable(factory):
            raise ConfigError(f"--arch {spec}: {spec.source} has no callable {spec.name!r}")
        model = factory(**spec.kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"--arch {spec}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--arch {spec}: the factory returned {type(model).__name__}, not an nn.Module")
    return model


def strip_prefixes(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove DDP (``module.``) and ``torch.compile`` (``_orig_mod.``) key prefixes.

    Parameters
    ----------
    state : mapping of str to Tensor
        A state dict.

    Returns
    -------
    state : dict
        The cleaned state dict.
    stripped : list of str
        The prefixes that were removed (for the load report).
    """
    stripped: list[str] = []
    out = dict(state)
    changed = True
    while changed and out:
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in out):
                out = {k[len(prefix) :]: v for k, v in out.items()}
                stripped.append(prefix)
                changed = True
    return out, stripped


def load_state_dict_strict(model: nn.Module, state: Mapping[str, torch.Tensor], spec: str) -> None:
    """Load ``state`` into ``model`` with ``strict=True`` and a readable error.

    Parameters
    ----------
    model : torch.nn.Module
        The freshly built architecture.
    state : mapping of str to Tensor
        Weights, prefixes already stripped.
    spec : str
        The architecture spec, for the message.

    Raises
    ------
    ConfigError
        Missing or unexpected keys, or shape mismatches.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"shape mismatch: {'; '.join(shapes[:3])}")
            if "num_classes" not in spec:
                parts.append("if the classifier size differs, pass it: --arch 'NAME(num_classes=K)'")
        raise ConfigError(f"weights do not match --arch {spec}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
