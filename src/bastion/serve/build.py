"""Assemble what ``bastion serve`` serves: the model (only through :func:`bastion.load`), the
schema, the reference data and the guard around them (:func:`guard_stages`, which the audit's
"Runtime guard" section uses too, so it describes exactly what the server runs).

Importable without the ``serve`` extra (no FastAPI here).

Example:
    >>> spec = ModelSpec.parse("demo")
    >>> spec.is_demo, ModelSpec.parse("mypkg.nets:make_net").factory
    (True, 'mypkg.nets:make_net')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bastion.artifacts.scan.policy import Policy
from bastion.core.errors import ConfigurationError, IntegrityError
from bastion.guard._audit_sqlite import SYNCHRONOUS
from bastion.guard.alerts import AlertManager
from bastion.guard.monitors import Calibration, MonitorSuite
from bastion.guard.outputs import OutputChecker
from bastion.guard.policy import InputGuard, InvalidDataPolicy
from bastion.guard.schema import TensorSchema
from bastion.serve import _preflight, _stages
from bastion.serve.pipeline import Pipeline
from bastion.zoo.factory import build_from_factory, is_factory_spec

__all__ = [
    "GuardStages",
    "ModelSpec",
    "assemble",
    "guard_stages",
    "load_model",
    "load_reference",
    "load_schema",
]

@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """``demo`` or ``package.module:factory`` (a callable returning an untrained ``nn.Module``)."""

    factory: str | None = None

    @property
    def is_demo(self) -> bool:
        return self.factory is None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """Parse the ``--model`` option; ConfigurationError on anything else."""
        if text == "demo":
            return cls()
        if not is_factory_spec(text):
            raise ConfigurationError(
                f"--model must be 'demo' or 'package.module:factory', got {text!r}"
            )
        return cls(factory=text)

    def build(self) -> nn.Module:
        """An untrained instance of the architecture (weights come from :func:`load_model`)."""
        if self.factory is None:
            from bastion.zoo import DemoCNN

            return DemoCNN()
        return build_from_factory(self.factory)


def _demo_input() -> str:
    """What the demo model takes (the MNIST inputs it was trained on), for error messages."""
    from bastion.data import load_mnist5k

    x = load_mnist5k().x_train
    sizes = ", ".join(map(str, x.shape[1:]))
    return f"shape (N, {sizes}), dtype {str(x.dtype).removeprefix('torch.')}"


def load_model(
    spec: ModelSpec,
    *,
    weights: Path | None = None,
    signature: Path | None = None,
    public_keys: Path | Sequence[Path] | None = None,
    sha256: str | None = None,
    policy: Policy | None = None,
    cache_dir: Path | None = None,
) -> nn.Module:
    """The model with its weights read by :func:`bastion.load` (verified when asked), in eval mode.

    Without ``weights`` the demo uses its cached weights, checked against the digest the cache
    recorded; a factory model needs ``weights``.

    Raises:
        IntegrityError, SignatureError, UnsafeArtifactError: the weights failed a check.
        ConfigurationError: bad options, or weights that do not fit the architecture.
    """
    from bastion.artifacts.load import load

    if weights is None:
        if not spec.is_demo:
            raise ConfigurationError("--weights is required with --model package.module:factory")
        if signature is not None:
            raise ConfigurationError("--signature needs --weights (the file it signs)")
        from bastion.zoo import demo_info, demo_model_path

        weights = demo_model_path(cache_dir=cache_dir)
        sha256 = sha256 or demo_info(cache_dir=cache_dir).weights_sha256
    state = load(weights, signature=signature, public_keys=public_keys, sha256=sha256,
                 policy=policy)
    model = spec.build()
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigurationError(
            f"{weights}: expected a state dict (names -> tensors), got {type(state).__name__}"
        )
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        raise IntegrityError(
            f"{weights}: the weights do not fit the model architecture: {exc}", path=weights
        ) from None
    return model.eval()


def load_reference(path: Path | None, *, key: str = "x") -> Tensor:
    """Reference inputs: array ``key`` of an ``.npz`` file, or the MNIST 5k test split (None).

    Raises:
        ConfigurationError, InputValidationError, UnsafeArtifactError: as
            :func:`bastion.data.read_npz_arrays`.
    """
    if path is None:
        from bastion.data import load_mnist5k

        return load_mnist5k().x_test
    from bastion.data import read_npz_arrays

    array = read_npz_arrays(path, [key])[key]
    if array.dtype.kind not in "biuf":
        raise ConfigurationError(f"{path}: array {key!r} has dtype {array.dtype}, not numbers")
    return torch.from_numpy(array.copy())


def load_schema(path: Path | None, reference: Tensor, *, bounds: Any = None) -> TensorSchema:
    """The schema from a file, else inferred from the reference data (``TensorSchema.infer``)."""
    if path is not None:
        return TensorSchema.load(path)
    return TensorSchema.infer(reference, bounds=bounds)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class GuardStages:
    """What ``bastion serve`` puts around a model: the stages of its :class:`Pipeline`.

    Attributes:
        schema: the input schema (from a file, or inferred).
        guard: the schema with the invalid-data policy.
        output_checker: the checks on the model's logits.
        monitors: the default monitors, fitted and calibrated on ``reference``.
        reference: the reference inputs the monitors were fitted on.
        reference_logits: the model's outputs on them.
    """

    schema: TensorSchema
    guard: InputGuard
    output_checker: OutputChecker
    monitors: MonitorSuite
    reference: Tensor
    reference_logits: Tensor


def guard_stages(
    net: nn.Module,
    spec: ModelSpec,
    *,
    schema: Path | None = None,
    reference: Path | None = None,
    policy: str | InvalidDataPolicy = "reject",
    calibration: Calibration | None = None,
) -> GuardStages:
    """The guard ``bastion serve`` builds for ``net``; :func:`assemble` and the audit use it.

    The demo infers its schema from the MNIST 5k train split (range [0, 1]) and uses the test
    split as reference; other models infer it from ``reference`` unless a schema file is given.

    The schema, the reference and the model are checked against each other first (see
    :mod:`bastion.serve._preflight`), so a mismatch stops here with one line instead of failing
    every request.

    Raises:
        ConfigurationError: bad options or files, or a schema, reference data and model that
            do not fit together (the message names them and the model's error).
        InputValidationError: bad reference data.
    """
    invalid = InvalidDataPolicy.parse(policy)
    ref = load_reference(reference)
    ref_source = _preflight.describe_reference(reference)
    if schema is None and (reference is not None or not spec.is_demo):
        # the schema will be inferred from the reference: the model must take the reference
        _preflight.check_reference(net, ref, ref_source,
                                   expects=_demo_input if spec.is_demo else None)
        tensor_schema = load_schema(None, ref)
    else:
        if schema is None:  # the demo alone: its schema comes from the MNIST train split
            from bastion.data import load_mnist5k

            tensor_schema = TensorSchema.infer(load_mnist5k().x_train, bounds=(0.0, 1.0))
            schema_source = "(inferred from the MNIST 5k train split)"
        else:
            tensor_schema = load_schema(schema, ref)
            schema_source = str(schema)
        ref = _preflight.check_against_schema(net, tensor_schema, schema_source, ref, ref_source)
    guard = InputGuard(
        tensor_schema,
        policy=invalid,
        default=ref.float().mean(0) if invalid is InvalidDataPolicy.SUBSTITUTE else None,
    )
    ref_logits = _preflight.reference_logits(net, ref, ref_source)
    return GuardStages(
        schema=tensor_schema,
        guard=guard,
        output_checker=OutputChecker(int(ref_logits.shape[-1])),
        monitors=_stages.default_monitors(ref, ref_logits, calibration),
        reference=ref,
        reference_logits=ref_logits,
    )


def assemble(
    *,
    model: str = "demo",
    weights: Path | None = None,
    schema: Path | None = None,
    reference: Path | None = None,
    policy: str = "reject",
    signature: Path | None = None,
    public_keys: Path | Sequence[Path] | None = None,
    sha256: str | None = None,
    audit_log: str | Path | None = "bastion-audit.db",
    audit_sync: str = "normal",
    load_policy: Policy | None = None,
    cache_dir: Path | None = None,
    alerts: AlertManager | None = None,
) -> Pipeline:
    """Build the guarded pipeline ``bastion serve`` serves, from command-line style options.

    The model is read by :func:`bastion.load` first, so a file that fails its checks stops
    everything before any other work; then :func:`guard_stages` builds the guard around it.

    Args:
        audit_log: the audit log's SQLite path or PostgreSQL URL; None for none (tests).
        audit_sync: SQLite's durability: ``normal`` (acknowledged requests survive the server
            being killed) or ``full`` (they survive power loss too; an fsync per commit).
        alerts: fed every monitor update (see :class:`Pipeline`); None for no alerting.

    Raises:
        IntegrityError, SignatureError, UnsafeArtifactError: the weights failed a check.
        ConfigurationError: bad options or files.
    """
    spec = ModelSpec.parse(model)
    invalid = InvalidDataPolicy.parse(policy)
    if audit_sync.upper() not in SYNCHRONOUS:  # before any work: a typo must not cost a load
        raise ConfigurationError(
            f"--audit-sync must be normal or full (full adds an fsync per commit to survive "
            f"power loss), got {audit_sync!r}"
        )
    net = load_model(spec, weights=weights, signature=signature, public_keys=public_keys,
                     sha256=sha256, policy=load_policy, cache_dir=cache_dir)
    stages = guard_stages(net, spec, schema=schema, reference=reference, policy=invalid)
    return Pipeline(
        model=net,
        schema=stages.schema,
        guard=stages.guard,
        output_checker=stages.output_checker,
        monitors=stages.monitors,
        audit=None if audit_log is None else _stages.open_audit_log(audit_log, audit_sync),
        name=spec.factory or "demo",
        alerts=alerts,
    )
