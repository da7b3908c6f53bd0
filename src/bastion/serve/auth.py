"""API keys: created once, stored only as SHA-256 digests, checked in constant time.

A key is 32 random bytes from :func:`secrets.token_urlsafe` (256 bits). A slow or salted hash
(bcrypt, scrypt, argon2) protects *low-entropy* secrets such as passwords from a dictionary
attack on a stolen key file; a 256-bit random key cannot be guessed however fast the hash, so
plain SHA-256 is enough and keeps the check cheap on every request. The digest comparison uses
:func:`hmac.compare_digest` against *every* stored digest, so neither the result nor the position
of a match leaks through timing.

The key file is JSON ``{"keys": [{"name": ..., "sha256": ..., "created": ...}]}``, written
atomically with mode 0600; adding a key appends to it and never drops the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path

from bastion.core.atomic import atomic_write_text
from bastion.core.errors import ConfigurationError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["ApiKey", "KeyStore", "create_key", "hash_key"]

_KEY_BYTES = 32
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def hash_key(key: str) -> str:
    """The hex SHA-256 of a key, as stored in the key file.

    Example:
        >>> hash_key("abc")[:16]
        'ba7816bf8f01cfea'
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True, kw_only=True)
class ApiKey:
    """One stored key: its name (who holds it), the digest of the key, and when it was made."""

    name: str
    sha256: str
    created: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class KeyStore:
    """The keys a server accepts.

    Example:
        >>> store = KeyStore(keys=(ApiKey(name="ci", sha256=hash_key("s3cret")),))
        >>> store.authenticate("s3cret"), store.authenticate("guess")
        ('ci', None)
    """

    keys: tuple[ApiKey, ...]

    @classmethod
    def load(cls, path: str | Path) -> KeyStore:
        """Read a key file written by :func:`create_key`.

        Raises:
            ConfigurationError: the file is missing, unreadable or malformed.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigurationError(
                f"key file {path} does not exist; create a key with "
                f"`bastion apikey create --keys {path} --name NAME`"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot read key file {path}: {exc}") from None
        return cls(keys=tuple(_parse(text, path)))

    def authenticate(self, key: str | None) -> str | None:
        """The name of the key matching ``key``, or None; constant time in the key's content."""
        if not key:
            return None
        digest = hash_key(key).encode("ascii")
        found: str | None = None
        for stored in self.keys:  # no early exit: every digest is compared
            if hmac.compare_digest(digest, stored.sha256.encode("ascii")) and found is None:
                found = stored.name
        return found


def _parse(text: str, path: Path) -> list[ApiKey]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"key file {path} is not valid JSON: {exc}") from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ConfigurationError(f'key file {path}: expected {{"keys": [...]}}')
    keys = []
    for i, entry in enumerate(entries):
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("name"), str)
            and isinstance(entry.get("sha256"), str)
            and _HEX64.match(entry["sha256"])
        ):
            raise ConfigurationError(
                f"key file {path}: entry {i} needs a 'name' and a 64-hex-digit 'sha256'"
            )
        created = str(entry.get("created", ""))
        keys.append(ApiKey(name=entry["name"], sha256=entry["sha256"], created=created))
    return keys


def create_key(path: str | Path, name: str) -> str:
    """Make a new random key named ``name``, add its digest to ``path`` and return the key.

    The key itself is returned once and never stored. Other keys in the file are kept; the file
    is rewritten atomically with mode 0600.

    Args:
        path: the key file (created when missing).
        name: who holds the key (letters, digits, ``_.@-``; unique within the file).

    Raises:
        ConfigurationError: a bad name, a name already used, or a malformed existing file.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "keys.json"
        >>> key = create_key(path, "alice")
        >>> KeyStore.load(path).authenticate(key)
        'alice'
    """
    if not _NAME.match(name):
        raise ConfigurationError(
            f"key name must be 1-64 letters, digits or _.@- characters; got {name!r}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):  # two concurrent `apikey create` calls both end up in the file
        existing: Sequence[ApiKey] = KeyStore.load(path).keys if path.exists() else ()
        if any(k.name == name for k in existing):
            raise ConfigurationError(f"key file {path} already has a key named {name!r}")
        key = secrets.token_urlsafe(_KEY_BYTES)
        created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        entries = [dataclasses.asdict(k) for k in existing]
        entries.append(dataclasses.asdict(ApiKey(name=name, sha256=hash_key(key), created=created)))
        atomic_write_text(path, json.dumps({"keys": entries}, indent=2) + "\n", mode=0o600)
    return key


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    if fcntl is None:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
