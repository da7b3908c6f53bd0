"""``bastion serve``: the runtime guard behind an HTTP API (needs the ``serve`` extra).

:func:`create_app` wraps a :class:`Pipeline` (input guard -> model -> output checks -> monitors
-> audit log) in a FastAPI app with API keys, size/rate/time limits, Prometheus metrics and a
health endpoint; :func:`assemble` builds the pipeline from command-line style options.
"""

from bastion.serve.app import create_app
from bastion.serve.auth import ApiKey, KeyStore, create_key, hash_key
from bastion.serve.build import ModelSpec, assemble
from bastion.serve.config import ServeConfig
from bastion.serve.pipeline import Inference, Pipeline

__all__ = [
    "ApiKey",
    "Inference",
    "KeyStore",
    "ModelSpec",
    "Pipeline",
    "ServeConfig",
    "assemble",
    "create_app",
    "create_key",
    "hash_key",
]
