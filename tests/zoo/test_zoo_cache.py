"""The demo-model cache: train once, reuse, verify, never trust bad bytes, no pickle."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path

import pytest
import safetensors.torch
import torch

from bastion.zoo import DemoModelInfo, demo_info, demo_model, demo_model_path, zoo_cache_dir
from bastion.zoo import cache as cache_module
from bastion.zoo import train as train_module

FAST_EPOCHS = 1


@pytest.fixture()
def trainer_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count trainings, and make each one a fast (1 epoch) run of the real trainer."""
    calls: list[int] = []
    real = train_module.train_demo

    def counting_trainer(**kwargs: object) -> train_module.TrainedDemo:
        calls.append(1)
        return real(epochs=FAST_EPOCHS)

    monkeypatch.setattr(train_module, "train_demo", counting_trainer)
    return calls


def _files(tmp_path: Path) -> tuple[Path, Path]:
    folder = zoo_cache_dir(tmp_path)
    weights = next(folder.glob("*.safetensors"))
    return weights, weights.with_suffix(".json")


def test_cache_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_CACHE_DIR", str(tmp_path / "env"))
    assert zoo_cache_dir() == tmp_path / "env" / "zoo"
    assert zoo_cache_dir(tmp_path / "arg") == tmp_path / "arg" / "zoo"
    monkeypatch.delenv("BASTION_CACHE_DIR")
    assert zoo_cache_dir().parent.name == "bastion"


def test_first_call_trains_and_later_calls_reuse(tmp_path: Path, trainer_calls: list[int]) -> None:
    model = demo_model(cache_dir=tmp_path)
    assert trainer_calls == [1] and not model.training
    again = demo_model(cache_dir=tmp_path)
    path = demo_model_path(cache_dir=tmp_path)
    info = demo_info(cache_dir=tmp_path)
    assert trainer_calls == [1]  # no further training
    assert again is not model
    for (name, a), (_, b) in zip(
        model.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert path.parent == tmp_path / "zoo" and path.suffix == ".safetensors"
    assert info.epochs == FAST_EPOCHS and info.seed == 0
    assert 0.5 < info.test_accuracy <= 1.0
    assert info.torch_version == torch.__version__


def test_env_var_selects_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trainer_calls: list[int]
) -> None:
    monkeypatch.setenv("BASTION_CACHE_DIR", str(tmp_path))
    assert demo_model_path().parent == tmp_path / "zoo"
    assert demo_model_path(cache_dir=tmp_path) == demo_model_path()
    assert trainer_calls == [1]


def test_cache_files_are_safetensors_and_sidecar_matches(
    tmp_path: Path, trainer_calls: list[int]
) -> None:
    demo_model(cache_dir=tmp_path)
    weights, sidecar = _files(tmp_path)
    raw = weights.read_bytes()
    header_length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_length])  # safetensors: u64 length + JSON header
    assert header["__metadata__"] == {"architecture": "demo_cnn-v1"}
    assert b"\x80\x04" not in raw[:2] and b"PK\x03\x04" not in raw[:4]  # not pickle, not torch zip
    tensors = safetensors.torch.load(raw)
    assert set(tensors) == set(cache_module.DemoCNN().state_dict())
    meta = json.loads(sidecar.read_text())
    assert meta["weights_sha256"] == hashlib.sha256(raw).hexdigest()
    assert DemoModelInfo.from_dict(meta) == demo_info(cache_dir=tmp_path)
    assert {"seed", "epochs", "test_accuracy", "torch_version", "architecture_version"} <= set(meta)
    assert not list(weights.parent.glob("*.tmp"))  # atomic writes leave no temporaries


@pytest.mark.parametrize(
    "damage", ["flip_weights", "truncate_weights", "bad_sidecar", "no_sidecar"]
)
def test_damaged_cache_is_retrained_with_a_warning(
    tmp_path: Path, trainer_calls: list[int], caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    demo_model(cache_dir=tmp_path)
    weights, sidecar = _files(tmp_path)
    good = weights.read_bytes()
    if damage == "flip_weights":
        raw = bytearray(good)
        raw[-5] ^= 0x01  # a valid safetensors file with one different weight
        weights.write_bytes(bytes(raw))
    elif damage == "truncate_weights":
        weights.write_bytes(good[:100])
    elif damage == "bad_sidecar":
        sidecar.write_text("[1, 2")
    else:
        sidecar.unlink()
    with caplog.at_level(logging.WARNING, logger="bastion.zoo.cache"):
        model = demo_model(cache_dir=tmp_path)
    assert trainer_calls == [1, 1]
    assert "unusable" in caplog.text and "retraining" in caplog.text
    assert weights.read_bytes() == good  # retrained deterministically, cache repaired
    assert not model.training
    demo_model(cache_dir=tmp_path)
    assert trainer_calls == [1, 1]


def test_tampered_weights_with_updated_size_are_not_loaded(
    tmp_path: Path, trainer_calls: list[int]
) -> None:
    demo_model(cache_dir=tmp_path)
    weights, _ = _files(tmp_path)
    zeros = {
        k: torch.zeros_like(v) for k, v in safetensors.torch.load(weights.read_bytes()).items()
    }
    weights.write_bytes(safetensors.torch.save(zeros))
    model = demo_model(cache_dir=tmp_path)
    assert trainer_calls == [1, 1]
    assert float(model.features[0].weight.detach().abs().sum()) > 0


def test_retrain_forces_training(tmp_path: Path, trainer_calls: list[int]) -> None:
    demo_model(cache_dir=tmp_path)
    demo_model(cache_dir=tmp_path, retrain=True)
    assert trainer_calls == [1, 1]


def test_racing_callers_train_once(tmp_path: Path, trainer_calls: list[int]) -> None:
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(demo_model_path(cache_dir=tmp_path)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3 and trainer_calls == [1]
