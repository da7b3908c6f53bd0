"""Foundations shared by every pillar: errors, atomic writes, results, seeding, progress."""

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
from bastion.core.seeding import seed_everything, torch_generator

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
    "seed_everything",
    "to_jsonable",
    "torch_generator",
]
