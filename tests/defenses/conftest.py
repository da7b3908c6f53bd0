"""The defense tests run torch on one thread (see ``mnist_cnn.one_thread``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from defenses.mnist_cnn import one_thread


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with one_thread():
        yield
