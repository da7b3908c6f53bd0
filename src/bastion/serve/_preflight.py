"""Startup checks of ``bastion serve``: the schema, the reference data and the model must agree.

A mismatch found here would otherwise surface on every request as a 500 (the model raising on
a batch the schema accepted) or as a torch traceback while the monitors are fitted. Each check
raises a one-line :class:`ConfigurationError` naming the files, the shapes and dtypes involved
and, where the model refused, the model's own error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from bastion.core.errors import ConfigurationError
from bastion.guard.schema import TensorSchema

__all__ = ["check_against_schema", "check_reference", "describe_reference", "reference_logits"]

_PROBE_SAMPLES = 2  # enough to exercise the batch dimension, cheap for any model
_MAX_ERROR_CHARS = 300


def describe_reference(path: Path | None) -> str:
    """How messages name the reference data: its file, or the bundled split."""
    return "(the bundled MNIST 5k test split)" if path is None else f"{path} (array 'x')"


def _describe(x: Tensor) -> str:
    return f"shape {tuple(x.shape)}, dtype {str(x.dtype).removeprefix('torch.')}"


def _describe_schema(schema: TensorSchema) -> str:
    dtypes = "/".join(str(d).removeprefix("torch.") for d in schema.dtypes)
    return f"shape {schema.describe_shape()}, dtype {dtypes}"


def _model_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split())  # one line, whatever the model raised
    if len(text) > _MAX_ERROR_CHARS:
        text = text[:_MAX_ERROR_CHARS] + "..."
    return f"{type(exc).__name__}: {text}"


def _run(net: nn.Module, batch: Tensor) -> Exception | None:
    try:
        with torch.no_grad():
            net(batch)
    except Exception as exc:  # any error of a foreign model: reported by the caller
        return exc
    return None


def _batch(ref: Tensor) -> None:
    if ref.dim() == 0 or ref.shape[0] == 0:
        raise ConfigurationError(
            f"reference data has {_describe(ref)}; expected a batch of at least one sample"
        )


def check_reference(
    net: nn.Module, ref: Tensor, ref_source: str, *, expects: Callable[[], str] | None = None
) -> None:
    """Without a schema file: the model must take the reference (its first samples, once).

    Args:
        expects: what the model is known to take (the demo), for the message.

    Raises:
        ConfigurationError: the reference is not a batch, or the model raised on it.
    """
    _batch(ref)
    exc = _run(net, ref[:_PROBE_SAMPLES])
    if exc is not None:
        model = f"the model expects {expects()} and" if expects is not None else "the model"
        raise ConfigurationError(
            f"reference data {ref_source} has {_describe(ref)}; {model} fails on it: "
            f"{_model_error(exc)}"
        )


def _conforming_batch(schema: TensorSchema, ref: Tensor) -> tuple[Tensor, str]:
    """A batch ``schema`` accepts: the first reference samples in the schema's first dtype (the
    dtype the server builds requests in) when their shape fits, else a constant batch."""
    sample = schema.sample_shape()
    size = schema.shape[0] if isinstance(schema.shape[0], int) else _PROBE_SAMPLES
    dtype = schema.dtypes[0]
    if tuple(ref.shape[1:]) == sample and ref.shape[0] >= size:
        return ref[:size].to(dtype), f"the first {size} reference sample(s)"
    low, high = schema.min, schema.max
    fill = low if low is not None else (min(0.0, high) if high is not None else 0.0)
    return torch.full((size, *sample), fill).to(dtype), f"a constant batch of value {fill}"


def check_against_schema(
    net: nn.Module, schema: TensorSchema, schema_source: str, ref: Tensor, ref_source: str
) -> Tensor:
    """The schema must fit the model and accept the reference; the reference is returned in the
    schema's first dtype, as the server would pass the same data to the model.

    Checks, in order: every sample dimension has a fixed size (the input monitors fitted on
    the reference compare samples feature by feature); the model takes a batch the schema
    accepts; the schema accepts the reference as it is (a dtype the schema does not list is
    refused, not converted).

    Raises:
        ConfigurationError: the first check that fails, in one line.
    """
    _batch(ref)
    free = [i for i, d in enumerate(schema.shape) if i > 0 and not isinstance(d, int)]
    if free:
        sizes = ", ".join(["batch", *map(str, ref.shape[1:])])
        raise ConfigurationError(
            f"schema {schema_source} ({_describe_schema(schema)}) leaves sample dimension(s) "
            f"{', '.join(map(str, free))} free; bastion serve fits its input monitors on "
            f"fixed-size samples, so give every sample dimension a size (the reference "
            f"data {ref_source} has {_describe(ref)}, i.e. shape = [{sizes}])"
        )
    batch, origin = _conforming_batch(schema, ref)
    exc = _run(net, batch)
    if exc is not None:
        raise ConfigurationError(
            f"schema {schema_source} ({_describe_schema(schema)}) does not fit the model: a "
            f"batch it accepts ({origin}, {_describe(batch)}) fails in the model: "
            f"{_model_error(exc)}"
        )
    report = schema.validate(ref)
    if not report.ok:
        first = "; ".join(v.message for v in report.violations[:2])
        raise ConfigurationError(
            f"reference data {ref_source} has {_describe(ref)}; the schema {schema_source} "
            f"expects "
            f"{_describe_schema(schema)}: {report.summary()} ({first})"
        )
    return ref.to(schema.dtypes[0])


def reference_logits(net: nn.Module, ref: Tensor, ref_source: str) -> Tensor:
    """The model's logits on the whole reference: a ``(samples, classes)`` float tensor.

    Raises:
        ConfigurationError: the model raised, or its output is not one row of logits a sample.
    """
    try:
        with torch.no_grad():
            logits = net(ref)
    except Exception as exc:  # any error of a foreign model: reported, not re-raised raw
        raise ConfigurationError(
            f"the model fails on the reference data {ref_source} ({_describe(ref)}): "
            f"{_model_error(exc)}"
        ) from None
    if not (
        isinstance(logits, Tensor)
        and logits.dim() == 2
        and logits.shape[0] == ref.shape[0]
        and logits.is_floating_point()
    ):
        got = _describe(logits) if isinstance(logits, Tensor) else type(logits).__name__
        raise ConfigurationError(
            f"the model's output on the reference data {ref_source} is {got}; bastion serve "
            f"needs floating-point logits of shape ({ref.shape[0]}, classes)"
        )
    return logits
