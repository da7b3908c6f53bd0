"""Turn a loaded checkpoint into the flat ``name -> tensor`` mapping safetensors stores."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["flatten_tensors"]

_SCALARS = (int, float, str, bool, type(None))


def flatten_tensors(obj: Any) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """Split ``obj`` into tensors (dotted keys), JSON-able scalars (metadata) and skipped keys.

    Modules are reduced to their ``state_dict``; numeric numpy arrays become tensors. Every
    tensor is detached, made contiguous and given its own storage (safetensors refuses shared
    storage), so the result can be written as is.
    """
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    extra: dict[str, Any] = {}
    skipped: list[str] = []
    depth = [0]

    def visit(value: Any, key: str) -> None:
        if isinstance(value, torch.nn.Module):
            value = value.state_dict()
        if isinstance(value, torch.Tensor):
            if value.layout is not torch.strided or value.is_quantized:
                skipped.append(key or "<root>")
                return
            tensors[key or "tensor"] = value.detach().to("cpu").contiguous().clone()
        elif isinstance(value, np.ndarray) and value.dtype.kind in "biufc":
            tensors[key or "array"] = torch.from_numpy(np.ascontiguousarray(value)).clone()
        elif isinstance(value, Mapping):
            for k, v in value.items():
                visit(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                visit(v, f"{key}.{i}" if key else str(i))
        elif isinstance(value, _SCALARS) or isinstance(value, np.generic):
            extra[key or "value"] = value.item() if isinstance(value, np.generic) else value
        elif hasattr(value, "__dict__") and not isinstance(value, type) and depth[0] < 64:
            depth[0] += 1  # a user's checkpoint object: its attributes hold the tensors
            visit(vars(value), key)
            depth[0] -= 1
        else:
            skipped.append(f"{key or '<root>'} ({type(value).__name__})")

    visit(obj, "")
    metadata = {"bastion.extra": json.dumps(extra, default=str)} if extra else {}
    return tensors, metadata, skipped
