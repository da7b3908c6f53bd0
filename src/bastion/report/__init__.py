"""Reports: JSON and HTML renderings of result dataclasses."""

from bastion.report.render import render_html, render_json, write_report

__all__ = ["render_html", "render_json", "write_report"]
