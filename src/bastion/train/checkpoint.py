"""Checkpoints of a training run: safetensors for tensors, JSON for everything else, no pickle.

A run directory holds, after every epoch::

    checkpoint.safetensors   model state
    optimizer.safetensors    optimizer tensors (moments, momentum buffers, step counts)
    best.safetensors         best-robust-accuracy weights (only with the overfitting guard)
    state.json               epoch, config, optimizer scalars, RNG states, history, best so far
    metrics.jsonl            one EpochMetrics JSON line per epoch (append-only)

and at the end ``model.safetensors`` and ``train.json``. Every file is written atomically, and
an epoch is committed by ``state.json``: the tensor files are first written under pending names
(``.pending.<name>``), then ``state.json`` records their SHA-256 digests, then the pending files
are renamed over the previous ones. A crash before ``state.json`` leaves the previous epoch's
files and state untouched (the pending files are ignored); a crash after it leaves pending files
that :func:`recover` renames into place, checked against the digests. So ``state.json`` never
points at weights that are missing or from another epoch. Loading never unpickles anything.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from bastion.core.atomic import atomic_write_bytes, atomic_write_text
from bastion.core.errors import ConfigurationError

__all__ = [
    "append_metrics",
    "commit_epoch",
    "load_checkpoint",
    "load_optimizer",
    "read_state",
    "read_tensors",
    "recover",
    "rewrite_metrics",
    "optimizer_tensors",
    "save_tensors",
    "start_fresh",
    "tensor_bytes",
]

MODEL_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
BEST_FILE = "best.safetensors"
STATE_FILE = "state.json"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "train.json"
STATE_VERSION = 1


def tensor_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    """safetensors bytes of ``state`` (tensors copied to contiguous CPU memory, ties untied)."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    return safetensors.torch.save(tensors, metadata={"format": "pt", "writer": "bastion.train"})


def save_tensors(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    """Write ``state`` as a safetensors file, atomically."""
    atomic_write_bytes(path, tensor_bytes(state))


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (never unpickles)."""
    try:
        return safetensors.torch.load(path.read_bytes())
    except FileNotFoundError:
        raise ConfigurationError(f"checkpoint file {path} is missing") from None
    except Exception as error:  # safetensors raises its own SafetensorError
        raise ConfigurationError(f"{path} is not a valid safetensors file: {error}") from None


def load_model_state(model: nn.Module, path: Path) -> None:
    """Copy the weights stored at ``path`` into ``model`` (every key must match)."""
    state = read_tensors(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise ConfigurationError(
            f"the weights in {path} do not fit this model ({first}); load them into the "
            "architecture that was trained") from None


def load_checkpoint(path: str | os.PathLike[str], model: nn.Module) -> nn.Module:
    """Load the weights of a training run (or one safetensors file) into ``model``.

    Args:
        path: a directory written by :func:`~bastion.train.fit` (``model.safetensors`` when
            the run finished, else the last epoch's ``checkpoint.safetensors``) or a
            ``.safetensors`` file.
        model: a module of the architecture that was trained; its weights are replaced.

    Returns:
        ``model`` itself.

    Raises:
        ConfigurationError: no weights at ``path``, an invalid file, or weights that do not fit.

    Example:
        >>> import tempfile
        >>> from bastion.train import fit
        >>> x, y = torch.rand(32, 4), torch.randint(0, 2, (32,))
        >>> with tempfile.TemporaryDirectory() as out:
        ...     _ = fit(nn.Linear(4, 2), (x, y), epochs=1, out=out, progress=False)
        ...     model = load_checkpoint(out, nn.Linear(4, 2))
        >>> type(model).__name__
        'Linear'
    """
    target = Path(path)
    if (target / STATE_FILE).is_file():
        read_state(target)  # completes an epoch cut off between state.json and its renames
    if target.is_dir():
        for name in (MODEL_FILE, CHECKPOINT_FILE):
            if (target / name).is_file():
                target = target / name
                break
        else:
            raise ConfigurationError(
                f"no {MODEL_FILE} or {CHECKPOINT_FILE} in {path}: is it a bastion training "
                "directory (fit(..., out=...))?")
    load_model_state(model, target)
    return model


# -- optimizer ------------------------------------------------------------------------------


def optimizer_tensors(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The optimizer's tensors (``"<param index>.<key>"``) and its JSON-able rest."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer(path: Path, optimizer: torch.optim.Optimizer, info: Mapping[str, Any]) -> None:
    """Restore what :func:`save_optimizer` wrote."""
    per_param: dict[int, dict[str, Any]] = {}
    for name, tensor in read_tensors(path).items():
        index, key = name.split(".", 1)
        per_param.setdefault(int(index), {})[key] = tensor
    for index, values in info["scalars"].items():
        per_param.setdefault(int(index), {}).update(values)
    try:
        optimizer.load_state_dict({"state": per_param, "param_groups": info["param_groups"]})
    except (ValueError, KeyError) as error:
        raise ConfigurationError(f"the optimizer state in {path} does not fit: {error}") from None


# -- RNG states ------------------------------------------------------------------------------


def encode_rng(state: torch.Tensor) -> str:
    """A generator state (uint8 tensor) as base64 text for JSON."""
    return base64.b64encode(state.cpu().numpy().tobytes()).decode("ascii")


def decode_rng(text: str) -> torch.Tensor:
    """The generator state that :func:`encode_rng` wrote."""
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


# -- state.json and metrics.jsonl -------------------------------------------------------------


def _pending(out: Path, name: str) -> Path:
    return out / f".pending.{name}"


def commit_epoch(out: Path, files: Mapping[str, bytes], state: Mapping[str, Any]) -> None:
    """Write one epoch's tensor ``files`` and ``state.json`` so that a crash never mixes epochs.

    Each file goes to a pending name, ``state.json`` (with the files' digests) commits the
    epoch, and the pending files are then renamed into place.
    """
    digests = {}
    for name, blob in files.items():
        atomic_write_bytes(_pending(out, name), blob)
        digests[name] = hashlib.sha256(blob).hexdigest()
    payload = {"version": STATE_VERSION, **state, "files": digests}
    atomic_write_text(out / STATE_FILE, json.dumps(payload, indent=1, sort_keys=False))
    for name in files:
        os.replace(_pending(out, name), out / name)


def recover(out: Path, state: Mapping[str, Any]) -> None:
    """Finish the renames of an epoch committed by ``state`` but cut off before them.

    Raises:
        ConfigurationError: a file named by ``state`` matches neither its digest nor a pending
            copy (it was changed or deleted by hand).
    """
    for name, digest in state.get("files", {}).items():
        final, pending = out / name, _pending(out, name)
        if final.is_file() and hashlib.sha256(final.read_bytes()).hexdigest() == digest:
            continue
        if pending.is_file() and hashlib.sha256(pending.read_bytes()).hexdigest() == digest:
            os.replace(pending, final)
            continue
        raise ConfigurationError(
            f"{final} does not match the digest that {out / STATE_FILE} records: the run "
            "directory was modified; start a new run instead of resuming")


def read_state(out: Path) -> dict[str, Any]:
    """The state of the last completed epoch in ``out``."""
    path = out / STATE_FILE
    if not path.is_file():
        raise ConfigurationError(
            f"resume=True but {path} does not exist: nothing to resume; run without resume to "
            "start training in this directory")
    try:
        state = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigurationError(f"cannot read {path}: {error}") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise ConfigurationError(
            f"{path} is not a bastion training state of version {STATE_VERSION}")
    recover(out, state)
    return state


def append_metrics(out: Path, line: Mapping[str, Any]) -> None:
    """Append one JSON line to ``metrics.jsonl``, flushed and fsynced."""
    with open(out / METRICS_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def start_fresh(out: Path) -> None:
    """Remove the files of a previous run in ``out`` (only the names a run writes), so that a new
    run never leaves an old ``model.safetensors`` or ``state.json`` beside its own checkpoints."""
    names = (MODEL_FILE, CHECKPOINT_FILE, OPTIMIZER_FILE, BEST_FILE, STATE_FILE, RESULT_FILE)
    for name in names:
        for path in (out / name, _pending(out, name)):
            path.unlink(missing_ok=True)
    rewrite_metrics(out, [])


def rewrite_metrics(out: Path, lines: list[Mapping[str, Any]]) -> None:
    """Replace ``metrics.jsonl`` by ``lines`` (on a new run, or on resume: exactly the epochs
    that the state records, so an epoch cut off after its metrics line is not listed twice)."""
    atomic_write_text(out / METRICS_FILE, "".join(json.dumps(line) + "\n" for line in lines))
