"""What callers hand the audit log, made canonical: input digests and the ``since`` filter.

Both come from outside the log (a request's input, a reader's time filter) and both must mean
one thing only: equal inputs give equal digests (so an array of Python objects, whose bytes are
pointers, is refused), and a time filter is compared with the stored UTC texts only after it was
parsed and converted to UTC (so ``"garbage"`` or a time without an offset is refused, not
compared as text).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import numpy as np
import torch

from bastion.core.errors import ConfigurationError, InputValidationError

__all__ = ["digest_input", "since_text"]

_BYTES_TAG = b"bastion-bytes-v1\0"


def digest_input(data: torch.Tensor | np.ndarray | bytes | str) -> str:
    """SHA-256 (hex) of an input's canonical bytes: dtype, shape and C-order little-endian data.

    Equal tensors give equal digests whatever their device, strides or memory layout; bytes and
    strings (UTF-8) are hashed as given.

    Raises:
        InputValidationError: an array of Python objects or raw (void) records, whose bytes are
            pointers or padding rather than the values, so equal inputs would differ.

    Example:
        >>> import torch
        >>> digest_input(torch.zeros(2, 2)) == digest_input(torch.zeros(4).reshape(2, 2).t())
        True
    """
    if type(data) is bytes:  # a server's request body: the common case, in two calls
        return hashlib.sha256(_BYTES_TAG + data).hexdigest()
    h = hashlib.sha256()
    if isinstance(data, str):
        data = data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        h.update(_BYTES_TAG)
        h.update(bytes(data))
        return h.hexdigest()
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().contiguous().numpy()
    arr = np.ascontiguousarray(data)
    if arr.dtype.kind in "OV":
        message = f"cannot digest an array of numpy dtype {arr.dtype}: use numbers or bytes"
        raise InputValidationError(message, violations=[message])
    arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    header = json.dumps({"dtype": arr.dtype.str, "shape": list(arr.shape)}, sort_keys=True)
    h.update(b"bastion-array-v1\0" + header.encode("ascii") + b"\0")
    h.update(arr.tobytes(order="C"))
    return h.hexdigest()


def since_text(since: dt.datetime | str | None) -> str | None:
    """``since`` as the stored times are written (UTC, milliseconds), so that comparing the
    texts compares the times: an aware datetime or an ISO-8601 string with an offset."""
    if since is None:
        return None
    if isinstance(since, str):
        try:
            since = dt.datetime.fromisoformat(since.strip())
        except ValueError:
            raise ConfigurationError(
                f"since must be an ISO-8601 time with an offset, such as "
                f"'2024-05-01T12:00:00+00:00', got {since!r:.80}"
            ) from None
    if not isinstance(since, dt.datetime):
        raise ConfigurationError(
            f"since must be a timezone-aware datetime or an ISO-8601 string, got {since!r:.80}")
    if since.tzinfo is None or since.utcoffset() is None:
        raise ConfigurationError("since must be timezone-aware (audit times are UTC), got "
                                 f"{since.isoformat()!r}")
    return since.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds")
