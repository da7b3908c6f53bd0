"""safetensors: no code can hide in it, but a malformed header can still hurt a loader.

The file is ``u64 little-endian header length`` + a JSON object header + the tensor bytes. The
header maps each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets
relative to the end of the header) and may hold ``__metadata__`` (strings to strings).
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

from bastion.artifacts.scan.context import ScanContext
from bastion.artifacts.scan.findings import Severity

__all__ = ["check_safetensors"]

_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16,
    "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64,
    "F64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
_MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's own bound


def _problems(buf: memoryview) -> list[str]:
    if len(buf) < 8:
        return ["file shorter than the 8-byte header length"]
    (n,) = struct.unpack_from("<Q", buf, 0)
    if n > _MAX_HEADER:
        return [f"header length {n} exceeds {_MAX_HEADER}"]
    if 8 + n > len(buf):
        return [f"header length {n} runs past the end of the file"]
    try:
        header = json.loads(bytes(buf[8 : 8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return [f"header is not valid JSON: {exc}"]
    if not isinstance(header, dict):
        return ["header is not a JSON object"]
    data_len = len(buf) - 8 - n
    out: list[str] = []
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in info.items()
            ):
                out.append("__metadata__ must map strings to strings")
            continue
        out.extend(_tensor_problems(name, info, data_len, spans))
    spans.sort()
    for (_, end_a, name_a), (begin_b, _, name_b) in zip(spans, spans[1:], strict=False):
        if begin_b < end_a:
            out.append(f"tensors {name_a!r} and {name_b!r} overlap")
    return out


def _tensor_problems(name: str, info: Any, data_len: int,
                     spans: list[tuple[int, int, str]]) -> list[str]:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        return [f"{name!r}: entry must have exactly dtype, shape and data_offsets"]
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in _DTYPE_BITS:
        return [f"{name!r}: unknown dtype {dtype!r}"]
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        return [f"{name!r}: shape must be a list of non-negative integers"]
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(type(o) is int for o in offsets)):
        return [f"{name!r}: data_offsets must be two integers"]
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        return [f"{name!r}: data_offsets {offsets} outside the {data_len} data bytes"]
    bits = math.prod(shape) * _DTYPE_BITS[dtype]
    if bits % 8 or bits // 8 != end - begin:
        return [f"{name!r}: {end - begin} bytes do not hold a {dtype} tensor of shape {shape}"]
    spans.append((begin, end, name))
    return []


def check_safetensors(buf: memoryview, ctx: ScanContext, loc: str) -> None:
    """Add a ``malformed-safetensors`` warning for each problem of the header (only the header
    and the file length are read)."""
    for problem in _problems(buf):
        ctx.add(Severity.WARNING, "malformed-safetensors", problem, loc)
