"""``bastion.load``: verify, scan and deserialize the same bytes, or refuse.

The file is read **once** into memory. Its digest and signature are checked against those bytes,
the scanner judges those bytes, and the restricted unpickler builds objects from those bytes
under the same policy - so what was checked is exactly what is loaded, and a file swapped on
disk between the checks and the load changes nothing. There is no fallback to an unrestricted
``pickle``/``torch.load``: when the restricted load fails, the load fails.
"""

from __future__ import annotations

import hashlib
import io
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bastion.artifacts._torch_formats import load_torch_legacy, load_torch_zip
from bastion.artifacts._unpickler import RestrictedUnpickler, restricted_loads
from bastion.artifacts.scan import ScanLimits, Verdict, scan_bytes
from bastion.artifacts.scan.findings import FileReport
from bastion.artifacts.scan.policy import DEFAULT_POLICY, Policy
from bastion.artifacts.scan.zipread import list_zip, read_member
from bastion.core.errors import (
    ArtifactError,
    BastionError,
    ConfigurationError,
    IntegrityError,
    UnsafeArtifactError,
)

__all__ = ["load", "load_bytes", "read_once", "read_verified"]

_MAX_MEMBER = 1 << 40
_COMPRESSED = frozenset({"zlib", "gzip", "bz2", "xz", "lzma"})


def read_once(path: str | Path) -> bytes:
    """Read a regular file into memory in one go (refusing directories, devices and FIFOs)."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigurationError(f"{path} does not exist") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigurationError(f"{path} is not a regular file")
    with path.open("rb") as handle:
        return handle.read()


def load(
    path: str | Path,
    *,
    signature: str | Path | None = None,
    public_keys: str | Path | Sequence[str | Path] | None = None,
    sha256: str | None = None,
    policy: Policy | None = None,
) -> Any:
    """Load a model file safely: verify, scan, then deserialize the bytes that were checked.

    Supports safetensors, torch zip and legacy checkpoints, plain pickles, joblib files and
    ``.npy``/``.npz``. Returns what ``torch.load`` (or ``joblib.load``/``numpy.load``) would for a
    file of plain data: state dicts, tensors, arrays, containers - with every tensor on the CPU.

    Args:
        path: the model file.
        signature: an OpenSSF Model Signing signature of the file (needs ``public_keys``).
        public_keys: trusted public key(s): a PEM file, a directory of them, or a list.
        sha256: the expected hex SHA-256 of the file, from a source you trust.
        policy: the import allowlist (default: :data:`DEFAULT_POLICY`); the scan and the
            unpickler use the same one.

    Returns:
        The deserialized object.

    Raises:
        IntegrityError: the bytes do not match ``sha256`` or the signed digest.
        SignatureError: the signature is malformed or not made by a trusted key.
        UnsafeArtifactError: the scan is not ``safe``, or the restricted load refused.
        ConfigurationError: bad arguments (missing file, signature without keys, ...).

    Example:
        >>> import torch, tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "w.pt"
        >>> torch.save({"w": torch.ones(2)}, path)
        >>> load(path)["w"]
        tensor([1., 1.])
    """
    data = read_verified(path, signature=signature, public_keys=public_keys, sha256=sha256)
    return load_bytes(data, path=str(path), policy=policy)


def read_verified(
    path: str | Path,
    *,
    signature: str | Path | None = None,
    public_keys: str | Path | Sequence[str | Path] | None = None,
    sha256: str | None = None,
) -> bytes:
    """Read ``path`` once and check those bytes against ``sha256`` and/or a signature.

    Raises:
        IntegrityError, SignatureError, ConfigurationError: as for :func:`load`.
    """
    if signature is not None and public_keys is None:
        raise ConfigurationError("a signature needs public_keys (a PEM file or a directory)")
    if public_keys is not None and signature is None:
        raise ConfigurationError("public_keys given without a signature to check")
    path = Path(path)
    data = read_once(path)
    if sha256 is not None:
        expected = sha256.strip().lower()
        if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
            raise ConfigurationError(f"sha256 must be 64 hex digits, got {sha256!r}")
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise IntegrityError(
                f"{path}: SHA-256 is {actual}, expected {expected}; the file was changed",
                path=path,
            )
    if signature is not None:
        from bastion.artifacts.verify import check_bytes_digest, read_signed_digests

        keys = [public_keys] if isinstance(public_keys, (str, Path)) else list(public_keys or [])
        manifest = read_signed_digests(Path(signature), [Path(k) for k in keys])
        check_bytes_digest(manifest, path.name, data)
    return data


def load_bytes(data: bytes, *, path: str = "<bytes>", policy: Policy | None = None) -> Any:
    """Scan ``data`` and, if it is safe, deserialize it under the same policy."""
    policy = policy or DEFAULT_POLICY
    report = scan_bytes(data, path=path, policy=policy, limits=ScanLimits())
    if report.verdict is not Verdict.SAFE:
        raise UnsafeArtifactError(_refusal(report), path=path, findings=report.problems)
    try:
        return _deserialize(data, report.format, policy)
    except BastionError as exc:
        if isinstance(exc, ArtifactError) and exc.path is None:
            exc.path = Path(path)
        raise
    except Exception as exc:  # a malformed file: never a traceback from deep inside torch
        raise UnsafeArtifactError(
            f"{path}: could not be loaded safely ({type(exc).__name__}: {exc}); it was not "
            "loaded with an unrestricted unpickler either",
            path=path,
        ) from exc


def _refusal(report: FileReport) -> str:
    problems = report.problems
    lines = [f"{report.path}: scan verdict is {report.verdict.value}; refusing to load"]
    for finding in problems[:5]:
        lines.append(
            f"  - [{finding.severity}] {finding.kind}: {finding.detail} ({finding.location})"
        )
    if len(problems) > 5:
        lines.append(f"  ... and {len(problems) - 5} more (run `bastion scan {report.path}`)")
    return "\n".join(lines)


def _deserialize(data: bytes, fmt: str, policy: Policy) -> Any:
    if fmt == "safetensors":
        from safetensors.torch import load as load_safetensors

        return load_safetensors(data)
    if fmt == "torch-zip":
        return load_torch_zip(data, policy=policy, limit=_MAX_MEMBER)
    if fmt == "torch-legacy":
        return load_torch_legacy(data, policy=policy)
    if fmt == "pickle":
        return restricted_loads(data, policy=policy)
    if fmt == "joblib" or fmt in _COMPRESSED:
        # joblib.load reads compressed pickles too (zlib, gzip, bz2, xz, lzma): same framing
        return _load_joblib(data, policy)
    if fmt == "npy":
        return _load_npy(data, policy)
    if fmt == "npz":
        listing = list_zip(data)
        return {
            m.name[:-4] if m.name.endswith(".npy") else m.name: _load_npy(
                read_member(data, m, limit=_MAX_MEMBER), policy
            )
            for m in listing.members
        }
    raise UnsafeArtifactError(
        f"bastion.load does not deserialize {fmt!r} files; convert the model to safetensors"
    )


def _load_npy(data: bytes, policy: Policy) -> np.ndarray[Any, Any]:
    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    else:
        shape, _fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    if not dtype.hasobject:
        stream.seek(0)
        plain: np.ndarray[Any, Any] = np.load(stream, allow_pickle=False)
        return plain
    array = RestrictedUnpickler(stream, policy=policy).load()
    if not isinstance(array, np.ndarray) or array.shape != tuple(shape):
        raise UnsafeArtifactError("object array pickle does not hold the declared array")
    return array


def _load_joblib(data: bytes, policy: Policy) -> Any:
    from joblib.numpy_pickle import NumpyUnpickler
    from joblib.numpy_pickle_utils import _validate_fileobject_and_memmap

    from bastion.artifacts._unpickler import resolve_global

    class _Restricted(NumpyUnpickler):  # type: ignore[misc]
        def find_class(self, module: str, name: str) -> Any:
            return resolve_global(policy, module, name)

    with _validate_fileobject_and_memmap(io.BytesIO(data), "<memory>", None) as (stream, _):
        if isinstance(stream, str):  # joblib < 0.10 side-file layout: never read other files
            raise UnsafeArtifactError("joblib file refers to side files; refusing to read them")
        return _Restricted("<memory>", stream, ensure_native_byte_order=True).load()
