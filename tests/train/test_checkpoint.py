"""Checkpoints: safetensors + JSON only, written so that a crash never breaks them, and a resumed
run that is bitwise the run that was never interrupted."""

from __future__ import annotations

import json
import os
import struct
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from bastion import ThreatModel
from bastion.core.errors import ConfigurationError
from bastion.train import EpochMetrics, fit, load_checkpoint
from bastion.train import checkpoint as ckpt


def _data(n: int = 192) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 3, (n,), generator=g)
    x = (torch.eye(3, 6)[y] * 0.6 + 0.2 + 0.1 * torch.randn(n, 6, generator=g)).clamp(0, 1)
    return x, y


def _model() -> nn.Module:
    torch.manual_seed(0)  # dropout makes the global RNG part of the run's state
    return nn.Sequential(nn.Linear(6, 24), nn.ReLU(), nn.Dropout(0.2), nn.Linear(24, 3))


# FGSM-RS (random starts), noise, dropout, Adam and a per-iteration cyclic schedule: every
# piece of state a resume must restore; the guard is on (fgsm-rs default), so best weights too.
CONFIG: dict[str, Any] = {
    "method": "fgsm-rs", "threat": ThreatModel(eps=0.1), "batch_size": 40, "lr": 0.01,
    "schedule": "cyclic", "noise_sigma": 0.05, "optimizer": "adam", "progress": False,
    "guard_samples": 64,
}


class Interrupt(Exception):
    pass


def _stop_after(epoch: int):
    def hook(metrics: EpochMetrics) -> None:
        if metrics.epoch == epoch:
            raise KeyboardInterrupt
    return hook


def _same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_resume_after_interrupt_is_bitwise_exact(tmp_path: Path) -> None:
    full = _model()
    reference = fit(full, _data(), epochs=3, out=tmp_path / "a", **CONFIG)
    cut = _model()
    with pytest.raises(KeyboardInterrupt):
        fit(cut, _data(), epochs=3, out=tmp_path / "b", on_epoch_end=_stop_after(2), **CONFIG)
    resumed_model = _model()  # a fresh process: weights come from the checkpoint only
    resumed = fit(resumed_model, _data(), epochs=3, out=tmp_path / "b", resume=True, **CONFIG)
    _same_weights(full, resumed_model)
    assert [m.loss for m in resumed.history] == [m.loss for m in reference.history]
    assert [m.robust_accuracy for m in resumed.history] == [
        m.robust_accuracy for m in reference.history]
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_resume_with_more_epochs_continues_the_run(tmp_path: Path) -> None:
    config = {**CONFIG, "schedule": "constant"}  # a schedule that does not depend on epochs
    full = _model()
    fit(full, _data(), epochs=3, out=tmp_path / "a", **config)
    part = _model()
    fit(part, _data(), epochs=2, out=tmp_path / "b", **config)
    resumed = _model()
    result = fit(resumed, _data(), epochs=3, out=tmp_path / "b", resume=True, **config)
    assert len(result.history) == 3
    _same_weights(full, resumed)


@pytest.mark.parametrize("crash", ["before state.json", "after state.json"])
def test_crash_while_writing_a_checkpoint_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash: str
) -> None:
    calls = {"write": 0, "rename": 0}
    real_write = ckpt.atomic_write_bytes

    def write(path: Path, data: bytes, mode: int = 0o644) -> None:
        calls["write"] += 1
        if crash == "before state.json" and calls["write"] == 5:  # epoch 2, optimizer file
            raise Interrupt
        real_write(path, data, mode)

    def rename(src: Any, dst: Any) -> None:
        calls["rename"] += 1
        if crash == "after state.json" and calls["rename"] == 4:  # epoch 2, first rename
            raise Interrupt
        os.replace(src, dst)

    monkeypatch.setattr(ckpt, "atomic_write_bytes", write)
    monkeypatch.setattr(ckpt, "os", types.SimpleNamespace(**{**vars(os), "replace": rename}))
    with pytest.raises(Interrupt):
        fit(_model(), _data(), epochs=3, out=tmp_path / "b", **CONFIG)
    monkeypatch.undo()
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert state["epoch"] == (1 if crash == "before state.json" else 2)
    resumed = _model()
    fit(resumed, _data(), epochs=3, out=tmp_path / "b", resume=True, **CONFIG)
    full = _model()
    fit(full, _data(), epochs=3, out=tmp_path / "a", **CONFIG)
    _same_weights(full, resumed)
    assert not list((tmp_path / "b").glob(".pending*")) or crash == "before state.json"


def test_resume_refuses_a_tampered_checkpoint(tmp_path: Path) -> None:
    fit(_model(), _data(), epochs=1, out=tmp_path, **CONFIG)
    other = _model()
    ckpt.save_tensors(tmp_path / "checkpoint.safetensors", other.state_dict())
    with pytest.raises(ConfigurationError, match="does not match the digest"):
        fit(_model(), _data(), epochs=2, out=tmp_path, resume=True, **CONFIG)


def test_resume_refuses_missing_state_changed_config_and_changed_data(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="nothing to resume"):
        fit(_model(), _data(), epochs=2, out=tmp_path, resume=True, **CONFIG)
    fit(_model(), _data(), epochs=2, out=tmp_path, **CONFIG)
    changed = {**CONFIG, "lr": 0.02, "batch_size": 32}
    with pytest.raises(ConfigurationError, match="batch_size, lr"):
        fit(_model(), _data(), epochs=2, out=tmp_path, resume=True, **changed)
    x, y = _data()
    with pytest.raises(ConfigurationError, match="data differ"):
        fit(_model(), (x.flip(0), y.flip(0)), epochs=2, out=tmp_path, resume=True, **CONFIG)
    with pytest.raises(ConfigurationError, match="already trained"):
        fit(_model(), _data(), epochs=1, out=tmp_path, resume=True, **CONFIG)
    with pytest.raises(ConfigurationError, match="do not fit"):
        fit(nn.Sequential(nn.Linear(6, 3)), _data(), epochs=3, out=tmp_path, resume=True,
            **CONFIG)


def _safetensors_header(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header: dict[str, Any] = json.loads(raw[8 : 8 + size])
    return header


def test_run_directory_holds_only_safetensors_and_json(tmp_path: Path) -> None:
    model = _model()
    fit(model, _data(), epochs=2, out=tmp_path, **CONFIG)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["best.safetensors", "checkpoint.safetensors", "metrics.jsonl",
                     "model.safetensors", "optimizer.safetensors", "state.json", "train.json"]
    for path in tmp_path.iterdir():
        raw = path.read_bytes()
        assert not raw.startswith((b"\x80", b"PK")), path  # no pickle, no torch zip
        if path.suffix == ".safetensors":
            assert "__metadata__" in _safetensors_header(path)
        elif path.suffix == ".jsonl":
            assert [json.loads(line)["epoch"] for line in raw.decode().splitlines()] == [1, 2]
        else:
            json.loads(raw)
    header = _safetensors_header(tmp_path / "optimizer.safetensors")
    assert {"0.exp_avg", "0.exp_avg_sq", "0.step"} <= set(header)
    state = json.loads((tmp_path / "state.json").read_text())
    assert {"epoch", "config", "optimizer", "rng", "history", "best"} <= set(state)
    assert set(state["rng"]) >= {"data", "noise", "torch"}


def test_load_checkpoint_round_trip_and_refusals(tmp_path: Path) -> None:
    model = _model()
    fit(model, _data(), epochs=1, out=tmp_path, **CONFIG)
    fresh = nn.Sequential(nn.Linear(6, 24), nn.ReLU(), nn.Dropout(0.2), nn.Linear(24, 3))
    assert load_checkpoint(tmp_path, fresh) is fresh
    _same_weights(model, fresh)
    load_checkpoint(tmp_path / "checkpoint.safetensors", fresh)
    with pytest.raises(ConfigurationError, match="do not fit"):
        load_checkpoint(tmp_path, nn.Sequential(nn.Linear(6, 3)))
    with pytest.raises(ConfigurationError, match="missing"):
        load_checkpoint(tmp_path / "nothing-here", fresh)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigurationError, match="no model.safetensors"):
        load_checkpoint(tmp_path / "empty", fresh)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigurationError, match="not a valid safetensors"):
        load_checkpoint(tmp_path / "bad.safetensors", fresh)


def test_a_fresh_run_replaces_the_previous_one(tmp_path: Path) -> None:
    fit(_model(), _data(), epochs=2, out=tmp_path, **CONFIG)
    assert (tmp_path / "best.safetensors").exists()
    fit(_model(), _data(), epochs=1, out=tmp_path, **{**CONFIG, "guard": False})
    assert not (tmp_path / "best.safetensors").exists()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 1
