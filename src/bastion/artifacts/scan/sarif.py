"""Scan reports as SARIF 2.1.0 (code-scanning dashboards) and as plain text."""

from __future__ import annotations

from typing import Any

from bastion._version import __version__
from bastion.artifacts.scan.findings import FileReport, ScanReport, Severity, Verdict

__all__ = ["render_sarif", "render_text"]

_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_LEVEL = {Severity.CRITICAL: "error", Severity.WARNING: "warning", Severity.INFO: "note"}
_RULE_TEXT = {
    "dangerous-import": "The pickle imports a callable that can run code or touch the system.",
    "unknown-import": "The pickle imports a global that is not on the allowlist.",
    "allowed-import": "The pickle imports a global on the allowlist.",
    "unresolved-import": "The pickle builds an import from values that are not constants.",
    "ext-opcode": "The pickle imports through the copyreg extension registry.",
    "indirect-call": "The pickle calls a value that is not an imported global.",
    "build-on-global": "The pickle sets attributes on an imported class or function.",
    "parse-error": "A pickle stream could not be read to its end.",
    "limit-exceeded": "The scan stopped at a limit; the rest was not checked.",
}


def render_sarif(report: ScanReport) -> dict[str, Any]:
    """The report as a SARIF 2.1.0 log: one run, one rule per finding kind, one result per
    finding above INFO (allowed imports are left out: they are not problems).

    >>> render_sarif(ScanReport(files=()))["version"]
    '2.1.0'
    """
    results: list[dict[str, Any]] = []
    kinds: dict[str, None] = {}
    for file in report.files:
        for finding in file.problems:
            kinds.setdefault(finding.kind)
            text = finding.detail
            if finding.location:
                text = f"{text} (at {finding.location})"
            results.append({
                "ruleId": finding.kind,
                "level": _LEVEL[finding.severity],
                "message": {"text": text},
                "locations": [{"physicalLocation": {"artifactLocation": {"uri": _uri(file.path)}}}],
                "properties": {"verdict": file.verdict.value, "format": file.format,
                               "module": finding.module, "name": finding.name},
            })
    rules = [{"id": k, "shortDescription": {"text": _RULE_TEXT.get(k, k.replace("-", " "))}}
             for k in sorted(kinds)]
    return {
        "$schema": _SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "bastion", "version": __version__,
                                "informationUri": "https://github.com/bastion-ml/bastion",
                                "rules": rules}},
            "results": results,
        }],
    }


def _uri(path: str) -> str:
    return path.replace("\\", "/")


def _file_text(file: FileReport) -> list[str]:
    lines = [f"{file.verdict.value.upper():8} {file.path}  [{file.format}]"]
    for f in file.problems:
        where = f" @ {f.location}" if f.location else ""
        lines.append(f"    {str(f.severity):8} {f.kind}: {f.detail}{where}")
    return lines


def render_text(report: ScanReport) -> str:
    """A plain-text report: one line per file with its verdict, then its problems."""
    lines: list[str] = []
    for file in report.files:
        lines.extend(_file_text(file))
    s = report.summary()
    lines.append(f"{s['files']} file(s): {s['safe']} safe, {s['unknown']} unknown, "
                 f"{s['unsafe']} unsafe -> {s['verdict']}")
    if report.verdict is not Verdict.SAFE:
        lines.append("Allow a trusted class with --allow MODULE.NAME; never load unsafe files.")
    return "\n".join(lines)
