"""Dataset manifests: the SHA-256 and size of every file under a directory, checked later.

A manifest records where training data came from and lets anyone prove later that the data has
not changed (data provenance). It is a JSON document::

    {"schema_version": 1, "kind": "bastion.dataset-manifest", "algorithm": "sha256",
     "created": "2025-01-01T00:00:00Z", "root": "/abs/data", "file_count": 2, "total_bytes": 10,
     "files": [{"path": "a.csv", "size": 4, "sha256": "..."}, ...]}

Paths are relative POSIX paths, sorted. Only regular files are recorded. **Symlinks and special
files (FIFOs, sockets, devices) are refused**: a link can point outside the dataset and change
without its manifest noticing, and reading a FIFO can block forever, so creating a manifest of a
directory that holds one fails, and a check reports one as ``refused``. A manifest file written
inside the directory it describes is left out of it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from bastion.core.atomic import atomic_write_text
from bastion.core.errors import ConfigurationError, IntegrityError
from bastion.core.progress import task_progress
from bastion.core.results import Result

__all__ = [
    "DatasetManifest",
    "FileRecord",
    "ManifestCheck",
    "check_manifest",
    "create_manifest",
    "load_manifest",
    "verify_manifest",
]

MANIFEST_KIND = "bastion.dataset-manifest"
_CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")
_LIST_LIMIT = 10


@dataclass(frozen=True, kw_only=True)
class FileRecord(Result):
    """One regular file of a dataset: relative POSIX path, size in bytes, SHA-256 hex digest."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True, kw_only=True)
class DatasetManifest(Result):
    """Digests of every regular file under ``root``; ``to_dict()`` is the JSON file's content.

    Attributes:
        root: the directory described (absolute).
        created: UTC creation time, ISO 8601 with a ``Z``.
        algorithm: always ``"sha256"``.
        files: one record per file, sorted by path.
    """

    schema_version: ClassVar[int] = 1
    root: Path
    created: str
    algorithm: str = "sha256"
    files: tuple[FileRecord, ...]

    def to_dict(self) -> dict[str, Any]:
        """The manifest document (see the module docstring)."""
        return {
            "schema_version": self.schema_version,
            "kind": MANIFEST_KIND,
            "algorithm": self.algorithm,
            "created": self.created,
            "root": str(self.root),
            "file_count": len(self.files),
            "total_bytes": sum(f.size for f in self.files),
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
        }


@dataclass(frozen=True, kw_only=True)
class ManifestCheck(Result):
    """How a directory compares with its manifest.

    Attributes:
        ok: True when every recorded file is present and unchanged and nothing was added.
        root: the directory checked.
        manifest: the manifest file.
        checked: number of files present in both and compared.
        changed: recorded files whose size or digest differs.
        missing: recorded files no longer present as regular files.
        added: regular files not in the manifest.
        refused: symlinks and special files found (never followed or read).
    """

    ok: bool
    root: Path
    manifest: Path
    checked: int
    changed: tuple[str, ...]
    missing: tuple[str, ...]
    added: tuple[str, ...]
    refused: tuple[str, ...]

    def describe(self) -> str:
        """A one-line summary naming the differing files."""
        if self.ok:
            return f"{self.root}: {self.checked} files match {self.manifest.name}"
        parts = [
            f"{label}: {_cap(items)}"
            for label, items in (
                ("changed", self.changed),
                ("missing", self.missing),
                ("added", self.added),
                ("refused (symlink or special file)", self.refused),
            )
            if items
        ]
        return f"{self.root} differs from {self.manifest.name} — " + "; ".join(parts)


def create_manifest(root: str | Path, output: str | Path | None = None) -> DatasetManifest:
    """Hash every regular file under ``root`` and optionally write the manifest atomically.

    Args:
        root: the dataset directory.
        output: where to write the JSON manifest; left out of the manifest if inside ``root``.

    Returns:
        The manifest.

    Raises:
        ConfigurationError: ``root`` is not a directory, or holds symlinks or special files.

    Example:
        >>> import os, tempfile
        >>> d = tempfile.mkdtemp()
        >>> _ = open(os.path.join(d, "a.csv"), "w").write("x,y\\n")
        >>> m = create_manifest(d, os.path.join(d, "MANIFEST.json"))
        >>> [(f.path, f.size) for f in m.files]
        [('a.csv', 4)]
    """
    base = _root_dir(root)
    out = None if output is None else Path(output)
    exclude = {out.resolve()} if out is not None else set()
    regular, refused = _walk(base, exclude)
    if refused:
        raise ConfigurationError(
            f"{base}: refusing symlinks and special files: {_cap(refused)} — a manifest records "
            "regular files only (replace links with copies of their targets)"
        )
    sizes = {rel: (base / rel).stat().st_size for rel in regular}
    digests = _hash_files(base, regular, sum(sizes.values()))
    manifest = DatasetManifest(
        root=base,
        created=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        files=tuple(FileRecord(path=r, size=sizes[r], sha256=digests[r]) for r in regular),
    )
    if out is not None:
        atomic_write_text(out, json.dumps(manifest.to_dict(), indent=2) + "\n")
    return manifest


def load_manifest(path: str | Path) -> DatasetManifest:
    """Read and validate a manifest file.

    Raises:
        ConfigurationError: the file does not exist.
        IntegrityError: the file is not a valid bastion dataset manifest (the message says why).
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigurationError(f"manifest not found: {file}")
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntegrityError(
            f"{file}: corrupt manifest, not valid JSON ({exc})", path=file
        ) from None
    try:
        return _parse(doc)
    except (KeyError, TypeError, ValueError) as exc:
        reason = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise IntegrityError(f"{file}: corrupt manifest: {reason}", path=file) from None


def check_manifest(manifest_path: str | Path, root: str | Path | None = None) -> ManifestCheck:
    """Re-hash a directory and compare it with a manifest; differences are reported, not raised.

    Args:
        manifest_path: the JSON manifest.
        root: the directory to check; default the root recorded in the manifest.

    Returns:
        The comparison; ``ok`` tells whether everything matches.

    Raises:
        ConfigurationError: the manifest or the directory does not exist.
        IntegrityError: the manifest itself is corrupt.

    Example:
        >>> import os, tempfile
        >>> d = tempfile.mkdtemp()
        >>> _ = open(os.path.join(d, "a.csv"), "w").write("x,y\\n")
        >>> _ = create_manifest(d, os.path.join(d, "MANIFEST.json"))
        >>> _ = open(os.path.join(d, "a.csv"), "w").write("x,z\\n")
        >>> check_manifest(os.path.join(d, "MANIFEST.json")).changed
        ('a.csv',)
    """
    file = Path(manifest_path)
    recorded = load_manifest(file)
    base = _root_dir(recorded.root if root is None else root)
    regular, refused = _walk(base, {file.resolve()})
    expected = {f.path: f for f in recorded.files}
    present = set(regular)
    common = sorted(present & expected.keys())
    sizes = {rel: (base / rel).stat().st_size for rel in common}
    same_size = [rel for rel in common if sizes[rel] == expected[rel].size]
    digests = _hash_files(base, same_size, sum(sizes[r] for r in same_size))
    changed = tuple(r for r in common if digests.get(r) != expected[r].sha256)
    missing = tuple(sorted(expected.keys() - present))
    added = tuple(sorted(present - expected.keys()))
    return ManifestCheck(
        ok=not (changed or missing or added or refused),
        root=base,
        manifest=file,
        checked=len(common),
        changed=changed,
        missing=missing,
        added=added,
        refused=tuple(refused),
    )


def verify_manifest(manifest_path: str | Path, root: str | Path | None = None) -> ManifestCheck:
    """Like :func:`check_manifest`, but raise when the directory differs.

    Raises:
        IntegrityError: files changed, missing, added or refused (all named in the message).
    """
    result = check_manifest(manifest_path, root)
    if not result.ok:
        raise IntegrityError(result.describe(), path=result.root)
    return result


def _root_dir(root: str | Path) -> Path:
    base = Path(root)
    if not base.is_dir():
        raise ConfigurationError(f"not a directory: {base}")
    return base.resolve()


def _walk(base: Path, exclude: set[Path]) -> tuple[list[str], list[str]]:
    """Sorted relative paths of regular files, and of refused entries; links are never followed."""
    regular: list[str] = []
    refused: list[str] = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        here = Path(dirpath)
        for name in dirnames:
            if (here / name).is_symlink():  # os.walk lists links to directories here
                refused.append((here / name).relative_to(base).as_posix())
        for name in filenames:
            full = here / name
            if full in exclude:
                continue
            mode = full.lstat().st_mode
            target = regular if stat.S_ISREG(mode) else refused
            target.append(full.relative_to(base).as_posix())
    return sorted(regular), sorted(refused)


def _hash_files(base: Path, rels: list[str], total: int) -> dict[str, str]:
    """SHA-256 of each file, read in 1 MiB chunks, with one progress bar over all bytes."""
    out: dict[str, str] = {}
    with task_progress(f"hashing {len(rels)} files", total) as advance:
        for rel in rels:
            digest = hashlib.sha256()
            with open(base / rel, "rb") as handle:
                while chunk := handle.read(_CHUNK):
                    digest.update(chunk)
                    advance(len(chunk))
            out[rel] = digest.hexdigest()
    return out


def _parse(doc: Any) -> DatasetManifest:
    if not isinstance(doc, dict) or doc.get("kind") != MANIFEST_KIND:
        raise ValueError(f"not a bastion dataset manifest (kind must be {MANIFEST_KIND!r})")
    if doc["schema_version"] != DatasetManifest.schema_version:
        raise ValueError(f"unsupported schema_version {doc['schema_version']!r} (expected 1)")
    if doc["algorithm"] != "sha256":
        raise ValueError(f"unsupported algorithm {doc['algorithm']!r} (expected 'sha256')")
    records: list[FileRecord] = []
    for entry in doc["files"]:
        path, size, digest = entry["path"], entry["size"], entry["sha256"]
        pure = PurePosixPath(path) if isinstance(path, str) else None
        if pure is None or pure.is_absolute() or ".." in pure.parts or str(pure) != path:
            raise ValueError(f"file path {path!r} is not a clean relative POSIX path")
        if type(size) is not int or size < 0:
            raise ValueError(f"size of {path!r} is not a non-negative integer")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise ValueError(f"sha256 of {path!r} is not 64 lowercase hex digits")
        records.append(FileRecord(path=path, size=size, sha256=digest))
    paths = [r.path for r in records]
    if len(set(paths)) != len(paths):
        raise ValueError("a file is listed twice")
    return DatasetManifest(
        root=Path(str(doc["root"])),
        created=str(doc["created"]),
        algorithm="sha256",
        files=tuple(sorted(records, key=lambda r: r.path)),
    )


def _cap(items: tuple[str, ...] | list[str]) -> str:
    shown = ", ".join(items[:_LIST_LIMIT])
    more = len(items) - _LIST_LIMIT
    return shown + (f" and {more} more" if more > 0 else "")
