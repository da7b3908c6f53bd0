"""Verify OpenSSF Model Signing signatures, naming every file that differs from what was signed.

Verification happens in two steps that are also available separately:

1. :func:`read_signed_digests` checks the bundle's signature against the trusted public keys
   (any one of them may have signed) and returns the signed per-file digests. Nothing of the
   model is read.
2. The model is compared with those digests: :func:`verify` re-hashes the files on disk with
   the signed settings; :func:`check_bytes_digest` checks bytes a caller already holds in memory
   — what :func:`bastion.load` uses so that the bytes verified are the bytes deserialized.

``model_signing`` reports a mismatch as one opaque ``ValueError``; bastion raises
:class:`~bastion.core.errors.SignatureError` when the signature itself cannot be trusted (bad
file, untrusted key, made for another model) and :class:`~bastion.core.errors.IntegrityError`
naming the changed, missing and unexpected files when the model was altered after signing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.artifacts import _oms
from bastion.artifacts.keys import trusted_key_files
from bastion.core.errors import ConfigurationError, IntegrityError, SignatureError
from bastion.core.results import Result

__all__ = [
    "SignedManifest",
    "VerificationResult",
    "check_bytes_digest",
    "read_signed_digests",
    "verify",
]

#: The identifier ``model_signing`` records for a model that is a single file.
SINGLE_FILE_ID = "."
_LIST_LIMIT = 10


@dataclass(frozen=True, kw_only=True)
class SignedManifest(Result):
    """The content of a signature whose cryptographic check succeeded.

    Attributes:
        signature: the signature (bundle) file.
        key: the trusted public key that verified it.
        model_name: the model name the signer recorded (informative only).
        digests: identifier -> hex digest. Identifiers are POSIX paths relative to the model
            directory; a single-file model is recorded as ``"."``; sharded hashing records
            ``"path:start:end"``.
        method: ``"files"`` (one digest per file) or ``"shards"``.
        hash_type: ``"sha256"``, ``"blake2"`` or ``"blake3"``.
        shard_size: shard size in bytes for ``"shards"``, else None.
        allow_symlinks: whether the signer followed symlinks.
        ignore_paths: paths the signer excluded (git files, the signature itself).
    """

    signature: Path
    key: Path
    model_name: str
    digests: Mapping[str, str]
    method: str
    hash_type: str
    shard_size: int | None
    allow_symlinks: bool
    ignore_paths: tuple[str, ...]

    def settings(self) -> dict[str, Any]:
        """The hashing settings in ``model_signing``'s serialization form."""
        out: dict[str, Any] = {
            "method": self.method,
            "hash_type": self.hash_type,
            "allow_symlinks": self.allow_symlinks,
            "ignore_paths": list(self.ignore_paths),
        }
        if self.shard_size is not None:
            out["shard_size"] = self.shard_size
        return out


@dataclass(frozen=True, kw_only=True)
class VerificationResult(Result):
    """A model that matches its signature.

    Attributes:
        path: the model file or directory.
        signature: the signature file.
        key: the trusted public key that verified the signature.
        model_name: the name the signer recorded.
        hash_type: the digest algorithm of ``files``.
        files: every checked file (or shard) -> hex digest; a single file under its own name.
    """

    path: Path
    signature: Path
    key: Path
    model_name: str
    hash_type: str
    files: Mapping[str, str]


def read_signed_digests(
    signature: str | Path, public_keys: str | Path | Sequence[str | Path]
) -> SignedManifest:
    """Verify a signature bundle against trusted keys and return what it signed.

    Args:
        signature: the OMS signature (Sigstore bundle) file.
        public_keys: a PEM public key, a directory of them, or a list of either. Each is tried;
            the first that verifies is named in the result.

    Returns:
        The signed digests and hashing settings.

    Raises:
        ConfigurationError: the signature or a key file is missing, or a key is unusable.
        SignatureError: the bundle is malformed or no trusted key verifies it.

    Example:
        >>> import hashlib, os, tempfile
        >>> from bastion.artifacts.keys import generate_keypair
        >>> from bastion.artifacts.sign import sign
        >>> d = tempfile.mkdtemp()
        >>> keys = generate_keypair(os.path.join(d, "k.pem"))
        >>> _ = open(os.path.join(d, "w.bin"), "wb").write(b"weights")
        >>> sig = sign(os.path.join(d, "w.bin"), keys.private_key)
        >>> m = read_signed_digests(sig, keys.public_key)
        >>> m.digests["."] == hashlib.sha256(b"weights").hexdigest()
        True
    """
    sig = Path(signature)
    keys = trusted_key_files(public_keys)
    bundle = _oms.read_bundle(sig)
    reasons: list[str] = []
    for key in keys:
        try:
            manifest = _oms.verify_bundle(bundle, key)
        except SignatureError as exc:
            reasons.append(str(exc))
            continue
        return _signed_manifest(sig, key, manifest)
    raise SignatureError(
        f"{sig}: not verified by any trusted key ({len(keys)} tried): {'; '.join(reasons)}",
        path=sig,
    )


def check_bytes_digest(manifest: SignedManifest, name: str, data: bytes) -> None:
    """Check in-memory bytes against a signature that covers exactly one file.

    Args:
        manifest: from :func:`read_signed_digests`.
        name: the file's name. For a single-file signature (identifier ``"."``) it is used only
            in messages, since renaming a signed file does not invalidate its signature; for a
            directory signature of one file it must equal that file's relative path.
        data: the file's complete content.

    Raises:
        IntegrityError: the digest differs, the signature covers other or more files, or it
            uses a hashing mode that cannot be checked on one buffer (sharded, non-SHA-256).

    Example:
        >>> from pathlib import Path
        >>> digest = hashlib.sha256(b"weights").hexdigest()
        >>> m = SignedManifest(signature=Path("w.sig"), key=Path("k.pub"), model_name="w",
        ...     digests={".": digest}, method="files", hash_type="sha256", shard_size=None,
        ...     allow_symlinks=False, ignore_paths=())
        >>> check_bytes_digest(m, "w.bin", b"weights")
    """
    sig = manifest.signature
    if manifest.method != "files":
        raise IntegrityError(
            f"{sig}: signed with '{manifest.method}' hashing (shard size {manifest.shard_size}); "
            "an in-memory check needs 'files' hashing (one digest per file): re-sign with "
            "`bastion sign` or `model_signing sign` without --shard options",
            path=sig,
        )
    if manifest.hash_type != "sha256":
        raise IntegrityError(
            f"{sig}: signed with {manifest.hash_type} digests; an in-memory check needs "
            "'files' hashing with sha256 (the default of `bastion sign` and `model_signing`)",
            path=sig,
        )
    if len(manifest.digests) != 1:
        listed = _cap(sorted(manifest.digests))
        raise IntegrityError(
            f"{sig}: covers {len(manifest.digests)} files ({listed}); checking '{name}' in "
            "memory needs a signature of that one file",
            path=sig,
        )
    ((identifier, expected),) = manifest.digests.items()
    if identifier not in (SINGLE_FILE_ID, name):
        raise IntegrityError(f"{sig}: covers '{identifier}', not '{name}'", path=sig)
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise IntegrityError(
            f"{name}: content differs from what was signed (sha256 {actual}, signed {expected})",
            path=name,
        )


def verify(
    path: str | Path,
    *,
    signature: str | Path,
    public_keys: str | Path | Sequence[str | Path],
) -> VerificationResult:
    """Verify a model file or directory against its OMS signature and trusted keys.

    The signature's ignored paths (git files, the signature itself) are re-applied, and a
    signature file lying inside the model directory is ignored, as ``model_signing`` does.

    Args:
        path: the model file or directory.
        signature: the signature file.
        public_keys: a PEM public key, a directory of trusted public keys, or a list.

    Returns:
        What was verified, by which key, with every file's digest.

    Raises:
        ConfigurationError: the model, signature or a key file is missing or unusable.
        SignatureError: malformed signature, no trusted key verifies it, or it was made for
            another model.
        IntegrityError: files changed, missing or unexpected since signing (all named).

    Example:
        >>> import os, tempfile
        >>> from bastion.artifacts.keys import generate_keypair
        >>> from bastion.artifacts.sign import sign
        >>> d = tempfile.mkdtemp()
        >>> keys = generate_keypair(os.path.join(d, "k.pem"))
        >>> model = os.path.join(d, "w.bin")
        >>> _ = open(model, "wb").write(b"weights")
        >>> sig = sign(model, keys.private_key)
        >>> verify(model, signature=sig, public_keys=keys.public_key).key.name
        'k.pub.pem'
    """
    model = Path(path)
    if not model.exists():
        raise ConfigurationError(f"model not found: {model}")
    signed = read_signed_digests(signature, public_keys)
    ignore: list[str] = []
    if model.is_dir():
        inside = _oms.relative_inside(model, Path(signature))
        if inside is not None:
            ignore.append(inside)
    actual = _oms.hash_model(model, signed.settings(), ignore)
    _compare(model, signed, actual)
    return VerificationResult(
        path=model,
        signature=signed.signature,
        key=signed.key,
        model_name=signed.model_name,
        hash_type=signed.hash_type,
        files={_display(model, i): d for i, d in sorted(actual.items())},
    )


def _compare(model: Path, signed: SignedManifest, actual: Mapping[str, str]) -> None:
    """Raise naming every file that differs; SignatureError when nothing at all corresponds."""
    before = _by_file(signed.digests, signed.method)
    after = _by_file(actual, signed.method)
    if before == after:
        return
    missing = sorted(before.keys() - after.keys())
    unexpected = sorted(after.keys() - before.keys())
    changed = sorted(f for f in before.keys() & after.keys() if before[f] != after[f])
    unchanged = [f for f in before.keys() & after.keys() if before[f] == after[f]]
    name_differs = signed.model_name != model.name
    if not unchanged and (not (before.keys() & after.keys()) or name_differs):
        raise SignatureError(
            f"{signed.signature}: this signature is for another model: it was made for "
            f"'{signed.model_name}' ({len(before)} file(s)) and none of its files match "
            f"{model}",
            path=signed.signature,
        )
    renamed = [
        (old, new)
        for old in missing
        for new in unexpected
        if _digests_only(before[old]) == _digests_only(after[new])
    ]
    parts: list[str] = []
    if changed:
        parts.append(f"changed: {_cap([_display(model, f) for f in changed])}")
    if missing:
        parts.append(f"missing: {_cap(missing)}")
    if unexpected:
        parts.append(f"unexpected: {_cap(unexpected)}")
    if renamed:
        parts.append("renamed: " + _cap([f"{old} -> {new}" for old, new in renamed]))
    raise IntegrityError(
        f"{model} differs from what {signed.signature.name} signed — " + "; ".join(parts),
        path=model,
    )


def _by_file(digests: Mapping[str, str], method: str) -> dict[str, tuple[tuple[str, str], ...]]:
    """Group identifiers by file: shards ``path:start:end`` fold into their file."""
    files: dict[str, list[tuple[str, str]]] = {}
    for identifier, digest in digests.items():
        name = identifier.rsplit(":", 2)[0] if method == "shards" else identifier
        files.setdefault(name, []).append((identifier, digest))
    return {name: tuple(sorted(items)) for name, items in files.items()}


def _digests_only(items: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    return tuple(digest for _, digest in items)


def _display(model: Path, identifier: str) -> str:
    return model.name if identifier == SINGLE_FILE_ID else identifier


def _cap(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_LIST_LIMIT])
    more = len(items) - _LIST_LIMIT
    return shown + (f" and {more} more" if more > 0 else "")


def _signed_manifest(sig: Path, key: Path, manifest: Any) -> SignedManifest:
    """Flatten ``model_signing``'s manifest into bastion's frozen record."""
    settings = manifest.serialization_type
    symlinks = settings.get("allow_symlinks", False)
    if isinstance(symlinks, str):  # pre-1.0 bundles record "false"
        symlinks = symlinks.lower() == "true"
    shard = settings.get("shard_size")
    return SignedManifest(
        signature=sig,
        key=key,
        model_name=str(manifest.model_name),
        digests={rd.identifier: rd.digest.digest_hex for rd in manifest.resource_descriptors()},
        method=str(settings.get("method")),
        hash_type=str(settings.get("hash_type")),
        shard_size=None if shard is None else int(shard),
        allow_symlinks=bool(symlinks),
        ignore_paths=tuple(sorted(str(p) for p in settings.get("ignore_paths", ()))),
    )
