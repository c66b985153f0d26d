"""Decide a model file's format from its bytes, never from its extension.

Exactly one format is returned per file, so exactly one loader ever sees it; a file that matches
no rule is refused. The zip rules follow ``torch.serialization``: the archive must *start* with a
local-file header (``zipfile.is_zipfile`` would accept a signature anywhere in the file).
"""

from __future__ import annotations

import json
import struct
import zipfile
from enum import StrEnum
from pathlib import Path

from explainkit.errors import ModelRefusedError

__all__ = ["ModelFormat", "sniff_format"]

_ZIP_MAGIC = b"PK\x03\x04"
# Legacy (pre-1.6, non-zip) torch.save: protocol-2 pickle of a LONG1 holding this magic number.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PREFIX = b"\x80\x02\x8a\x0a" + _LEGACY_MAGIC.to_bytes(10, "little")
_SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024
#: ``torch.save`` stores zip entries uncompressed; a compressed entry expanding more than this many
#: times (beyond a small allowance) is treated as a decompression bomb and never inflated.
_MAX_EXPANSION = 100
_EXPANSION_ALLOWANCE = 16 * 1024 * 1024


class ModelFormat(StrEnum):
    """Formats explainkit can identify."""

    SAFETENSORS = "safetensors"
    TORCH_ZIP = "torch-zip"
    TORCH_LEGACY = "torch-legacy"
    TORCHSCRIPT = "torchscript"
    TORCH_EXPORT = "torch-export"
    IN_MEMORY = "in-memory"


def sniff_format(path: str | Path) -> ModelFormat:
    """Return the format of the model file at ``path``.

    Parameters
    ----------
    path : str or Path
        The model file.

    Returns
    -------
    ModelFormat
        One of the file formats (never ``IN_MEMORY``).

    Raises
    ------
    ModelRefusedError
        The file is empty, truncated, corrupt, or of an unknown kind.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise ModelRefusedError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    if size == 0:
        raise ModelRefusedError(f"model file {path} is empty")
    if head.startswith(_ZIP_MAGIC):
        return _sniff_zip(path)
    if head.startswith(_LEGACY_PREFIX):
        return ModelFormat.TORCH_LEGACY
    if _looks_like_safetensors(path, head, size):
        return ModelFormat.SAFETENSORS
    raise ModelRefusedError(
        f"unrecognised model format for {path} (expected safetensors, a torch.save checkpoint, "
        "TorchScript or a torch.export .pt2 archive)"
    )


def _sniff_zip(path: Path) -> ModelFormat:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            _refuse_bombs(path, zf)
            bad = zf.testzip()
            tops = {n.split("/", 1)[0] for n in names if "/" in n}
            if len(tops) != 1 or bad is not None:
                raise zipfile.BadZipFile("inconsistent archive")
            top = next(iter(tops))
            inner = {n[len(top) + 1 :] for n in names}
            if "constants.pkl" in inner:
                return ModelFormat.TORCHSCRIPT
            if "archive_format" in inner:
                if zf.read(f"{top}/archive_format").strip() == b"pt2":
                    return ModelFormat.TORCH_EXPORT
                raise ModelRefusedError(f"unknown archive format in {path}")
            if "data.pkl" in inner:
                return ModelFormat.TORCH_ZIP
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise ModelRefusedError(f"model file {path} is a corrupt or truncated zip archive ({exc})") from None
    raise ModelRefusedError(f"model file {path} is a zip archive but not a PyTorch checkpoint")


def _refuse_bombs(path: Path, zf: zipfile.ZipFile) -> None:
    for info in zf.infolist():
        if info.file_size > _EXPANSION_ALLOWANCE + _MAX_EXPANSION * info.compress_size:
            raise ModelRefusedError(
                f"model file {path}: entry {info.filename} expands to {info.file_size} bytes from "
                f"{info.compress_size} when decompressed; refusing a possible zip bomb (torch.save writes "
                "uncompressed archives)"
            )


def _looks_like_safetensors(path: Path, head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    if not 2 <= n <= min(_SAFETENSORS_MAX_HEADER, size - 8) or head[8:9] != b"{":
        return False
    with path.open("rb") as fh:
        fh.seek(8)
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not isinstance(header, dict):
        return False
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not (isinstance(entry, dict) and {"dtype", "shape", "data_offsets"} <= entry.keys()):
            return False
        end = max(end, int(entry["data_offsets"][1]))
    if 8 + n + end > size:
        raise ModelRefusedError(f"safetensors file {path} is truncated ({size} bytes, header needs {8 + n + end})")
    return True
