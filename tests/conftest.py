"""Session-wide fixtures: the tests never touch the user's cache, and train the demo once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point ``BASTION_CACHE_DIR`` (inherited by subprocesses) at a session temp dir."""
    cache = tmp_path_factory.mktemp("bastion-cache")
    previous = os.environ.get("BASTION_CACHE_DIR")
    os.environ["BASTION_CACHE_DIR"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("BASTION_CACHE_DIR", None)
    else:
        os.environ["BASTION_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def demo_cache(isolated_cache: Path) -> Path:
    """The session cache with the demo model trained in it (once, with the real recipe)."""
    from bastion.zoo import demo_model

    demo_model(cache_dir=isolated_cache)
    return isolated_cache


@pytest.fixture(scope="module")
def torch_one_thread() -> Iterator[None]:
    """Torch on one thread for a whole module (``pytestmark = usefixtures(...)``)."""
    from _helpers.threads import one_thread

    with one_thread():
        yield
