"""The one exception tree of bastion.

Every error bastion raises on purpose derives from :class:`BastionError`, so a caller can catch
the whole family with one ``except``. Each message says what was wrong and what to do about it;
each error carries the fields a program needs (``path``, ``findings``, ``sample_index``) so that
nobody has to parse text::

    BastionError
    ├── ConfigurationError        bad arguments, options or config files
    ├── InputValidationError      data that breaks a declared schema or contract
    └── ArtifactError             a model or data file that must not be used
        ├── UnsafeArtifactError   the file carries code, or could not be fully checked
        ├── IntegrityError        its bytes differ from the recorded digest / manifest
        └── SignatureError        its signature is missing, malformed or not trusted
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "ArtifactError",
    "BastionError",
    "ConfigurationError",
    "InputValidationError",
    "IntegrityError",
    "SignatureError",
    "UnsafeArtifactError",
]


class BastionError(Exception):
    """Base of every error bastion raises on purpose."""


class ConfigurationError(BastionError, ValueError):
    """An argument, option or configuration file is invalid."""


class InputValidationError(BastionError, ValueError):
    """Data breaks a declared schema or an API contract.

    Attributes:
        sample_index: index of the first offending sample in a batch, when known.
        violations: every violation found (not only the first), when known.
    """

    def __init__(
        self,
        message: str,
        *,
        sample_index: int | None = None,
        violations: Sequence[Any] = (),
    ) -> None:
        super().__init__(message)
        self.sample_index = sample_index
        self.violations = tuple(violations)


class ArtifactError(BastionError):
    """A file (model, signature, manifest) must not be used.

    Attributes:
        path: the file concerned, when there is one.
    """

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)


class UnsafeArtifactError(ArtifactError):
    """A file carries code, imports something the policy does not allow, or cannot be fully read.

    Attributes:
        findings: the scanner findings that led to the refusal.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        findings: Sequence[Any] = (),
    ) -> None:
        super().__init__(message, path=path)
        self.findings = tuple(findings)


class IntegrityError(ArtifactError):
    """A file's bytes differ from its recorded digest, manifest or signature payload."""


class SignatureError(ArtifactError):
    """A signature is missing, malformed, or was not made by a trusted key."""
