"""The Robustness HTML report: one self-contained file, every string escaped."""

from __future__ import annotations

import torch
from torch import nn

from _helpers.models import trained_digits_mlp
from bastion.core.threat import ThreatModel
from bastion.evaluate import compare
from bastion.report.robustness import render_robustness_html, write_robustness_report


def test_report_has_curves_table_sanity_gallery_and_escapes(tmp_path) -> None:
    model, x, y = trained_digits_mlp()
    weak = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    result = compare(model, weak, (x[:40], y[:40]), ThreatModel(eps=0.1), "fgsm",
                     eps=[0.0, 0.1], name="<script>alert(1)</script>", baseline_name="linear",
                     sanity_samples=20, progress=False)
    html = render_robustness_html(result)
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
    assert html.count("data:image/png;base64,") == 2  # curve + gallery
    assert "linear" in html and "fgsm" in html and "more steps" in html
    json_path, html_path = write_robustness_report(result, tmp_path)
    assert json_path.exists() and html_path.read_text() == html
    assert torch.is_tensor(result.examples[0].x_adv)
