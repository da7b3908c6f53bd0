"""The demo model, trained once and cached as safetensors with a JSON sidecar.

Layout, under :func:`zoo_cache_dir` (``cache_dir`` argument, else ``$BASTION_CACHE_DIR``, else
the user cache directory, each with a ``zoo`` subfolder)::

    demo_cnn-v1.safetensors   the weights (no pickle anywhere)
    demo_cnn-v1.json          DemoModelInfo: recipe, test accuracy, versions, sha256 of weights
    .demo_cnn-v1.lock         serialises training between processes

A cached file is trusted only when its sha256 matches the sidecar and it loads strictly into the
current architecture; otherwise it is retrained with a warning. Both files are written
atomically, and training happens under an exclusive file lock, so processes racing to create
the cache train once and never see half a file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import platformdirs
import safetensors.torch
import torch

from bastion._version import __version__
from bastion.core.atomic import atomic_write_bytes, atomic_write_text
from bastion.core.errors import IntegrityError
from bastion.core.results import Result
from bastion.zoo import train as _train
from bastion.zoo.demo_cnn import ARCHITECTURE_VERSION, DemoCNN

try:  # POSIX only; elsewhere racing processes may both train, which is safe, just slower
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["DemoModelInfo", "demo_info", "demo_model", "demo_model_path", "zoo_cache_dir"]

CACHE_ENV_VAR = "BASTION_CACHE_DIR"
_STEM = f"demo_cnn-v{ARCHITECTURE_VERSION}"
_logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoModelInfo(Result):
    """The sidecar of the cached demo model.

    Attributes:
        architecture_version: :data:`~bastion.zoo.demo_cnn.ARCHITECTURE_VERSION` it was built with.
        seed: training seed.
        epochs: training epochs.
        test_accuracy: accuracy on the 1,000 MNIST 5k test images.
        train_seconds: wall-clock training time on the machine that trained it.
        torch_version: torch release that trained it.
        bastion_version: bastion release that trained it.
        weights_sha256: hex sha256 of the safetensors file.
    """

    architecture_version: int
    seed: int
    epochs: int
    test_accuracy: float
    train_seconds: float
    torch_version: str
    bastion_version: str
    weights_sha256: str

    @classmethod
    def from_dict(cls, data: Any) -> DemoModelInfo:
        """Rebuild from :meth:`to_dict` output, checking every field's type.

        Raises:
            IntegrityError: a field is missing or has the wrong type.
        """
        kinds: dict[str, type | tuple[type, ...]] = {"int": int, "float": (int, float), "str": str}
        if not isinstance(data, dict):
            raise IntegrityError(f"sidecar must be a JSON object, got {type(data).__name__}")
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            value = data.get(field.name)
            expected = kinds[str(field.type)]
            if isinstance(value, bool) or not isinstance(value, expected):
                raise IntegrityError(f"sidecar field {field.name!r} is missing or invalid")
            values[field.name] = value
        return cls(**values)


def zoo_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Folder of the zoo's files: ``cache_dir``, else ``$BASTION_CACHE_DIR``, else the user cache.

    Example:
        >>> zoo_cache_dir("/tmp/somewhere")
        PosixPath('/tmp/somewhere/zoo')
    """
    if cache_dir is not None:
        root = Path(cache_dir)
    elif os.environ.get(CACHE_ENV_VAR):
        root = Path(os.environ[CACHE_ENV_VAR])
    else:
        root = Path(platformdirs.user_cache_dir("bastion"))
    return root.expanduser() / "zoo"


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(folder / f".{_STEM}.lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _load_cached(folder: Path) -> tuple[DemoCNN, DemoModelInfo] | None:
    """The cached model and sidecar, or None (with a warning) when absent parts or bad bytes."""
    weights, sidecar = folder / f"{_STEM}.safetensors", folder / f"{_STEM}.json"
    if not weights.exists() and not sidecar.exists():
        return None
    try:
        info = DemoModelInfo.from_dict(json.loads(sidecar.read_text(encoding="utf-8")))
        payload = weights.read_bytes()  # hash and load the same bytes
        digest = hashlib.sha256(payload).hexdigest()
        if digest != info.weights_sha256:
            raise IntegrityError(
                f"sha256 {digest} differs from the sidecar's {info.weights_sha256}"
            )
        if info.architecture_version != ARCHITECTURE_VERSION:
            raise IntegrityError(f"architecture version {info.architecture_version} is stale")
        model = DemoCNN()
        model.load_state_dict(safetensors.torch.load(payload), strict=True)
    except (
        OSError,
        ValueError,
        RuntimeError,
        IntegrityError,
        safetensors.SafetensorError,
    ) as error:
        _logger.warning("demo model cache in %s is unusable (%s); retraining", folder, error)
        return None
    return model.eval(), info


def _train_and_store(folder: Path) -> tuple[DemoCNN, DemoModelInfo]:
    _logger.info("training the demo model once; it will be cached in %s", folder)
    trained = _train.train_demo()
    state = {
        name: tensor.detach().contiguous() for name, tensor in trained.model.state_dict().items()
    }
    # one metadata key: safetensors orders several arbitrarily, and the bytes should be repeatable
    payload = safetensors.torch.save(state, metadata={"architecture": _STEM})
    info = DemoModelInfo(
        architecture_version=ARCHITECTURE_VERSION,
        seed=trained.seed,
        epochs=trained.epochs,
        test_accuracy=trained.test_accuracy,
        train_seconds=round(trained.seconds, 3),
        torch_version=torch.__version__,
        bastion_version=__version__,
        weights_sha256=hashlib.sha256(payload).hexdigest(),
    )
    atomic_write_bytes(folder / f"{_STEM}.safetensors", payload)
    atomic_write_text(folder / f"{_STEM}.json", info.to_json() + "\n")
    return trained.model.eval(), info


def _ensure(
    cache_dir: str | os.PathLike[str] | None, retrain: bool
) -> tuple[DemoCNN, DemoModelInfo, Path]:
    folder = zoo_cache_dir(cache_dir)
    with _exclusive(folder):
        cached = None if retrain else _load_cached(folder)
        model, info = cached if cached is not None else _train_and_store(folder)
    return model, info, folder / f"{_STEM}.safetensors"


def demo_model(
    *, cache_dir: str | os.PathLike[str] | None = None, retrain: bool = False
) -> DemoCNN:
    """The demo :class:`DemoCNN` trained on MNIST 5k, in eval mode; trained once, then cached.

    The first call trains the model (seconds on a CPU) and caches it; later calls load the
    cached safetensors file after checking its sha256 against the sidecar. A corrupt or
    mismatching cache is retrained, never trusted.

    Args:
        cache_dir: root of the cache (default ``$BASTION_CACHE_DIR`` or the user cache).
        retrain: train again even when a valid cache exists, and replace it.

    Returns:
        A fresh model in eval mode (about 98% accurate on the MNIST 5k test split).

    Example:
        >>> import tempfile
        >>> model = demo_model(cache_dir=tempfile.mkdtemp())
        >>> model.training
        False
    """
    return _ensure(cache_dir, retrain)[0]


def demo_model_path(*, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of the cached demo model's safetensors file, training it first if needed.

    Example:
        >>> import tempfile
        >>> demo_model_path(cache_dir=tempfile.mkdtemp()).suffix
        '.safetensors'
    """
    return _ensure(cache_dir, False)[2]


def demo_info(*, cache_dir: str | os.PathLike[str] | None = None) -> DemoModelInfo:
    """The cached demo model's sidecar (recipe, accuracy, versions, sha256); trains it if needed.

    Example:
        >>> import tempfile
        >>> demo_info(cache_dir=tempfile.mkdtemp()).test_accuracy >= 0.97
        True
    """
    return _ensure(cache_dir, False)[1]
