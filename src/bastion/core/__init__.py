"""Foundations shared by every pillar: errors, atomic writes, results, seeding, progress.

Kept free of torch at import time (seeding, threat models and modes live in their own modules)
so that the command line starts fast.
"""

from bastion.core.atomic import atomic_open, atomic_write_bytes, atomic_write_text
from bastion.core.errors import (
    ArtifactError,
    BastionError,
    ConfigurationError,
    InputValidationError,
    IntegrityError,
    SignatureError,
    UnsafeArtifactError,
)
from bastion.core.results import Result, to_jsonable

__all__ = [
    "ArtifactError",
    "BastionError",
    "ConfigurationError",
    "InputValidationError",
    "IntegrityError",
    "Result",
    "SignatureError",
    "UnsafeArtifactError",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "to_jsonable",
]
