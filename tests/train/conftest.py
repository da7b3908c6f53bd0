"""The training tests run torch on one thread (see ``_helpers.threads``); module scope, so that
module-scoped fixtures that train models run on one thread too."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from _helpers.threads import one_thread


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    with one_thread():
        yield
