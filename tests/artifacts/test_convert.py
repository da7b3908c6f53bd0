"""bastion convert: pickle checkpoints to safetensors, isolated loads for unknown files."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import bastion
from _helpers.custom_classes import Checkpoint, EnvProbe, Spinner, Writer
from _helpers.payloads import build
from bastion.artifacts.convert import convert
from bastion.artifacts.isolate import IsolationLimits
from bastion.core.errors import ConfigurationError


def test_safe_checkpoint_converts_with_scalars_in_metadata(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    src = tmp_path / "ckpt.pt"
    torch.save({"model": net.state_dict(), "epoch": 4, "tied": [net.weight, net.weight]}, src)
    out = tmp_path / "ckpt.safetensors"
    result = convert(src, out)
    assert result.mode == "restricted" and result.verdict == "safe"
    tensors = load_file(out)
    assert torch.equal(tensors["model.weight"], net.weight.detach())
    assert torch.equal(tensors["tied.0"], tensors["tied.1"])
    with safe_open(out, "pt") as handle:
        meta = handle.metadata()
    assert json.loads(meta["bastion.extra"]) == {"epoch": 4}
    assert result.tensors == 4
    with pytest.raises(bastion.ConfigurationError, match="exists"):
        convert(src, out)
    with pytest.raises(bastion.ConfigurationError, match=".safetensors"):
        convert(src, tmp_path / "out.bin")


def test_unknown_needs_isolation_and_isolation_returns_tensors(tmp_path: Path) -> None:
    src = tmp_path / "user.pkl"
    src.write_bytes(pickle.dumps(Checkpoint({"w": torch.arange(3.0)}, 9)))
    with pytest.raises(bastion.UnsafeArtifactError, match="isolated"):
        convert(src, tmp_path / "a.safetensors")
    result = convert(src, tmp_path / "b.safetensors", isolated=True)
    assert result.mode == "isolated"
    tensors = load_file(tmp_path / "b.safetensors")
    assert torch.equal(tensors["weights.w"], torch.arange(3.0))


def test_unsafe_is_refused_even_isolated(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    src = build("pickle-p2", tmp_path, marker)
    with pytest.raises(bastion.UnsafeArtifactError, match="never loaded"):
        convert(src, tmp_path / "x.safetensors", isolated=True)
    assert not marker.exists()
    assert not (tmp_path / "x.safetensors").exists()


def test_isolated_child_gets_no_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_TEST_SECRET", "hunter2-token")
    assert len(os.environ["BASTION_TEST_SECRET"]) == 13
    src = tmp_path / "probe.pkl"
    src.write_bytes(pickle.dumps(EnvProbe("BASTION_TEST_SECRET")))
    convert(src, tmp_path / "p.safetensors", isolated=True)
    assert load_file(tmp_path / "p.safetensors")["seen"].item() == 0


def test_isolated_child_cannot_write_files(tmp_path: Path) -> None:
    target = tmp_path / "written.txt"
    src = tmp_path / "writer.pkl"
    src.write_bytes(pickle.dumps(Writer(str(target))))
    convert(src, tmp_path / "w.safetensors", isolated=True)
    assert load_file(tmp_path / "w.safetensors")["written"].item() == -1
    assert not target.exists() or target.stat().st_size == 0


def test_isolated_child_is_killed_at_its_cpu_limit(tmp_path: Path) -> None:
    src = tmp_path / "spin.pkl"
    src.write_bytes(pickle.dumps(Spinner()))
    with pytest.raises(bastion.ArtifactError, match="CPU time"):
        convert(src, tmp_path / "s.safetensors", isolated=True,
                limits=IsolationLimits(cpu_seconds=2))
    assert not (tmp_path / "s.safetensors").exists()


@pytest.mark.parametrize("bad", [0, -1, 86_401, 10**20, 2.5, True, "60"])
def test_isolation_cpu_limit_is_checked_before_any_child_starts(bad: object) -> None:
    with pytest.raises(ConfigurationError, match=r"cpu_seconds must be an integer from 1 to 86400"):
        IsolationLimits(cpu_seconds=bad)  # type: ignore[arg-type]
