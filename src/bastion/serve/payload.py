"""The predict request body: JSON nested arrays or a base64 ``.npy``, decoded into one batch.

Untrusted bytes are judged before anything is allocated from them: the JSON document is parsed
with bounded size (the body limit) and converted by :func:`bastion.guard.as_tensor`, which walks
the nesting first; a ``.npy`` file is read with ``allow_pickle`` never involved - only its header
is parsed (a Python literal, read by numpy's safe reader), its dtype, rank, fixed dimensions and
byte count are checked against the schema and the limits, and only then are its bytes viewed.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import Tensor

from bastion.core.errors import InputValidationError
from bastion.guard.schema import TensorSchema, as_tensor
from bastion.serve.limits import Refusal

__all__ = ["PredictRequest", "decode_npy", "parse_predict"]

_MAX_HEADER = 4096


class PredictRequest(BaseModel):
    """``{"inputs": [...]}`` (nested arrays of one batch) or ``{"npy": "<base64 .npy>"}``."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[Any] | None = Field(
        default=None, description="One batch as nested arrays, sample dimension first."
    )
    npy: str | None = Field(
        default=None,
        description="One batch as a base64-encoded .npy file (numeric dtypes; no pickles).",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> PredictRequest:
        if (self.inputs is None) == (self.npy is None):
            raise ValueError("give exactly one of 'inputs' or 'npy'")
        return self


def parse_predict(body: bytes, schema: TensorSchema, *, max_batch: int) -> Tensor:
    """Decode a predict body into a batch tensor, or raise a 4xx :class:`Refusal`.

    Example:
        >>> schema = TensorSchema(shape=("batch", 2))
        >>> parse_predict(b'{"inputs": [[0.5, 1]]}', schema, max_batch=8)
        tensor([[0.5000, 1.0000]])
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise Refusal(400, "malformed_json", f"the body is not valid JSON: {exc}") from None
    try:
        request = PredictRequest.model_validate(document)
    except ValidationError as exc:
        raise Refusal(
            422,
            "invalid_request",
            "the body must be {\"inputs\": [...]} or {\"npy\": \"<base64>\"}",
            detail=exc.errors(include_url=False, include_context=False, include_input=False),
        ) from None
    max_elements = max_batch * _sample_size(schema)
    if request.inputs is not None and len(request.inputs) > max_batch:
        raise _batch_too_large(len(request.inputs), max_batch)
    try:
        if request.npy is not None:
            batch = decode_npy(request.npy, schema, max_elements=max_elements, max_batch=max_batch)
        else:
            batch = as_tensor(request.inputs, schema, max_elements=max_elements)
    except InputValidationError as exc:
        raise Refusal(422, "invalid_input", str(exc)) from None
    return batch


def _batch_too_large(size: int, limit: int) -> Refusal:
    return Refusal(413, "batch_too_large", f"{size} samples, more than the limit of {limit}")


def _sample_size(schema: TensorSchema) -> int:
    fixed = [d for d in schema.shape[1:] if isinstance(d, int)]
    return max(1, math.prod(fixed)) if len(fixed) == len(schema.shape) - 1 else 1 << 20


def _bad(message: str) -> InputValidationError:
    return InputValidationError(message, violations=[message])


def decode_npy(
    text: str, schema: TensorSchema, *, max_elements: int, max_batch: int | None = None
) -> Tensor:
    """A batch from a base64 ``.npy`` file, checked against ``schema`` before it is built.

    Raises:
        InputValidationError: not base64, not a version 1/2 ``.npy``, a dtype that is not plain
            numbers, a rank or fixed dimension unlike the schema's, too many values, or a byte
            count that does not match the header.
        Refusal: 413 when the batch has more than ``max_batch`` samples.

    Example:
        >>> buf = io.BytesIO(); np.save(buf, np.zeros((3, 2), np.float32))
        >>> decode_npy(base64.b64encode(buf.getvalue()).decode(), TensorSchema(shape=("b", 2)),
        ...            max_elements=100).shape
        torch.Size([3, 2])
    """
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("npy: not valid base64") from None
    stream = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(
                stream, max_header_size=_MAX_HEADER
            )
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(
                stream, max_header_size=_MAX_HEADER
            )
        else:
            raise _bad(f"npy: format version {version} is not supported (use 1.0 or 2.0)")
    except InputValidationError:
        raise
    except Exception as exc:  # numpy raises ValueError, SyntaxError, EOFError, ... on bad headers
        raise _bad(f"npy: not a valid .npy header ({type(exc).__name__}: {exc})") from None
    target = _target_dtype(dtype, schema)
    if max_batch is not None and len(shape) >= 1 and shape[0] > max_batch:
        raise _batch_too_large(shape[0], max_batch)
    _check_shape(shape, schema, max_elements)
    count = math.prod(shape)
    offset = stream.tell()
    if len(raw) - offset != count * dtype.itemsize:
        raise _bad(
            f"npy: the header promises {count * dtype.itemsize} data bytes for shape {shape}, "
            f"found {len(raw) - offset}"
        )
    flat = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
    array = flat.reshape(shape, order="F" if fortran else "C")
    return torch.from_numpy(np.array(array, dtype=target, order="C", copy=True))


def _target_dtype(dtype: np.dtype[Any], schema: TensorSchema) -> np.dtype[Any]:
    """The numpy dtype to build: the schema's first dtype when the kinds agree, else refused."""
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in "biuf":
        raise _bad(f"npy: dtype {dtype} is not a plain numeric dtype")
    wanted = schema.dtypes[0]
    wanted_np = torch.empty(0, dtype=wanted).numpy().dtype if wanted != torch.bfloat16 else None
    if wanted_np is None:
        raise _bad("npy: the schema's dtype bfloat16 has no .npy form; send JSON inputs")
    same_kind = (dtype.kind == "f") == (wanted_np.kind == "f") and (dtype.kind == "b") == (
        wanted_np.kind == "b"
    )
    if not same_kind:
        raise _bad(f"npy: dtype {dtype} does not match the schema's {wanted_np}")
    return wanted_np


def _check_shape(shape: tuple[int, ...], schema: TensorSchema, max_elements: int) -> None:
    if len(shape) != len(schema.shape):
        raise _bad(
            f"npy: shape {shape} has rank {len(shape)}, the schema {schema.describe_shape()} "
            f"has rank {len(schema.shape)}"
        )
    for axis, (got, want) in enumerate(zip(shape, schema.shape, strict=True)):
        if isinstance(want, int) and got != want:
            raise _bad(
                f"npy: dimension {axis} is {got}, the schema {schema.describe_shape()} needs {want}"
            )
    if math.prod(shape) > max_elements:
        raise _bad(f"npy: {math.prod(shape):,} values, more than the limit of {max_elements:,}")
