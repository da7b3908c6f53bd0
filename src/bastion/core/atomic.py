"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from bastion.core.errors import ConfigurationError

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_text"]


_NAME_KEEP = 100  # characters of the target's name kept in the temporary name (NAME_MAX 255)


def _refused(what: str, path: Path, err: OSError) -> ConfigurationError:
    reason = err.strerror or type(err).__name__
    return ConfigurationError(f"cannot write {path}: {what} ({reason})")


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: int = 0o644) -> Iterator[IO[bytes]]:
    """Open a temporary file beside ``path`` for binary writing; rename it over ``path`` on success.

    The data is flushed and fsynced before the rename, so a crash leaves either the previous
    content or the complete new content. On an exception the temporary file is removed and
    ``path`` is untouched.

    Raises:
        ConfigurationError: ``path`` is a directory, or its folder cannot be created or written
            (checked before the caller writes anything); or the final rename fails.
    """
    target = Path(path)
    if target.is_dir():
        raise ConfigurationError(f"cannot write {target}: it is a directory")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _refused(f"its folder {target.parent} cannot be created", target, err) from None
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name[:_NAME_KEEP]}.", suffix=".tmp", dir=target.parent
        )
    except OSError as err:
        raise _refused(f"no file can be created in {target.parent}", target, err) from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.replace(tmp_name, target)
        except OSError as err:
            raise _refused("the finished file could not be moved into place", target,
                           err) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    with contextlib.suppress(OSError):  # best effort: persist the rename itself
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_write_bytes(path: str | Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically with permission bits ``mode``."""
    with atomic_open(path, mode) as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically with permission bits ``mode``."""
    atomic_write_bytes(path, text.encode("utf-8"), mode)
