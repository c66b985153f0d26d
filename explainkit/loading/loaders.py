"""``load_model`` and ``wrap``: from a file (or a module) to a :class:`ModelHandle`."""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from explainkit.errors import ConfigError, ModelRefusedError
from explainkit.loading.arch import (
    ArchSpec,
    build_arch,
    load_state_dict_strict,
    parse_arch,
    parse_untrusted_arch,
    strip_prefixes,
)
from explainkit.loading.handle import ModelHandle
from explainkit.loading.preprocessing import (
    arch_defaults,
    metadata_preprocessing,
    resolve_preprocessing,
)
from explainkit.loading.sniff import ModelFormat, sniff_format
from explainkit.loading.trust import load_pickle_checkpoint

__all__ = ["file_sha256", "load_model", "wrap"]

_STATE_KEYS = ("state_dict", "model_state_dict", "model")


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _metadata_class_names(raw: str | None, where: str) -> tuple[str, ...] | None:
    """Class names from model metadata: a JSON list of strings, never a path to read."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError
        return _read_class_names(value)
    except (ValueError, RecursionError, ConfigError):
        raise ModelRefusedError(f"model metadata 'class_names' of {where} must be a JSON list of unique, non-empty "
                                "strings") from None


def _read_class_names(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, Path) or (isinstance(value, str) and Path(value).suffix in {".txt", ".json"}):
        path = Path(value)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read class names from {path}: {exc}") from None
        if path.suffix == ".json":
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"class names file {path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
        else:
            value = [line.strip() for line in text.splitlines() if line.strip()]
    if isinstance(value, str):
        value = json.loads(value) if value.lstrip().startswith("[") else value.split(",")
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise ConfigError("class names must be a list of strings")
    names = tuple(v.strip() for v in value)
    if len(set(names)) != len(names) or not all(names):
        raise ConfigError("class names must be non-empty and unique")
    return names


def _extract_state_dict(obj: object) -> tuple[dict[str, torch.Tensor] | None, nn.Module | None, dict]:
    """Split a loaded object into (state dict, module, extra info)."""
    if isinstance(obj, nn.Module):
        return None, obj, {}
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj), None, {}
        for key in _STATE_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                return None, inner, {"checkpoint_key": key, "checkpoint": obj}
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return dict(inner), None, {"checkpoint_key": key, "checkpoint": obj}
    raise ConfigError(
        "the checkpoint holds neither a module nor a state dict (expected a dict of tensors or a "
        f"dict with one of the keys {', '.join(_STATE_KEYS)})"
    )


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = dict(fh.metadata() or {})
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelRefusedError(f"corrupt safetensors file {path}: {exc}") from None
    return state, metadata


def _unflatten_export(path: Path) -> tuple[nn.Module, int | None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.export.load(str(path))
        except Exception as exc:
            raise ModelRefusedError(f"cannot load torch.export program {path}: {str(exc).splitlines()[0]}") from None
    static = None
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in program.graph_signature.user_inputs:
            val = node.meta.get("val")
            if val is not None and val.dim() > 0 and not isinstance(val.shape[0], torch.SymInt):
                static = int(val.shape[0])
            break
    return torch.export.unflatten(program), static


def load_model(
    path: str | Path,
    *,
    arch: str | ArchSpec | None = None,
    trust: bool = False,
    allow_classes: Sequence[str] = (),
    class_names: Sequence[str] | str | Path | None = None,
    output_key: str | int | None = None,
    **preprocessing: Any,
) -> ModelHandle:
    """Load a model file safely and return a :class:`ModelHandle`.

    The format is detected from the file's bytes. safetensors and tensor-only ``torch.save``
    checkpoints load by default; full-module pickles only when every class they import is an
    ``nn.Module`` from ``torch.nn`` or from a module in ``allow_classes``; TorchScript,
    ``torch.export`` programs and any file needing ``weights_only=False`` only with ``trust=True``.

    Parameters
    ----------
    path : str or Path
        The model file.
    arch : str or ArchSpec, optional
        Architecture spec for weight files (``torchvision:resnet18``, ``timm:NAME``,
        ``explainkit:NAME``, ``package.module:factory``, each optionally with ``(key=value, ...)``);
        any spec given here is trusted to choose code. When omitted it is taken from the file's
        safetensors metadata (``explainkit.arch``), which is trusted only to name a torchvision,
        timm or explainkit architecture with allowed size and count arguments
        (:func:`explainkit.loading.arch.parse_untrusted_arch`); anything else there is refused.
    trust : bool
        Allow formats that execute code when loaded.
    allow_classes : sequence of str
        Modules whose ``nn.Module`` classes a full-module pickle may use.
    class_names : sequence of str, or a path to a .txt/.json file, optional
        Output class names; else taken from the file's metadata (a JSON list) when present.
    output_key : str or int, optional
        For models returning a dict, tuple or list: the entry holding the (B, K) logits. By default
        the tensor itself, the first tensor of a tuple/list, or in a dict the first of ``logits``,
        ``out``, ``output``, ``scores``, else its only tensor (:func:`explainkit.adapters.select_logits`).
    **preprocessing
        ``input_size``, ``mean``, ``std``, ``resize`` (see :mod:`explainkit.loading.preprocessing`).
        Fields not given are taken from the file's metadata or the architecture's defaults; when
        still unknown, the handle has no preprocessing and reading images fails with a clear error.

    Returns
    -------
    ModelHandle
        The loaded model, in eval mode, on the CPU.

    Raises
    ------
    ModelRefusedError
        Unknown, corrupt, or untrusted file, or metadata naming code or values it may not (exit code 4).
    ConfigError
        Bad arch spec, mismatching weights or bad preprocessing (exit code 2).
    """
    path = Path(path)
    fmt = sniff_format(path)
    sha = file_sha256(path)
    loader = _LOADERS[fmt]
    module, info = loader(path, arch=arch, trust=trust, allow_classes=tuple(allow_classes))
    module.eval()
    metadata: Mapping[str, str] = info.pop("metadata", {})
    names = _read_class_names(class_names) or _metadata_class_names(metadata.get("class_names"), path.name) \
        or _read_class_names(info.pop("class_names", None))
    arch_used = info.get("arch")
    prep = resolve_preprocessing(
        {k: v for k, v in preprocessing.items() if v is not None},
        metadata=metadata_preprocessing(metadata, where=path.name),
        defaults=arch_defaults(module, arch_used),
        defaults_source=f"defaults of {arch_used}" if arch_used else "model defaults",
        required=False,
    )
    return ModelHandle(
        module=module,
        format=fmt,
        trust_mode=info.pop("trust_mode"),
        sha256=sha,
        preprocessing=prep,
        class_names=names,
        source=str(path),
        arch=arch_used,
        module_hooks=info.pop("module_hooks", True),
        static_batch=info.pop("static_batch", None),
        output_key=output_key,
        load_notes=info,
    )


def _metadata_arch(metadata: Mapping[str, str], path: Path) -> ArchSpec | None:
    """The architecture the file's metadata names, through the allow-list (a refusal is exit code 4)."""
    for key in ("explainkit.arch", "arch"):
        if metadata.get(key):
            return parse_untrusted_arch(metadata[key], f"model metadata {key!r} of {path.name}", ModelRefusedError)
    return None


def _build_from_state(
    state: dict[str, torch.Tensor], arch: str | ArchSpec | None, metadata: Mapping[str, str], path: Path
) -> tuple[nn.Module, dict[str, Any]]:
    spec = (arch if isinstance(arch, ArchSpec) else parse_arch(arch)) if arch is not None \
        else _metadata_arch(metadata, path)
    if spec is None:
        raise ConfigError(f"{path} holds weights only; pass --arch to say which architecture")
    model = build_arch(spec)
    state, stripped = strip_prefixes(state)
    load_state_dict_strict(model, state, str(spec))
    return model, {"arch": str(spec), "stripped_prefixes": stripped}


def _load_safetensors_model(path: Path, *, arch: str | ArchSpec | None, **_: Any) -> tuple[nn.Module, dict]:
    state, metadata = _load_safetensors(path)
    model, info = _build_from_state(state, arch, metadata, path)
    return model, {**info, "trust_mode": "weights-only", "metadata": metadata}


def _load_torch_pickle(
    path: Path, *, arch: str | ArchSpec | None, trust: bool, allow_classes: tuple[str, ...], legacy: bool
) -> tuple[nn.Module, dict]:
    loaded = load_pickle_checkpoint(path, legacy=legacy, trust=trust, allow_classes=allow_classes)
    state, module, extra = _extract_state_dict(loaded.obj)
    info: dict[str, Any] = {"trust_mode": loaded.trust_mode}
    if loaded.globals_allowed:
        info["globals_allowed"] = list(loaded.globals_allowed)
    checkpoint = extra.get("checkpoint", {})
    if isinstance(checkpoint, Mapping):
        names = checkpoint.get("class_names", checkpoint.get("classes"))
        if isinstance(names, list | tuple) and all(isinstance(n, str) for n in names):
            info["class_names"] = list(names)
        if "checkpoint_key" in extra:
            info["checkpoint_key"] = extra["checkpoint_key"]
    if module is not None:
        if arch is not None:
            raise ConfigError(f"{path} holds a full module; --arch is only for weight files")
        return module, info
    model, built = _build_from_state(state or {}, arch, {}, path)
    return model, {**info, **built}


def _load_torchscript(path: Path, *, trust: bool, **_: Any) -> tuple[nn.Module, dict]:
    if not trust:
        raise ModelRefusedError(
            f"refusing {path}: TorchScript archives are programs and run code when loaded; "
            "pass --trust only for a file you trust"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ModelRefusedError(f"cannot load TorchScript {path}: {str(exc).splitlines()[0]}") from None
    return module, {"trust_mode": "trusted", "module_hooks": False}


def _load_export(path: Path, *, trust: bool, **_: Any) -> tuple[nn.Module, dict]:
    if not trust:
        raise ModelRefusedError(
            f"refusing {path}: torch.export programs embed pickles that run code when loaded; "
            "pass --trust only for a file you trust"
        )
    module, static = _unflatten_export(path)
    return module, {"trust_mode": "trusted", "static_batch": static}


_LOADERS: dict[ModelFormat, Callable[..., tuple[nn.Module, dict]]] = {
    ModelFormat.SAFETENSORS: _load_safetensors_model,
    ModelFormat.TORCH_ZIP: lambda path, **kw: _load_torch_pickle(path, legacy=False, **kw),
    ModelFormat.TORCH_LEGACY: lambda path, **kw: _load_torch_pickle(path, legacy=True, **kw),
    ModelFormat.TORCHSCRIPT: _load_torchscript,
    ModelFormat.TORCH_EXPORT: _load_export,
}


def wrap(
    module: nn.Module,
    *,
    class_names: Sequence[str] | str | Path | None = None,
    output_key: str | int | None = None,
    **preprocessing: Any,
) -> ModelHandle:
    """Wrap a model already in memory as a :class:`ModelHandle`.

    Parameters
    ----------
    module : torch.nn.Module
        The model. Its training flag is left as it is; analyzers switch to eval mode temporarily.
    class_names : sequence of str or path, optional
        Output class names.
    output_key : str or int, optional
        The dict key or sequence index of the logits in the model's output (see :func:`load_model`).
    **preprocessing
        ``input_size``, ``mean``, ``std``, ``resize``; optional (only needed to read images).

    Returns
    -------
    ModelHandle
        A handle with format ``in-memory``.
    """
    if isinstance(module, ModelHandle):
        return module
    if not isinstance(module, nn.Module):
        raise ConfigError(f"expected a torch.nn.Module, got {type(module).__name__}")
    is_script = isinstance(module, torch.jit.ScriptModule)
    prep = resolve_preprocessing(
        {k: v for k, v in preprocessing.items() if v is not None},
        defaults=arch_defaults(module, None),
        required=False,
    )
    return ModelHandle(
        module=module,
        format=ModelFormat.IN_MEMORY,
        trust_mode="in-memory",
        preprocessing=prep,
        class_names=_read_class_names(class_names),
        module_hooks=not is_script,
        output_key=output_key,
    )
