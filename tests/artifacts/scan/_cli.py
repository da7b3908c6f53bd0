"""Run ``bastion`` in-process and return its exit code."""

from __future__ import annotations

import pytest

from bastion.cli.main import main


def run_cli(*args: str) -> int:
    """The exit code of ``bastion ARGS`` (typer and main() always end with SystemExit)."""
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    code = exc.value.code
    return int(code) if code is not None else 0
