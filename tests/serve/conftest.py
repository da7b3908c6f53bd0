"""A real server on loopback for the serve tests: uvicorn in a thread on a socket of our own."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import uvicorn

from bastion.serve.app import create_app
from bastion.serve.auth import KeyStore, create_key
from bastion.serve.config import ServeConfig
from bastion.serve.pipeline import Pipeline


class LiveServer:
    """uvicorn serving ``app`` on 127.0.0.1 (a port the system picked); stops within seconds."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms ACK stalls
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="error", lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
        assert not self.thread.is_alive(), "the test server did not stop"


@pytest.fixture(scope="session")
def demo_parts() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The demo model (through bastion.load), MNIST 5k train inputs and test inputs."""
    from bastion.data import load_mnist5k
    from bastion.serve.build import ModelSpec, load_model

    data = load_mnist5k()
    return load_model(ModelSpec.parse("demo")), data.x_train, data.x_test


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    return path, create_key(path, "tester")


@pytest.fixture(scope="session")
def start(keys: tuple[Path, str]) -> Any:
    """``start(pipeline, **limits)``: a :class:`LiveServer` (a context manager) for the pipeline
    (or for a ready app)."""

    def make(pipeline: Pipeline | Any, **limits: Any) -> LiveServer:
        if not isinstance(pipeline, Pipeline):
            return LiveServer(pipeline)
        config = ServeConfig(**{"rate_per_second": 1000.0, "burst": 1000, **limits})
        return LiveServer(create_app(pipeline, KeyStore.load(keys[0]), config))

    return make


@pytest.fixture(scope="session")
def connect(keys: tuple[Path, str]) -> Any:
    """``connect(server, key=<the test key>)``: an httpx client for the server with that key."""

    def make(server: LiveServer, key: str | None = keys[1]) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=server.url, headers=headers, timeout=30)

    return make
