"""The audit's Hardening section: hardened vs baseline under the same evaluation, record read
from the run directory, no credit for a gain the sanity checks flag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from _helpers.models import digits_mlp
from bastion import ThreatModel
from bastion.audit.hardening import hardening_section, load_weights_into, resolve_hardened
from bastion.audit.model_file import CheckStatus
from bastion.core.errors import ConfigurationError
from bastion.data import load_digits
from bastion.train import fit

EPS = (0.05, 0.1)
pytestmark = pytest.mark.usefixtures("torch_one_thread")




@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory, torch_one_thread: None
) -> tuple[nn.Module, Path]:
    """A plain digits MLP, and the directory of a PGD-trained one (bastion train's layout)."""
    split = load_digits()
    data = (split.x_train, split.y_train)
    torch.manual_seed(0)
    plain = digits_mlp()
    fit(plain, data, epochs=15, lr=1e-2, progress=False)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("hardened")
    fit(digits_mlp(), data, method="pgd", threat=ThreatModel(eps=0.1), epochs=15, lr=1e-2,
        out=out, progress=False)
    return plain.eval(), out


def test_a_real_gain_passes_and_the_record_is_read(runs: tuple[nn.Module, Path]) -> None:
    plain, out = runs
    weights, record = resolve_hardened(out)
    assert weights == out / "model.safetensors"
    assert record is not None and record["method"] == "pgd" and record["epochs"] == 15
    hardened = load_weights_into(digits_mlp(), weights)
    section = hardening_section(hardened, plain, samples=100, eps=EPS, data="digits",
                                training=record)
    result = section.result
    assert result.baseline is not None and result.samples == result.baseline.samples == 100
    assert section.gain == pytest.approx(result.robust_accuracy - result.baseline.robust_accuracy)
    assert section.gain >= 0.2 and section.status is CheckStatus.PASS
    data = section.to_dict()
    assert data["kind"] == "hardening" and data["status"] == "pass"
    assert data["result"]["baseline"]["model"] == "baseline"


def test_no_gain_is_a_warning_with_advice(runs: tuple[nn.Module, Path]) -> None:
    plain, _ = runs
    section = hardening_section(plain, plain, samples=100, eps=EPS, data="digits")
    assert section.gain == 0 and section.status is CheckStatus.WARN
    assert any("gained +0.0 points" in a for a in section.advice)


class _Masked(nn.Module):
    """The plain model behind a rounding of its input: zero gradients, no robustness."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.inner(torch.round(x * 8) / 8)
        return out


def test_a_masked_gain_is_not_credited(runs: tuple[nn.Module, Path]) -> None:
    plain, _ = runs
    section = hardening_section(_Masked(plain), plain, samples=100, eps=EPS, data="digits")
    assert section.result.gradient_masking_suspected
    assert section.status is CheckStatus.FAIL
    assert "gradient masking" in section.advice[0]


def test_hardened_paths_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no such file"):
        resolve_hardened(tmp_path / "missing.safetensors")
    with pytest.raises(ConfigurationError, match="must hold model.safetensors"):
        resolve_hardened(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"x")
    (tmp_path / "train.json").write_text("{not json")
    weights, record = resolve_hardened(tmp_path)
    assert record is not None and "unreadable" in record["error"]
    (tmp_path / "train.json").write_text(json.dumps([1, 2]))
    assert resolve_hardened(tmp_path)[1] == {"source": "train.json", "error": "not a JSON object"}


def test_the_audit_gains_the_section_in_json_html_and_text(
    runs: tuple[nn.Module, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import save_file

    from bastion.cli.main import main

    plain, out = runs
    base = tmp_path / "baseline.safetensors"
    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(base))
    with pytest.raises(SystemExit) as exc:
        main(["audit", "--model", str(base), "--hardened", str(out), "--baseline", str(base),
              "--architecture", "_helpers.models:digits_mlp", "--data", "digits",
              "--out", str(tmp_path / "audit")])
    text = capsys.readouterr().out
    assert exc.value.code in (0, None, 1)  # the unsigned model file is a warning at most
    assert "Hardening:" in text and "hardened: clean" in text and "baseline: clean" in text
    report = json.loads((tmp_path / "audit" / "report.json").read_text())
    (section,) = [s for s in report["sections"] if s.get("kind") == "hardening"]
    assert section["training"]["method"] == "pgd" and section["gain"] > 0.2
    html = (tmp_path / "audit" / "report.html").read_text()
    assert "How it was hardened (train.json)" in html and "robust accuracy against eps" in html


def test_the_audit_refuses_bad_hardening_arguments_before_any_work(tmp_path: Path) -> None:
    from bastion.audit import run_audit

    with pytest.raises(ConfigurationError, match="--baseline needs --hardened"):
        run_audit(tmp_path / "m.pt", baseline=tmp_path / "b.safetensors", workdir=tmp_path / "a")
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ConfigurationError, match="--baseline is required"):
        run_audit(tmp_path / "m.pt", hardened=tmp_path, architecture="_helpers.models:digits_mlp",
                  workdir=tmp_path / "a")
    assert not (tmp_path / "a").exists()
