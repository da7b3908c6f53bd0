"""The error tree: one base, typed subclasses with fields, and the public re-exports."""

from __future__ import annotations

from pathlib import Path

import pytest

import bastion
from bastion.core import errors


def test_tree_matches_the_documented_shape() -> None:
    assert issubclass(errors.ConfigurationError, errors.BastionError)
    assert issubclass(errors.InputValidationError, errors.BastionError)
    for leaf in (errors.UnsafeArtifactError, errors.IntegrityError, errors.SignatureError):
        assert issubclass(leaf, errors.ArtifactError)
        assert issubclass(leaf, errors.BastionError)
    # usage errors are ValueErrors too, so generic callers still catch them
    assert issubclass(errors.ConfigurationError, ValueError)
    doc = errors.__doc__ or ""
    for name in errors.__all__:
        assert name in doc, f"{name} missing from the tree drawn in the module docstring"


def test_errors_carry_fields() -> None:
    exc = errors.UnsafeArtifactError("bad", path="m.pt", findings=["f1"])
    assert exc.path == Path("m.pt") and exc.findings == ("f1",)
    exc2 = errors.InputValidationError("x", sample_index=3, violations=[1, 2])
    assert exc2.sample_index == 3 and exc2.violations == (1, 2)
    with pytest.raises(bastion.BastionError, match="bad"):
        raise exc


def test_public_api_is_exactly_all() -> None:
    import types

    public = {
        name
        for name in dir(bastion)
        if not name.startswith("_") and not isinstance(getattr(bastion, name), types.ModuleType)
    }
    assert public == set(bastion.__all__) - {"__version__"}
    for name in bastion.__all__:
        assert getattr(bastion, name) is not None
