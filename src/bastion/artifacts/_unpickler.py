"""The restricted unpickler behind :func:`bastion.load`.

It builds objects only from globals the :class:`~bastion.artifacts.scan.policy.Policy` calls
``SAFE`` - the same policy the scanner judged the bytes by - and refuses everything else before
the global is imported. torch storage classes are replaced by inert markers (they are only ever
needed as a dtype tag in persistent ids), and allocation-by-integer constructors are bounded, so
an allowed global cannot be turned into a memory bomb.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import pickle
import warnings
from collections.abc import Callable
from typing import Any

import torch

from bastion.artifacts.scan.bounds import excessive_call
from bastion.artifacts.scan.policy import DEFAULT_POLICY, ImportClass, Policy, normalise
from bastion.core.errors import UnsafeArtifactError

__all__ = ["RestrictedUnpickler", "StorageTag", "restricted_loads"]


@dataclasses.dataclass(frozen=True)
class StorageTag:
    """Stands in for ``torch.FloatStorage`` & co.: only the dtype is ever needed."""

    name: str
    dtype: torch.dtype


def _storage_tag(name: str) -> StorageTag | None:
    if name == "UntypedStorage":
        return StorageTag(name, torch.uint8)
    try:
        with warnings.catch_warnings():  # reading .dtype of a legacy storage class warns
            warnings.simplefilter("ignore")
            dtype = getattr(torch, name).dtype
    except AttributeError:
        return None
    return StorageTag(name, dtype) if isinstance(dtype, torch.dtype) else None


def _guarded(module: str, name: str, real: Any) -> Callable[..., Any]:
    """``real`` behind the scanner's own bound on its arguments (checked on the real values)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        problem = excessive_call(module, name, args)
        if problem is not None:
            raise UnsafeArtifactError(f"pickle calls {module}.{name} unsafely: {problem}")
        return real(*args, **kwargs)

    call.__name__ = name
    return call


#: Allowed callables that allocate or compute by a number the pickle chooses: called through
#: :func:`_guarded` (they are only ever called by pickles, never used as types).
_GUARDED: frozenset[tuple[str, str]] = frozenset({
    ("builtins", "bytes"), ("builtins", "bytearray"), ("builtins", "range"),
    ("fractions", "Fraction"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.ma.core", "_mareconstruct"),
})


def resolve_global(policy: Policy, module: str, name: str) -> Any:
    """Import ``module.name`` only if ``policy`` calls it safe; otherwise refuse."""
    verdict = policy.classify(module, name)
    if verdict is not ImportClass.SAFE:
        raise UnsafeArtifactError(
            f"refusing to import {module}.{name} ({verdict.value} under policy "
            f"{policy.name!r}); if you trust it, allow it with --allow {module}.{name}"
        )
    module, name = normalise(module, name)
    if module in {"torch", "torch.storage"} and name.endswith("Storage"):
        tag = _storage_tag(name)
        if tag is not None:
            return tag
    try:
        obj: Any = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise UnsafeArtifactError(f"cannot resolve allowed global {module}.{name}: {exc}") from None
    return _guarded(module, name, obj) if (module, name) in _GUARDED else obj


class RestrictedUnpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` whose ``find_class`` obeys a policy.

    Args:
        file: binary file positioned at the pickle.
        policy: the allowlist; the same one the scanner used.
        persistent_load: resolver for persistent ids (torch storages); ``None`` refuses them.
    """

    def __init__(
        self,
        file: io.BufferedIOBase | io.BytesIO,
        *,
        policy: Policy = DEFAULT_POLICY,
        persistent_load: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__(file, encoding="ASCII")
        self._policy = policy
        self._persistent = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            raise UnsafeArtifactError("pickle names a global with a non-string module or name")
        return resolve_global(self._policy, module, name)

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise UnsafeArtifactError("unexpected persistent id in a plain pickle")
        return self._persistent(pid)


def restricted_loads(
    data: bytes | memoryview,
    *,
    policy: Policy = DEFAULT_POLICY,
    persistent_load: Callable[[Any], Any] | None = None,
) -> Any:
    """Unpickle one complete pickle from ``data`` under ``policy``."""
    return RestrictedUnpickler(
        io.BytesIO(data), policy=policy, persistent_load=persistent_load
    ).load()
