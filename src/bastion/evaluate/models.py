"""Resolve the MODEL argument of ``bastion evaluate`` into an ``nn.Module``.

* ``demo``: the bundled, cached DemoCNN;
* ``package.module:factory`` with optional weights: the factory is imported and called with no
  arguments (importing it runs that package's code, as ``import`` always does: name only code
  you trust); weights are read ONLY through :func:`bastion.load` (verified, scanned, restricted
  unpickler) and loaded strictly into the factory's model;
* a ``torch.export`` program (``.pt2``): ``torch.export.load`` unpickles parts of such archives,
  so the bytes are read once, verified when asked, scanned, and loaded only when the scan says
  ``safe``; the bytes that were scanned are the bytes that are loaded.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from bastion.artifacts.scan.policy import DEFAULT_POLICY, Policy
from bastion.core.errors import ConfigurationError, UnsafeArtifactError
from bastion.zoo.factory import build_from_factory

__all__ = ["ModelSource", "resolve_model"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSource:
    """Where a model's bytes come from and how to check them."""

    spec: str
    weights: Path | None = None
    signature: Path | None = None
    public_keys: Path | Sequence[Path] | None = None
    sha256: str | None = None
    policy: Policy = DEFAULT_POLICY


def resolve_model(source: ModelSource) -> nn.Module:
    """The model ``source.spec`` names, in eval mode.

    Raises:
        ConfigurationError: the spec is malformed, the module or factory is missing, or the
            weights do not fit the model.
        UnsafeArtifactError, IntegrityError, SignatureError: the weights or ``.pt2`` file
            failed verification or the scan.

    Example:
        >>> resolve_model(ModelSource(spec="torch.nn:Identity")).training
        False
    """
    spec = source.spec.strip()
    if spec == "demo":
        if source.weights is not None:
            raise ConfigurationError("--weights does not apply to the demo model")
        from bastion.zoo import demo_model

        return demo_model().eval()
    if spec.endswith(".pt2"):
        if source.weights is not None:
            raise ConfigurationError("--weights does not apply to a .pt2 program (it has them)")
        return _load_pt2(Path(spec), source)
    if ":" in spec:
        model = build_from_factory(spec)
        if source.weights is not None:
            _load_weights(model, source)
        elif source.signature is not None or source.sha256 is not None:
            raise ConfigurationError("--signature/--sha256 check --weights: give --weights FILE")
        return model.eval()
    raise ConfigurationError(
        f"--model {spec!r}: use 'demo', 'package.module:factory' (with --weights FILE) or a "
        "torch.export program ending in .pt2"
    )


def _load_weights(model: nn.Module, source: ModelSource) -> None:
    from bastion.artifacts.load import load

    assert source.weights is not None
    state: Any = load(source.weights, signature=source.signature,
                      public_keys=source.public_keys, sha256=source.sha256, policy=source.policy)
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ConfigurationError(
            f"--weights {source.weights}: expected a state dict, got {type(state).__name__}"
        )
    try:
        model.load_state_dict(dict(state), strict=True)
    except (RuntimeError, TypeError) as exc:
        raise ConfigurationError(
            f"--weights {source.weights} do not fit the model: {str(exc).splitlines()[0]}"
        ) from None


def _load_pt2(path: Path, source: ModelSource) -> nn.Module:
    import torch

    from bastion.artifacts.load import read_verified
    from bastion.artifacts.scan import ScanLimits, Verdict, scan_bytes

    if not path.is_file():
        raise ConfigurationError(f"--model {path}: no such file")
    data = read_verified(path, signature=source.signature, public_keys=source.public_keys,
                         sha256=source.sha256)
    report = scan_bytes(data, path=str(path), policy=source.policy, limits=ScanLimits())
    if report.verdict is not Verdict.SAFE:
        problems = "; ".join(f"{f.kind}: {f.detail}" for f in report.problems[:3])
        raise UnsafeArtifactError(
            f"{path}: scan verdict is {report.verdict.value}; refusing to load the program "
            f"({problems})",
            path=path,
            findings=report.problems,
        )
    try:
        program = torch.export.load(io.BytesIO(data))
    except Exception as exc:  # a malformed archive: a message, not a traceback
        raise ConfigurationError(
            f"--model {path}: not a loadable torch.export program ({type(exc).__name__}: {exc})"
        ) from None
    return _Exported(program.module())


class _Exported(nn.Module):
    """An exported program as a plain module: its graph is fixed (the mode it was exported in),
    and exported modules refuse ``eval()``, so it is held without being registered as a child."""

    def __init__(self, program_module: Any) -> None:
        super().__init__()
        object.__setattr__(self, "_program", program_module)
        self.eval()

    def forward(self, x: Any) -> Any:
        program: Any = self._program
        return program(x)
