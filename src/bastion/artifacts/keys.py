"""Elliptic-curve signing keys for OpenSSF Model Signing: generate, load, collect trusted keys.

``model_signing`` signs with elliptic-curve keys on the NIST curves P-256, P-384 and P-521
(the curves Sigstore's bundle specification names). bastion generates P-256 keys: the smallest,
fastest of the three and the one every verifier supports.

The private key is written with mode ``0600`` from the moment the file exists (the temporary
file is created owner-only and renamed into place), and an existing key is never overwritten
unless asked: losing a private key by accident cannot be undone.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bastion.core.atomic import atomic_write_bytes
from bastion.core.errors import ConfigurationError
from bastion.core.results import Result

__all__ = [
    "KeyPair",
    "SUPPORTED_CURVES",
    "default_public_path",
    "generate_keypair",
    "load_private_key",
    "load_public_key",
    "trusted_key_files",
]

#: Curves ``model_signing`` accepts (its ``_check_supported_ec_key``).
SUPPORTED_CURVES: frozenset[str] = frozenset({"secp256r1", "secp384r1", "secp521r1"})

_PRIVATE_MODE = 0o600
_PUBLIC_MODE = 0o644
_KEY_SUFFIXES = (".pem", ".pub")


@dataclass(frozen=True, kw_only=True)
class KeyPair(Result):
    """Where :func:`generate_keypair` wrote the keys.

    Attributes:
        private_key: PEM file of the private key (PKCS#8, unencrypted, mode 0600).
        public_key: PEM file of the public key (SubjectPublicKeyInfo, mode 0644).
        curve: the curve name, e.g. ``"secp256r1"``.
    """

    private_key: Path
    public_key: Path
    curve: str


def default_public_path(private_path: str | Path) -> Path:
    """The public key's default path: the private key's stem plus ``.pub.pem``, beside it.

    Example:
        >>> default_public_path("keys/signing.pem").as_posix()
        'keys/signing.pub.pem'
    """
    private = Path(private_path)
    return private.with_name(private.stem + ".pub.pem")


def generate_keypair(
    private_path: str | Path, public_path: str | Path | None = None, *, overwrite: bool = False
) -> KeyPair:
    """Generate a P-256 key pair for :func:`bastion.artifacts.sign.sign` and write both PEM files.

    Args:
        private_path: where to write the private key (mode 0600, never readable by others).
        public_path: where to write the public key; default :func:`default_public_path`.
        overwrite: replace existing files; without it an existing file is an error.

    Returns:
        The paths written and the curve.

    Raises:
        ConfigurationError: a file exists and ``overwrite`` is false, or both paths are the same.

    Example:
        >>> import tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> pair = generate_keypair(os.path.join(d, "k.pem"))
        >>> oct(os.stat(pair.private_key).st_mode & 0o777), pair.public_key.name
        ('0o600', 'k.pub.pem')
    """
    private = Path(private_path)
    public = default_public_path(private) if public_path is None else Path(public_path)
    if private.resolve() == public.resolve():
        raise ConfigurationError(f"the private and public key paths are the same: {private}")
    if not overwrite:
        existing = [str(p) for p in (private, public) if p.exists() or p.is_symlink()]
        if existing:
            raise ConfigurationError(
                f"refusing to overwrite existing key file(s): {', '.join(existing)} "
                "(pass --force / overwrite=True to replace them)"
            )
    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_key(private, private_pem, _PRIVATE_MODE, overwrite=overwrite)
    _write_key(public, public_pem, _PUBLIC_MODE, overwrite=overwrite)
    return KeyPair(private_key=private, public_key=public, curve=key.curve.name)


def _write_key(path: Path, data: bytes, mode: int, *, overwrite: bool) -> None:
    """Write a key atomically; without ``overwrite``, fail if ``path`` appeared meanwhile.

    ``atomic_write_bytes`` renames over the target, which would silently replace a file created
    after the existence check; a hard link from the finished temporary file fails instead.
    Either way the temporary file is created owner-only (``mkstemp``) before its final mode.
    """
    if overwrite:
        atomic_write_bytes(path, data, mode)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise ConfigurationError(f"refusing to overwrite existing key file: {path}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def load_private_key(path: str | Path) -> ec.EllipticCurvePrivateKey:
    """Load an unencrypted PEM elliptic-curve private key that ``model_signing`` can sign with.

    Raises:
        ConfigurationError: the file is missing, not a PEM private key, encrypted, or not an
            EC key on a supported curve.
    """
    data = _read_key_file(Path(path), "private")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigurationError(
            f"{path}: the private key is encrypted; bastion signs with unencrypted keys"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigurationError(f"{path}: not a PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigurationError(f"{path}: not an elliptic-curve key ({type(key).__name__})")
    _check_curve(Path(path), key.curve.name)
    return key


def load_public_key(path: str | Path) -> ec.EllipticCurvePublicKey:
    """Load a PEM elliptic-curve public key that ``model_signing`` can verify with.

    Raises:
        ConfigurationError: the file is missing, holds a private key, is not a PEM public key,
            or is not an EC key on a supported curve.
    """
    file = Path(path)
    data = _read_key_file(file, "public")
    if b"PRIVATE KEY-----" in data:
        raise ConfigurationError(
            f"{file}: this is a private key; trust public keys only (bastion keygen writes the "
            "public key to *.pub.pem)"
        )
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigurationError(f"{file}: not a PEM public key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigurationError(f"{file}: not an elliptic-curve key ({type(key).__name__})")
    _check_curve(file, key.curve.name)
    return key


def trusted_key_files(public_keys: str | Path | Sequence[str | Path]) -> tuple[Path, ...]:
    """Expand a key file, a directory of keys, or a list of either into checked key files.

    A directory contributes every regular file ending in ``.pem`` or ``.pub`` (sorted by
    name). Every file must load as a supported public key: a broken entry in a trust store is
    an error, not something to skip quietly.

    Raises:
        ConfigurationError: no key found, a path is missing, or a file is not a public key.
    """
    items = [public_keys] if isinstance(public_keys, (str, Path)) else list(public_keys)
    files: list[Path] = []
    for item in items:
        entry = Path(item)
        if entry.is_dir():
            found = sorted(
                p for p in entry.iterdir() if p.is_file() and p.name.endswith(_KEY_SUFFIXES)
            )
            if not found:
                raise ConfigurationError(f"{entry}: no public keys (*.pem, *.pub) in directory")
            files.extend(found)
        else:
            files.append(entry)
    if not files:
        raise ConfigurationError("no trusted public key given")
    for file in files:
        load_public_key(file)
    return tuple(dict.fromkeys(files))


def _read_key_file(path: Path, kind: str) -> bytes:
    if not path.is_file():
        raise ConfigurationError(f"{kind} key file not found: {path}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {kind} key {path}: {exc.strerror}") from None


def _check_curve(path: Path, curve: str) -> None:
    if curve not in SUPPORTED_CURVES:
        raise ConfigurationError(
            f"{path}: curve {curve} is not supported by OpenSSF Model Signing "
            f"(use one of {', '.join(sorted(SUPPORTED_CURVES))}; bastion keygen makes secp256r1)"
        )
