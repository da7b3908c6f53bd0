"""``bastion scan``: scan model files and folders for pickled code.

Exit codes: 0 every file is safe, 1 a file is unsafe or unknown, 2 a usage error.
"""

from __future__ import annotations

import enum
import json
import re
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from bastion.artifacts.scan import ScanReport, Verdict, render_sarif, render_text, scan_paths
from bastion.cli._common import (
    ALLOW_OPTION,
    POLICY_OPTION,
    build_policy,
    console,
    is_json_with,
    refuse_clobber,
    shown,
)
from bastion.core.atomic import atomic_write_text
from bastion.core.errors import ConfigurationError


class OutputFormat(str, enum.Enum):
    """How the report is written."""

    TEXT = "text"
    JSON = "json"
    SARIF = "sarif"


_STYLE = {Verdict.SAFE: "bold green", Verdict.UNKNOWN: "bold yellow", Verdict.UNSAFE: "bold red"}
_SEVERITY_STYLE = {"critical": "red", "warning": "yellow", "info": "dim"}


def _table(report: ScanReport) -> Table:
    table = Table(show_lines=True, title="bastion scan")
    table.add_column("verdict")
    table.add_column("file", overflow="fold")
    table.add_column("format")
    table.add_column("problems")
    for file in report.files:
        problems = Text()
        for f in file.problems:
            if problems:
                problems.append("\n")
            problems.append(f"{f.severity} ", style=_SEVERITY_STYLE[str(f.severity)])
            problems.append(shown(f"{f.kind}: {f.detail}"))
            if f.location:
                problems.append(f" @ {shown(f.location)}", style="dim")
        table.add_row(Text(file.verdict.value, style=_STYLE[file.verdict]), Text(shown(file.path)),
                      Text(file.format), problems)
    return table


_TEXT_SUMMARY = re.compile(rb"\d+ file\(s\): [^\n]* -> (safe|unknown|unsafe)\n?$")


def _is_report(path: Path) -> bool:
    """Whether ``path`` is an earlier scan report, which ``-o`` may replace: JSON with the
    report's ``files`` and ``summary``, SARIF from bastion, or text ending in the summary line."""
    if is_json_with(path, "version", "2.1") or is_json_with(path, "schema_version", ""):
        return True
    try:
        if not path.is_file() or path.stat().st_size > 64 << 20:
            return False
        return _TEXT_SUMMARY.search(path.read_bytes()[-300:]) is not None
    except OSError:
        return False


_PATHS = typer.Argument(..., metavar="PATH...", help="Files or folders to scan.")
_FORMAT = typer.Option(OutputFormat.TEXT, "--format", "-f", case_sensitive=False,
                       help="text, json or sarif.")
_SHA256 = typer.Option(False, "--sha256",
                       help="Also record each file's SHA-256 (reads every byte, tensor data "
                       "included; the scan itself reads only the pickles).")
_OUTPUT = typer.Option(None, "--output", "-o", metavar="FILE",
                       help="Write the report here instead of stdout.")


def scan(
    paths: list[Path] = _PATHS,
    allow: list[str] | None = ALLOW_OPTION,
    policy_file: Path | None = POLICY_OPTION,
    output_format: OutputFormat = _FORMAT,
    output: Path | None = _OUTPUT,
    sha256: bool = _SHA256,
) -> None:
    """Scan model files for code before loading them (exit 0 safe, 1 unsafe/unknown, 2 usage).

    Example: bastion scan model.pt --allow mypkg.models.Net --format sarif -o scan.sarif
    """
    missing = [str(p) for p in paths if not p.exists() and not p.is_symlink()]
    if missing:
        raise ConfigurationError(f"no such file or folder: {shown(', '.join(missing))}")
    if output is not None:
        refuse_clobber(output, "-o", [("scanned path", p) for p in paths],
                       replaceable=_is_report)
    policy = build_policy(allow, policy_file)
    report = scan_paths(paths, policy=policy, progress=True, digest=sha256)
    if output_format is OutputFormat.JSON:
        text = json.dumps(report.to_dict(), indent=2)
    elif output_format is OutputFormat.SARIF:
        text = json.dumps(render_sarif(report), indent=2)
    else:
        # file names and findings are attacker-chosen: no terminal escape codes, even in a file
        text = "\n".join(shown(line) for line in render_text(report).split("\n"))
    if output is not None:
        try:
            atomic_write_text(output, text + "\n")
        except OSError as exc:
            raise ConfigurationError(
                f"cannot write {shown(output)}: {exc.strerror or exc}"
            ) from None
    elif output_format is OutputFormat.TEXT:
        console.print(_table(report))
        console.print(text.splitlines()[-1] if report.verdict is Verdict.SAFE
                      else "\n".join(text.splitlines()[-2:]), highlight=False)
    else:
        typer.echo(text)
    raise typer.Exit(0 if report.verdict is Verdict.SAFE else 1)
