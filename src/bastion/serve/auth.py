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
import logging
import os
import re
import secrets
import stat
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
_log = logging.getLogger("bastion.serve")
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def hash_key(key: str) -> str:
    """The hex SHA-256 of a key, as stored in the key file.

    Example:
        >>> hash_key("abc")[:16]
        'ba7816bf8f01cfea'
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _check_name(name: object) -> str:
    """``name`` if it is a valid key name; it goes into audit rows and logs, so no controls."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigurationError(
            f"key name must be 1-64 letters, digits or _.@- characters; got {name!r}"
        )
    return name


@dataclasses.dataclass(frozen=True, kw_only=True)
class ApiKey:
    """One stored key: its name (who holds it), the digest of the key, and when it was made.

    Raises:
        ConfigurationError: a name outside 1-64 of ``A-Za-z0-9_.@-``, a digest that is not 64
            lowercase hex digits, or a ``created`` that is not a string.
    """

    name: str
    sha256: str
    created: str = ""

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not isinstance(self.sha256, str) or not _HEX64.fullmatch(self.sha256):
            raise ConfigurationError(
                f"key {self.name!r}: 'sha256' must be 64 lowercase hex digits, got "
                f"{self.sha256!r:.80}"
            )
        if not isinstance(self.created, str):
            raise ConfigurationError(
                f"key {self.name!r}: 'created' must be a string, got {type(self.created).__name__}"
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class KeyStore:
    """The keys a server accepts.

    Raises:
        ConfigurationError: an entry is not an :class:`ApiKey`, or two keys share a name or a
            digest (a request must map to exactly one holder in the audit log).

    Example:
        >>> store = KeyStore(keys=(ApiKey(name="ci", sha256=hash_key("s3cret")),))
        >>> store.authenticate("s3cret"), store.authenticate("guess")
        ('ci', None)
    """

    keys: tuple[ApiKey, ...]
    # (digest as bytes, name), built once: authenticate runs on every request
    _digests: tuple[tuple[bytes, str], ...] = dataclasses.field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if isinstance(self.keys, (str, bytes)) or not isinstance(self.keys, Sequence):
            raise ConfigurationError(f"keys must be a sequence of ApiKey, got {self.keys!r:.80}")
        keys = tuple(self.keys)
        names: dict[str, int] = {}
        digests: dict[str, int] = {}
        for i, key in enumerate(keys):
            if not isinstance(key, ApiKey):
                raise ConfigurationError(f"key {i}: expected an ApiKey, got {type(key).__name__}")
            if key.name in names:
                raise ConfigurationError(
                    f"keys {names[key.name]} and {i} are both named {key.name!r}; names must be "
                    f"unique (they identify the caller in the audit log)"
                )
            if key.sha256 in digests:
                raise ConfigurationError(
                    f"keys {digests[key.sha256]} ({keys[digests[key.sha256]].name!r}) and {i} "
                    f"({key.name!r}) have the same digest: one key under two names"
                )
            names[key.name] = digests[key.sha256] = i
        object.__setattr__(self, "keys", keys)
        digest_names = tuple((k.sha256.encode("ascii"), k.name) for k in keys)
        object.__setattr__(self, "_digests", digest_names)

    @classmethod
    def load(cls, path: str | Path) -> KeyStore:
        """Read a key file written by :func:`create_key`.

        A file that group or others may access is loaded with a logged warning: it holds only
        digests, but it should be private to the server's user (``chmod 600``).

        Raises:
            ConfigurationError: the file is missing, unreadable or malformed (the message names
                the file and the entry).
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise ConfigurationError(
                f"key file {path} does not exist; create a key with "
                f"`bastion apikey create --keys {path} --name NAME`"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot read key file {path}: {exc}") from None
        keys = _parse(text, path)
        try:
            store = cls(keys=tuple(keys))
        except ConfigurationError as exc:  # two keys with one name or one digest
            raise ConfigurationError(f"key file {path}: {exc}") from None
        if os.name == "posix" and stat.S_IMODE(mode) & 0o077:
            _log.warning(
                "key file %s has mode %04o: group/others may access it; it should be private "
                "to the server's user (chmod 600 %s)", path, stat.S_IMODE(mode), path,
            )
        return store

    def authenticate(self, key: object) -> str | None:
        """The name of the key matching ``key``, or None; constant time in the key's content.

        Never raises: ``key`` comes from a request header, so anything but a non-empty string
        (None, bytes, a number) matches no key.
        """
        if not isinstance(key, str) or not key:
            return None
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest().encode("ascii")
        found: str | None = None
        for stored, name in self._digests:  # no early exit: every digest is compared
            if hmac.compare_digest(digest, stored) and found is None:
                found = name
        return found


def _parse(text: str, path: Path) -> list[ApiKey]:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        reason = exc if isinstance(exc, ValueError) else "nested too deeply"
        raise ConfigurationError(f"key file {path} is not valid JSON: {reason}") from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ConfigurationError(f'key file {path}: expected {{"keys": [...]}}')
    keys = []
    for i, entry in enumerate(entries):
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("name"), str)
            and isinstance(entry.get("sha256"), str)
        ):
            raise ConfigurationError(
                f"key file {path}: entry {i} needs a 'name' and a 64-hex-digit 'sha256'"
            )
        try:
            keys.append(ApiKey(name=entry["name"], sha256=entry["sha256"],
                               created=entry.get("created", "")))
        except ConfigurationError as exc:
            raise ConfigurationError(f"key file {path}: entry {i}: {exc}") from None
    return keys


def create_key(path: str | Path, name: str) -> str:
    """Make a new random key named ``name``, add its digest to ``path`` and return the key.

    The key itself is returned once and never stored. Other keys in the file are kept; the file
    is rewritten atomically with mode 0600.

    Args:
        path: the key file (created when missing).
        name: who holds the key (letters, digits, ``_.@-``; unique within the file).

    Raises:
        ConfigurationError: a bad name, a name already used, a malformed existing file, or a
            path that cannot be written (the message names it and the system's reason).

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "keys.json"
        >>> key = create_key(path, "alice")
        >>> KeyStore.load(path).authenticate(key)
        'alice'
    """
    _check_name(name)
    path = Path(path)
    if path.name in ("", ".", "..") or path.is_dir():
        raise ConfigurationError(f"key file {path} is a directory; give the path of a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create the folder of key file {path}: {_os_reason(exc, path)}"
        ) from None
    try:
        with _locked(path):  # two concurrent `apikey create` calls both end up in the file
            existing: Sequence[ApiKey] = KeyStore.load(path).keys if path.exists() else ()
            if any(k.name == name for k in existing):
                raise ConfigurationError(f"key file {path} already has a key named {name!r}")
            key = secrets.token_urlsafe(_KEY_BYTES)
            created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            entries = [dataclasses.asdict(k) for k in existing]
            entries.append(
                dataclasses.asdict(ApiKey(name=name, sha256=hash_key(key), created=created))
            )
            text = json.dumps({"keys": entries}, indent=2) + "\n"
            atomic_write_text(path, text, mode=0o600)
    except OSError as exc:
        raise ConfigurationError(f"cannot write key file {path}: {_os_reason(exc, path)}") from None
    return key


def _os_reason(exc: OSError, path: Path) -> str:
    """The system's reason, with the file it concerns when that is not ``path`` itself."""
    reason = exc.strerror or str(exc)
    if exc.filename is not None and str(exc.filename) != str(path):
        reason = f"{reason} ({exc.filename})"
    return reason


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
