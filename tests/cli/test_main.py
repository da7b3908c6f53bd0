"""The console entry point: errors become one-line messages and exit codes, never tracebacks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import bastion.cli.main as cli


def test_running_out_of_memory_is_a_message_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def huge(**_: Any) -> None:
        np.empty(2**62, dtype=np.uint8)  # numpy's own _ArrayMemoryError (a MemoryError)

    monkeypatch.setattr(cli, "app", huge)
    with pytest.raises(SystemExit) as exc:
        cli.main(["train"])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "out of memory" in err and "Traceback" not in err
