"""Build a model from an import path: ``package.module:factory`` (a callable -> ``nn.Module``).

The one way the command line turns a user's architecture into a module (``bastion evaluate``,
``bastion serve``): the weights never come from here — they are read separately, only through
:func:`bastion.load`.
"""

from __future__ import annotations

import importlib
import re

from torch import nn

from bastion.core.errors import ConfigurationError

__all__ = ["build_from_factory", "is_factory_spec"]

_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_factory_spec(text: str) -> bool:
    """Whether ``text`` has the shape ``package.module:factory``."""
    return bool(_SPEC.match(text))


def build_from_factory(spec: str) -> nn.Module:
    """Import ``package.module`` and call its ``factory()``; the result must be an ``nn.Module``.

    Raises:
        ConfigurationError: a malformed spec, a module that does not import, a missing or
            non-callable attribute, or a factory that does not return a module.

    Example:
        >>> build_from_factory("bastion.zoo.demo_cnn:DemoCNN").__class__.__name__
        'DemoCNN'
    """
    if not is_factory_spec(spec):
        raise ConfigurationError(f"model {spec!r}: expected 'package.module:factory'")
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"model {spec!r}: cannot import {module_name}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigurationError(f"model {spec!r}: {module_name} has no callable {attr!r}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise ConfigurationError(
            f"model {spec!r}: the factory returned {type(model).__name__}, not a torch nn.Module"
        )
    return model
