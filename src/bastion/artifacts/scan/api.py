"""The public entry points: scan bytes, a file, or many files and folders."""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from bastion.artifacts.scan.containers import scan_blob
from bastion.artifacts.scan.context import ScanContext
from bastion.artifacts.scan.findings import FileReport, Finding, ScanReport, Severity
from bastion.artifacts.scan.limits import ScanLimits
from bastion.artifacts.scan.policy import DEFAULT_POLICY, Policy
from bastion.core.progress import track

__all__ = ["scan_bytes", "scan_file", "scan_paths"]

_DEFAULT_LIMITS = ScanLimits()
_PROGRESS_FROM = 8  # files; fewer finish before a bar would be worth drawing


def scan_bytes(data: bytes | memoryview, *, path: str = "<bytes>",
               policy: Policy = DEFAULT_POLICY,
               limits: ScanLimits = _DEFAULT_LIMITS, digest: bool = True) -> FileReport:
    """Scan in-memory bytes for pickled code, whatever container holds it.

    Only pickle bytes and archive directories are read (through memoryview slices); tensor
    payloads are neither copied nor touched. Hostile input yields findings, never an exception.

    Args:
        data: the file's bytes.
        path: a name for the report.
        policy: which imports are allowed.
        limits: bounds on the work done.
        digest: compute the SHA-256 of all the bytes (the one step that reads tensor bytes;
            callers that already hashed the file pass False and get ``sha256=""``).

    Returns:
        The report: format, findings (worst first), verdict, sha256 and size.

    >>> scan_bytes(b"\\x80\\x04N.").verdict.value
    'safe'
    """
    view = memoryview(data).cast("B") if memoryview(data).ndim != 1 else memoryview(data)
    ctx = ScanContext(policy, limits)
    try:
        fmt = scan_blob(view, ctx, "", 0)
    except RecursionError:
        fmt = "unknown"
        ctx.add(Severity.WARNING, "limit-exceeded", "structure nested too deeply to check", "")
    except Exception as exc:  # noqa: BLE001 - a scanner bug must not make a file look safe
        fmt = "unknown"
        ctx.add(Severity.WARNING, "scanner-error",
                f"the scanner failed on this file ({type(exc).__name__}: {exc}); it was not "
                "fully checked", "")
    return FileReport(path=path, format=fmt, findings=ctx.sorted_findings(),
                      sha256=hashlib.sha256(view).hexdigest() if digest else "",
                      size=len(view))


def scan_file(path: str | Path, *, policy: Policy = DEFAULT_POLICY,
              limits: ScanLimits = _DEFAULT_LIMITS, digest: bool = True) -> FileReport:
    """Scan one file, memory-mapped so that only the bytes the scan needs are paged in.

    The format comes from the bytes, never from the file name.

    Raises:
        OSError: the file cannot be opened (``scan_paths`` turns this into a finding).
    """
    path = Path(path)
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return scan_bytes(b"", path=str(path), policy=policy, limits=limits,
                              digest=digest)
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                return scan_bytes(view, path=str(path), policy=policy, limits=limits,
                                  digest=digest)
            finally:
                view.release()


def _expand(paths: Sequence[str | Path]) -> Iterator[tuple[Path, Finding | None]]:
    for given in paths:
        root = Path(given)
        if root.is_symlink() and not root.exists():
            yield root, _problem("broken-symlink", "the symbolic link points nowhere")
        elif root.is_dir():
            for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
                dirnames.sort()
                base = Path(dirpath)
                for name in sorted(filenames) + [d for d in dirnames if (base / d).is_symlink()]:
                    child = base / name
                    if child.is_symlink():
                        yield child, _problem(
                            "symlink", f"symbolic link to {os.readlink(child)} not followed; "
                            "scan its target directly if you trust it")
                    else:
                        yield child, _special(child)
        else:
            yield root, _special(root)


def _special(path: Path) -> Finding | None:
    """A FIFO, socket or device would block or never end: reported, never opened."""
    try:
        if path.exists() and not path.is_file() and not path.is_dir():
            return _problem("special-file", "not a regular file (FIFO, socket or device); "
                            "not opened")
    except OSError as exc:
        return _problem("unreadable", f"cannot stat the file: {exc.strerror or exc}")
    return None


def _problem(kind: str, detail: str) -> Finding:
    return Finding(severity=Severity.WARNING, kind=kind, detail=detail, location="")


def scan_paths(paths: Sequence[str | Path], *, policy: Policy = DEFAULT_POLICY,
               limits: ScanLimits = _DEFAULT_LIMITS, progress: bool = True,
               digest: bool = True) -> ScanReport:
    """Scan files and folders (recursively; symbolic links inside folders are reported, not
    followed; unreadable files are reported, not raised).

    Args:
        paths: files or folders.
        policy: which imports are allowed.
        limits: bounds per file.
        progress: show a progress bar on a terminal when there are many files.
    """
    items = list(_expand(paths))
    iterator = (track(items, "scanning", total=len(items))
                if progress and len(items) >= _PROGRESS_FROM else items)
    reports: list[FileReport] = []
    for path, problem in iterator:
        if problem is not None:
            reports.append(FileReport(path=str(path), format="unknown", findings=(problem,)))
            continue
        try:
            reports.append(scan_file(path, policy=policy, limits=limits, digest=digest))
        except OSError as exc:
            reports.append(FileReport(path=str(path), format="unknown", findings=(
                _problem("unreadable", f"cannot read the file: {exc.strerror or exc}"),)))
    return ScanReport(files=tuple(reports), policy=policy.name)
