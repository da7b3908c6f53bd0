"""User-defined classes for loader tests: harmless, importable by a child process too."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


class Checkpoint:
    """A user's own checkpoint class: plain state, no code on load beyond ``__setstate__``."""

    def __init__(self, weights: dict[str, torch.Tensor], step: int) -> None:
        self.weights = weights
        self.step = step

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "step": self.step}


class EnvProbe:
    """Records, when unpickled, how long the value of an environment variable is."""

    def __init__(self, variable: str) -> None:
        self.variable = variable

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.seen = torch.tensor([len(os.environ.get(self.variable, ""))])

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen}


class Spinner:
    """Burns CPU forever when unpickled (to test the isolated loader's CPU limit)."""

    def __init__(self) -> None:
        self.state = 1  # a non-empty state, so that unpickling calls __setstate__

    def __setstate__(self, state: dict[str, Any]) -> None:
        while True:
            pass


class Writer:
    """Tries to write data to a file when unpickled (to test the no-file-write limit)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        written = 0
        try:
            with open(self.target, "w") as handle:
                handle.write("x" * 4096)
                handle.flush()
                written = 4096
        except OSError:
            written = -1
        self.written = torch.tensor([written])

    def state_dict(self) -> dict[str, Any]:
        return {"written": self.written}


class Toucher:
    """Creates its target file when constructed: a callable on no list of the scanner's (neither
    allowed nor known to be dangerous) whose call still has an effect when unpickled."""

    def __init__(self, target: str) -> None:
        Path(target).touch()
