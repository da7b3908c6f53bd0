"""``bastion evaluate``: exit codes, JSON keys, model specs (demo, factory + weights, .pt2)."""

from __future__ import annotations

import io
import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch

from _helpers.models import trained_digits_mlp
from _helpers.payloads import build
from bastion.cli.main import main

_KEYS = {"threat", "samples", "clean_accuracy", "robust_accuracy", "attacks", "curve", "sanity"}


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", *args])
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


@pytest.fixture
def factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """An importable ``evalpkg.nets:mlp`` factory and the trained digits MLP's weights."""
    pkg = tmp_path / "src" / "evalpkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(textwrap.dedent("""
        from torch import nn

        def mlp():
            return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    """))
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    model, _, _ = trained_digits_mlp()
    weights = tmp_path / "mlp.pt"
    torch.save(model.state_dict(), weights)
    return "evalpkg.nets:mlp", weights


def test_demo_end_to_end_json(capsys, demo_cache, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("BASTION_CACHE_DIR", str(demo_cache))
    out_dir = tmp_path / "report"
    code, out, _ = _run(capsys, "--model", "demo", "--data", "mnist5k", "--limit", "50",
                        "--eps", "0.3", "--format", "json", "--out", str(out_dir))
    assert code == 0
    data = json.loads(out)
    assert _KEYS <= set(data)
    assert data["samples"] == 50 and data["threat"]["eps"] == 0.3
    assert data["clean_accuracy"] >= 0.9 and data["robust_accuracy"] <= 0.1
    assert [p["eps"] for p in data["curve"]] == [0.3]
    for attack in data["attacks"]:
        assert {"name", "params", "robust_accuracy", "success_rate", "seconds"} <= set(attack)
    for check in data["sanity"]:
        assert set(check) >= {"check", "passed", "detail"}
    assert json.loads((out_dir / "report.json").read_text())["samples"] == 50
    html = (out_dir / "report.html").read_text()
    assert "Robustness" in html and "data:image/png;base64," in html


def test_unknown_attack_exits_2_with_the_valid_list(capsys) -> None:
    code, _, err = _run(capsys, "--model", "demo", "--data", "digits", "--attacks", "pgd,nope")
    assert code == 2
    assert "nope" in err and "apgd-t" in err and "square" in err


@pytest.mark.parametrize("args", [["--eps", "0.1,x"], ["--norm", "l7"], ["--data", "nope"],
                                  ["--model", "not-a-spec"]])
def test_usage_errors_exit_2(capsys, factory, args) -> None:
    spec, weights = factory
    base = {"--model": spec, "--data": "digits", "--eps": "0.1", "--norm": "linf"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    flat = [v for kv in base.items() for v in kv]
    if base["--model"] == spec:
        flat += ["--weights", str(weights)]
    code, _, _ = _run(capsys, *flat, "--attacks", "fgsm", "--limit", "10")
    assert code == 2


def test_factory_with_weights_through_bastion_load(capsys, factory) -> None:
    spec, weights = factory
    code, out, _ = _run(capsys, "--model", spec, "--weights", str(weights), "--data", "digits",
                        "--eps", "0.0,0.1", "--attacks", "fgsm,pgd", "--limit", "60",
                        "--format", "json", "--no-sanity")
    assert code == 0
    data = json.loads(out)
    assert data["clean_accuracy"] > 0.85  # the trained weights were loaded
    assert data["curve"][0]["robust_accuracy"] == data["clean_accuracy"]


def test_malicious_weights_are_refused(capsys, factory, tmp_path) -> None:
    spec, _ = factory
    marker = tmp_path / "pwned"
    evil = build("torch-zip", tmp_path, marker)
    code, _, err = _run(capsys, "--model", spec, "--weights", str(evil), "--data", "digits",
                        "--attacks", "fgsm", "--limit", "10")
    assert code == 1 and "refused" in err
    assert not marker.exists()


def test_sha256_mismatch_is_refused(capsys, factory) -> None:
    spec, weights = factory
    code, _, _ = _run(capsys, "--model", spec, "--weights", str(weights), "--sha256", "0" * 64,
                      "--data", "digits", "--attacks", "fgsm", "--limit", "10")
    assert code == 1


def test_pt2_program_is_scanned_then_loaded(capsys, tmp_path) -> None:
    model, _, _ = trained_digits_mlp()
    program = torch.export.export(model, (torch.rand(2, 1, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    path = tmp_path / "mlp.pt2"
    path.write_bytes(buffer.getvalue())
    code, out, _ = _run(capsys, "--model", str(path), "--data", "digits", "--eps", "0.1",
                        "--attacks", "fgsm", "--limit", "40", "--format", "json", "--no-sanity")
    assert code == 0 and json.loads(out)["clean_accuracy"] > 0.85


def test_pt2_with_a_pickled_payload_is_refused(capsys, tmp_path) -> None:
    marker = tmp_path / "pwned"
    evil = build("torch-zip-extra-member", tmp_path, marker)
    path = tmp_path / "evil.pt2"
    shutil.copy(evil, path)
    code, _, err = _run(capsys, "--model", str(path), "--data", "digits", "--attacks", "fgsm",
                        "--limit", "10")
    assert code == 1 and "refus" in err
    assert not marker.exists()


def test_baseline_text_output_shows_both(capsys, factory) -> None:
    spec, weights = factory
    code, out, _ = _run(capsys, "--model", spec, "--weights", str(weights), "--baseline",
                        "demo_linear_missing:nope", "--data", "digits", "--attacks", "fgsm",
                        "--limit", "10")
    assert code == 2  # the baseline spec is checked like the model's
    code, out, _ = _run(capsys, "--model", spec, "--weights", str(weights), "--baseline",
                        f"{spec}", "--data", "digits", "--eps", "0.05", "--attacks", "fgsm",
                        "--limit", "30", "--no-sanity")
    assert code == 0
    assert out.count(spec) >= 3 and "baseline" not in out.split("\n")[0]
