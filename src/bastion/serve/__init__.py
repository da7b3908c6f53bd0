"""``bastion serve``: the runtime guard behind an HTTP API (needs the ``serve`` extra).

:func:`create_app` wraps a :class:`Pipeline` (input guard -> model -> output checks -> monitors
-> audit log) in a FastAPI app with API keys, size/rate/time limits, Prometheus metrics and a
health endpoint; :func:`assemble` builds the pipeline from command-line style options.

Only :func:`create_app` needs the ``serve`` extra (FastAPI); it is imported on first use, so
:mod:`bastion.serve.build` (what the server would run, used by the audit) works without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bastion.serve.auth import ApiKey, KeyStore, create_key, hash_key
from bastion.serve.build import GuardStages, ModelSpec, assemble, guard_stages
from bastion.serve.config import ServeConfig
from bastion.serve.pipeline import Inference, Pipeline

if TYPE_CHECKING:
    from bastion.serve.app import create_app

__all__ = [
    "ApiKey",
    "GuardStages",
    "Inference",
    "KeyStore",
    "ModelSpec",
    "Pipeline",
    "ServeConfig",
    "assemble",
    "create_app",
    "create_key",
    "guard_stages",
    "hash_key",
]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        value = importlib.import_module("bastion.serve.app").create_app
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bastion.serve' has no attribute {name!r}")
