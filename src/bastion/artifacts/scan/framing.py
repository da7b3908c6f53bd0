"""Raw bytes that loaders read between or inside pickle streams, and how to step over them.

* joblib writes each numpy array's bytes raw, right after the ``BUILD`` of its
  ``NumpyArrayWrapper`` (optionally after one padding-length byte and that many pad bytes), or,
  for object arrays, a whole nested pickle stream there.
* torch's legacy formats write storages as ``int64 count`` + ``count * element_size`` bytes
  after the pickles that describe them.

Sizes are computed from the symbolic values the walker rebuilt (shape, dtype, storage type);
what cannot be sized is a finding, because the rest of the stream could not be read.
"""

from __future__ import annotations

import math
import pickletools
import re
import struct
from typing import Any

from bastion.artifacts.scan.context import ScanContext
from bastion.artifacts.scan.findings import Severity
from bastion.artifacts.scan.opcodes import (
    Call,
    DictValue,
    Global,
    MachineState,
    Reader,
    walk_pickle,
)

__all__ = ["JoblibHook", "storage_element_size"]

_STORAGE_SIZES = {
    "Double": 8, "Float": 4, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4, "Short": 2,
    "Char": 1, "Byte": 1, "Bool": 1, "ComplexFloat": 8, "ComplexDouble": 16, "QUInt8": 1,
    "QInt8": 1, "QInt32": 4, "QUInt4x2": 1, "QUInt2x4": 1, "Untyped": 1, "UInt16": 2,
    "UInt32": 4, "UInt64": 8, "Float8_e4m3fn": 1, "Float8_e5m2": 1, "Float8_e4m3fnuz": 1,
    "Float8_e5m2fnuz": 1,
}
_DTYPE_CODE = re.compile(r"^[<>|=]?([a-zA-Z])(\d*)")
_FLEXIBLE = {"S": 1, "a": 1, "U": 4, "V": 1}  # bytes per character of the code's length
_FIXED_ITEMSIZE = {"b": 1, "B": 1, "?": 1, "h": 2, "H": 2, "i": 4, "I": 4, "l": 8, "L": 8,
                   "q": 8, "Q": 8, "e": 2, "f": 4, "d": 8, "g": 16, "F": 8, "D": 16, "G": 32}


def storage_element_size(storage_type: Any) -> int | None:
    """Bytes per element of a torch storage class named by a pickle (``torch.FloatStorage``)."""
    if isinstance(storage_type, Global) and storage_type.module == "torch":
        return _STORAGE_SIZES.get(storage_type.name.removesuffix("Storage"))
    return None


def _numpy_dtype(value: Any) -> tuple[int, bool] | None:
    """(itemsize, has_object) of a pickled ``numpy.dtype(code, align, copy)`` + BUILD state."""
    if not isinstance(value, Call) or not isinstance(value.func, Global):
        return None
    if value.func.name != "dtype" or not isinstance(value.args, tuple) or not value.args:
        return None
    code = value.args[0]
    if not isinstance(code, str) or not (m := _DTYPE_CODE.match(code)):
        return None
    kind, digits = m.group(1), m.group(2)
    state = value.state if isinstance(value.state, tuple) else ()
    fields = state[4] if len(state) > 4 else None
    elsize = state[5] if len(state) > 5 and isinstance(state[5], int) else -1
    if kind == "O":
        return 8, True
    if len(state) > 2 and state[2] is not None:  # a subarray: elsize is base size * shape
        sub = state[2]  # (the walker refuses an elsize numpy would not write for them)
        base = _numpy_dtype(sub[0]) if isinstance(sub, tuple) and sub else None
        return (elsize, base[1]) if base is not None and elsize > 0 else None
    if fields is not None:  # structured: every field's dtype decides whether objects hide
        if not isinstance(fields, DictValue) or elsize <= 0:
            return None
        has_object = False
        for _, spec in fields:
            sub = _numpy_dtype(spec[0]) if isinstance(spec, tuple) and spec else None
            if sub is None:
                return None
            has_object = has_object or sub[1]
        return elsize, has_object
    if kind in _FLEXIBLE:
        # numpy takes a flexible dtype's size from the pickled state when there is one.
        if elsize > 0:
            return elsize, False
        return (int(digits) * _FLEXIBLE[kind], False) if digits else None
    # Fixed-size kinds: numpy ignores the state's elsize, so must we (a lying elsize would
    # make the scanner skip fewer bytes than joblib reads and walk array bytes as opcodes).
    if digits:
        return int(digits), False
    if kind in _FIXED_ITEMSIZE:
        return _FIXED_ITEMSIZE[kind], False
    return None


_WRAPPER = Global("joblib.numpy_pickle", "NumpyArrayWrapper")
_FACTORIES = (Global("copyreg", "_reconstructor"), Global("copyreg", "__newobj__"))


def _is_wrapper(obj: Call) -> bool:
    """Is ``obj`` an instance of joblib's wrapper, however the pickle built it?"""
    if obj.func == _WRAPPER:
        return True
    args = obj.args
    return obj.func in _FACTORIES and isinstance(args, tuple) and bool(args) and args[0] == _WRAPPER


class JoblibHook:
    """A BUILD hook that steps over the array bytes joblib writes inside its pickle stream."""

    def __init__(self, ctx: ScanContext) -> None:
        self.ctx = ctx
        self.seen = False

    def __call__(self, obj: Call, reader: Reader, location: str, state: MachineState) -> None:
        if not _is_wrapper(obj):
            return
        self.seen = True
        if reader.pos < reader.frame_end:
            # The pure-Python unpickler would read the next opcodes from the frame buffer and
            # the array from after the frame: readers disagree on where the array is.
            raise ValueError("joblib array bytes inside an open pickle frame")
        self._as_plain_pickle(reader, location, state)
        state = obj.state
        if not isinstance(state, DictValue):
            raise ValueError("joblib array wrapper without a state dict")
        shape = state.get("shape")
        dtype = _numpy_dtype(state.get("dtype"))
        if not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape):
            raise ValueError(f"joblib array wrapper with an unreadable shape {shape!r}")
        if dtype is None:
            raise ValueError("joblib array wrapper with a dtype the scanner cannot size")
        itemsize, has_object = dtype
        if has_object:
            # joblib reads it with a plain Unpickler: no array framing inside.
            inner = walk_pickle(reader.buf, reader.pos, self.ctx, f"{location}+object-array",
                                end=reader.end)
            if inner.end is None:
                raise ValueError(f"nested object-array pickle: {inner.error}")
            reader.pos = inner.end
            return
        if "numpy_array_alignment_bytes" in (k for k, _ in state) and (
            state.get("numpy_array_alignment_bytes") is not None
        ):
            if reader.pos >= reader.end:
                raise ValueError("joblib padding byte missing")
            reader.pos += 1 + reader.buf[reader.pos]
        nbytes = math.prod(shape) * itemsize
        if reader.pos + nbytes > reader.end:
            raise ValueError(f"joblib array of {nbytes} bytes runs past the end of the stream")
        reader.pos += nbytes


    def _as_plain_pickle(self, reader: Reader, location: str, state: MachineState) -> None:
        """``pickle.load`` of a joblib file reads the array bytes as the next opcodes: walk that
        reading too (from a copy of the walker's state) and report what it would run."""
        if reader.pos >= reader.end or bytes(reader.buf[reader.pos : reader.pos + 1]) \
                not in _OPCODE_BYTES:
            return  # joblib's padding byte (or data) that no unpickler reads past
        scratch = self.ctx.child()
        walk_pickle(reader.buf, reader.pos, scratch, f"{location}+as-pickle",
                           end=reader.end, state=state)
        risky = any(f.module is not None or f.severity is Severity.CRITICAL
                    for f in scratch.findings)
        self.ctx.absorb(scratch, findings=risky)
        if risky:
            self.ctx.add(Severity.WARNING, "joblib-pickle-disagreement",
                         "pickle.load reads this joblib array's bytes as opcodes, and they "
                         "import or call something (reported): joblib and pickle run different "
                         "code", f"{location}@{reader.pos}")


_OPCODE_BYTES = frozenset(op.code.encode("latin-1") for op in pickletools.opcodes)


def skip_storage(buf: memoryview, pos: int, end: int, element_size: int) -> int:
    """Offset after one legacy storage record (``int64 count`` then the elements).

    Raises:
        ValueError: the record runs past ``end`` or has a negative count.
    """
    if pos + 8 > end:
        raise ValueError("storage record header truncated")
    count: int = struct.unpack_from("<q", buf, pos)[0]
    if count < 0 or pos + 8 + count * element_size > end:
        raise ValueError(f"storage record of {count} elements runs past the end of the file")
    return pos + 8 + count * element_size


def skip_tensor_record(buf: memoryview, pos: int, end: int) -> int:
    """Offset after one tensor record of the legacy tar ``tensors`` member."""
    if pos + 8 > end:
        raise ValueError("tensor record truncated")
    ndim: int = struct.unpack_from("<i", buf, pos)[0]
    size = 8 + 16 * ndim + 8
    if ndim < 0 or pos + size > end:
        raise ValueError("tensor record truncated")
    return pos + size


def report_stream_error(ctx: ScanContext, location: str, error: str | None) -> None:
    """A pickle stream that a loader reads could not be read to its end."""
    ctx.add(Severity.WARNING, "parse-error",
            f"the pickle stream could not be read to the end ({error}); what follows the "
            "failure was not checked", location)
