"""Turn analyzer output into strict JSON values (no NaN, no NumPy or torch scalars)."""

from __future__ import annotations

import dataclasses
import math
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["jsonable"]


def jsonable(obj: Any) -> Any:
    """Recursively convert ``obj`` to JSON-compatible Python values.

    Non-finite floats become ``None``; NumPy arrays and tensors become (nested) lists; tuples
    become lists; paths and enums become strings; dataclasses become dicts.

    Parameters
    ----------
    obj : Any
        Value to convert.

    Returns
    -------
    Any
        A value ``json.dumps(..., allow_nan=False)`` accepts.
    """
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Enum):
        return jsonable(obj.value)
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "to_dict"):
        return jsonable(obj.to_dict())
    raise TypeError(f"cannot put {type(obj).__name__} in a JSON report")
