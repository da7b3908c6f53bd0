"""The "Robustness" report: curves (with the baseline), the attack table, the sanity checks and
a gallery of adversarial examples, as JSON and as one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bastion.core.atomic import atomic_write_text
from bastion.report.plots import curve_png, gallery_png
from bastion.report.render import _ENV, render_json

__all__ = ["render_robustness_html", "robustness_context", "write_robustness_report"]


def robustness_context(result: Any) -> dict[str, Any]:
    """What the Robustness section's template needs: the result's JSON and its figures."""
    curves = [(result.model, [p.eps for p in result.curve],
               [p.robust_accuracy for p in result.curve])]
    if result.baseline is not None:
        b = result.baseline
        curves.append((b.model, [p.eps for p in b.curve], [p.robust_accuracy for p in b.curve]))
    return {
        "data": result.to_dict(),
        "curve_png": curve_png(curves, result.threat.norm.value),
        "gallery_png": gallery_png(result.examples) if result.examples else None,
    }


def render_robustness_html(result: Any) -> str:
    """A robustness result as one HTML page (every string escaped, images inline)."""
    return _ENV.get_template("robustness.html.j2").render(rob=robustness_context(result))


def write_robustness_report(result: Any, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` atomically into ``out_dir``."""
    out = Path(out_dir)
    json_path, html_path = out / "report.json", out / "report.html"
    atomic_write_text(json_path, render_json(result))
    atomic_write_text(html_path, render_robustness_html(result))
    return json_path, html_path
