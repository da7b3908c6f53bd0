"""Render audit reports as JSON and as one self-contained HTML page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2

from bastion.core.atomic import atomic_write_text
from bastion.core.results import Result

__all__ = ["render_html", "render_json", "write_report"]

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("bastion.report", "templates"),
    autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _filesize(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


_ENV.filters["filesize"] = _filesize


def render_json(report: Result) -> str:
    """The report as indented JSON (stable keys, ``schema_version`` first)."""
    return json.dumps(report.to_dict(), indent=2) + "\n"


def render_html(report: Result) -> str:
    """The report as a single HTML page with inline styles (every value HTML-escaped)."""
    data: dict[str, Any] = report.to_dict()
    robustness: dict[int, Any] = {}
    for index, section in enumerate(getattr(report, "sections", ())):
        result = getattr(section, "result", None)
        if result is not None and hasattr(result, "examples"):  # a Robustness section
            from bastion.report.robustness import robustness_context

            robustness[index] = robustness_context(result)
    return _ENV.get_template("audit.html.j2").render(report=data, robustness=robustness)


def write_report(report: Result, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` atomically into ``out_dir``."""
    out = Path(out_dir)
    json_path, html_path = out / "report.json", out / "report.html"
    atomic_write_text(json_path, render_json(report))
    atomic_write_text(html_path, render_html(report))
    return json_path, html_path
