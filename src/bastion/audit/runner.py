"""``bastion audit``: one report on whether a model is safe to ship.

With no model given it audits the bundled demo end to end: the demo CNN is trained (or reused
from the cache), saved both as a pickle checkpoint and as safetensors, each file is signed with
a fresh key pair and verified, scanned and loaded back safely. Later capabilities (robustness,
backdoors, runtime guard) add their own sections to the same report.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bastion._version import __version__
from bastion.artifacts.scan.policy import DEFAULT_POLICY, Policy
from bastion.audit.model_file import CheckStatus, ModelFileSection, audit_model_file
from bastion.core.errors import ConfigurationError
from bastion.core.results import Result

if TYPE_CHECKING:
    from torch import nn

__all__ = ["AuditReport", "prepare_demo", "run_audit"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditReport(Result):
    """The whole audit: what was audited, when, by which version, and one entry per section."""

    subject: str
    created: str
    bastion_version: str
    sections: tuple[Any, ...]  # ModelFileSection, Robustness, RuntimeGuard, Hardening
    model_info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def status(self) -> CheckStatus:
        return CheckStatus.worst([s.status for s in self.sections])

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["status"] = self.status.value
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoArtifacts:
    """The files ``prepare_demo`` wrote."""

    files: tuple[Path, ...]
    signatures: tuple[Path, ...]
    public_key: Path
    info: dict[str, Any]


def prepare_demo(workdir: Path, *, cache_dir: Path | None = None) -> DemoArtifacts:
    """Train or reuse the demo CNN; save it as ``model.pt`` and ``model.safetensors``; sign both."""
    import torch
    from safetensors.torch import save

    from bastion.artifacts.keys import generate_keypair
    from bastion.artifacts.sign import sign
    from bastion.core.atomic import atomic_open, atomic_write_bytes
    from bastion.zoo import demo_info, demo_model

    workdir.mkdir(parents=True, exist_ok=True)
    model = demo_model(cache_dir=cache_dir)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    pickle_path = workdir / "model.pt"
    with atomic_open(pickle_path) as handle:
        torch.save(state, handle)
    tensors_path = workdir / "model.safetensors"
    atomic_write_bytes(tensors_path, save(state, metadata={"source": "bastion demo"}))
    keys = generate_keypair(workdir / "keys" / "demo.pem", overwrite=True)
    signatures = tuple(
        sign(path, keys.private_key, signature=path.with_name(path.name + ".sig"))
        for path in (pickle_path, tensors_path)
    )
    return DemoArtifacts(
        files=(pickle_path, tensors_path),
        signatures=signatures,
        public_key=keys.public_key,
        info=demo_info(cache_dir=cache_dir).to_dict(),
    )


def run_audit(
    model: str | Path | None = None,
    *,
    signature: str | Path | None = None,
    public_keys: str | Path | Sequence[str | Path] | None = None,
    sha256: str | None = None,
    policy: Policy | None = None,
    workdir: str | Path = "audit",
    cache_dir: Path | None = None,
    robustness_samples: int = 0,
    runtime_guard: bool = True,
    hardened: str | Path | None = None,
    baseline: str | Path | None = None,
    architecture: str = "demo",
    hardening_samples: int = 100,
    hardening_data: str = "mnist5k",
) -> AuditReport:
    """Audit ``model`` (a file), or the bundled demo when ``model`` is None.

    Args:
        model: the model file to audit; ``None`` for the demo.
        signature: its OMS signature (with ``public_keys``); unsigned files get a warning.
        public_keys: trusted public key file(s) or a directory of them.
        sha256: expected digest, from a source you trust.
        policy: import allowlist for the scan and the trial load.
        workdir: where the demo's files are written (the report goes beside them).
        cache_dir: where the demo model's weights are cached.
        robustness_samples: with the demo, add a "Robustness" section evaluated on this many
            MNIST test samples (0: no section); see :func:`robustness_section`.
        runtime_guard: with the demo, add the "Runtime guard" section (what ``bastion serve``
            would run, measured; a few seconds; on by default); see
            :func:`~bastion.audit.runtime_guard.runtime_guard_section`.
        hardened: weights of a hardened model (safetensors or any file ``bastion.load``
            reads), or the output directory of ``bastion train`` / ``bastion harden``: adds the
            "Hardening" section, the hardened model against ``baseline`` under one evaluation.
        baseline: the baseline's weights; default: the bundled demo model (with the ``demo``
            architecture only).
        architecture: ``demo`` (DemoCNN) or ``package.module:factory`` for both models.
        hardening_samples: test samples of the Hardening section's evaluation.
        hardening_data: the dataset it evaluates on (``mnist5k``, ``digits`` or an .npz).
    """
    hardening = _hardening(hardened, baseline, architecture, hardening_samples, hardening_data,
                           policy, cache_dir)
    policy = policy or DEFAULT_POLICY
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    if model is None:
        if signature is not None or public_keys is not None or sha256 is not None:
            raise ConfigurationError("--signature, --key and --sha256 need --model")
        demo = prepare_demo(Path(workdir) / "demo", cache_dir=cache_dir)
        files = tuple(
            audit_model_file(path, policy=policy, signature=sig, public_keys=demo.public_key)
            for path, sig in zip(demo.files, demo.signatures, strict=True)
        )
        subject, info = "bundled demo (DemoCNN on MNIST 5k)", demo.info
    else:
        path = Path(model)
        if not path.is_file():
            raise ConfigurationError(f"--model {path}: no such file")
        files = (
            audit_model_file(
                path, policy=policy, signature=signature, public_keys=public_keys, sha256=sha256
            ),
        )
        subject, info = str(path), {}
    section = ModelFileSection(files=files, advice=tuple(_advice(files)))
    sections: tuple[Any, ...] = (section,)
    if model is None and robustness_samples > 0:
        sections += (robustness_section(robustness_samples, cache_dir=cache_dir),)
    if model is None and runtime_guard:
        from bastion.audit.runtime_guard import runtime_guard_section

        sections += (runtime_guard_section(cache_dir=cache_dir),)
    if hardening is not None:
        sections += (hardening(),)
    return AuditReport(
        subject=subject,
        created=created,
        bastion_version=__version__,
        sections=sections,
        model_info=info,
    )


def robustness_section(samples: int, *, cache_dir: Path | None = None) -> Any:
    """The demo CNN on the first ``samples`` MNIST 5k test samples, Linf eps 0.1/0.2/0.3, with the
    sanity checks and a bounded ensemble (APGD-CE 100, APGD-T 3 targets x 50, Square 1,000) so
    the audit stays within about a minute on 2 CPU cores; ``bastion evaluate`` runs the full one."""
    from bastion.attacks import APGD, APGDT, Square
    from bastion.core.threat import Norm, ThreatModel
    from bastion.data import load_dataset
    from bastion.evaluate import RobustnessSection, robustness
    from bastion.zoo import demo_model

    splits = load_dataset("mnist5k")
    result = robustness(
        demo_model(cache_dir=cache_dir), (splits.x_test, splits.y_test),
        ThreatModel(norm=Norm.LINF, eps=0.3, bounds=splits.bounds),
        [lambda t: APGD(threat=t, steps=100, label="apgd-ce"),
         lambda t: APGDT(t, targets=3, steps=50), lambda t: Square(threat=t, queries=1000)],
        eps=[0.1, 0.2, 0.3],
        limit=samples, sanity_samples=min(samples, 100), name="demo CNN", progress=False,
    )
    advice = ["Harden the model (adversarial training) before relying on it under attack."]
    if result.gradient_masking_suspected:
        advice.insert(0, "A sanity check failed: the robust accuracy may be inflated by "
                      "gradient masking; evaluate with adaptive attacks (EOT, BPDA, logits).")
    return RobustnessSection(result=result, advice=tuple(advice))


def _hardening(
    hardened: str | Path | None, baseline: str | Path | None, architecture: str, samples: int,
    data: str, policy: Policy | None, cache_dir: Path | None,
) -> Any:
    """Check the Hardening section's inputs before any work; return a thunk that builds it."""
    if hardened is None:
        if baseline is not None:
            raise ConfigurationError("--baseline needs --hardened (the model to compare with it)")
        return None
    from bastion.audit.hardening import hardening_section, load_weights_into, resolve_hardened
    from bastion.zoo.factory import build_from_factory

    weights, record = resolve_hardened(Path(hardened))
    if baseline is None and architecture != "demo":
        raise ConfigurationError("--baseline is required unless the architecture is the demo's")
    if baseline is not None and not Path(baseline).is_file():
        raise ConfigurationError(f"--baseline {baseline}: no such file")

    def build() -> nn.Module:
        if architecture == "demo":
            from bastion.zoo import DemoCNN

            return DemoCNN()
        return build_from_factory(architecture)

    def section() -> Any:
        hard = load_weights_into(build(), weights, policy)
        base: nn.Module
        if baseline is None:
            from bastion.zoo import demo_model

            base = demo_model(cache_dir=cache_dir).eval()
        else:
            base = load_weights_into(build(), Path(baseline), policy)
        return hardening_section(hard, base, samples=samples, data=data, training=record,
                                 eps=_record_eps(record))

    return section


def _record_eps(record: dict[str, Any] | None) -> tuple[float, ...]:
    """The curve for a Hardening section: up to the training eps when the record names one
    (a model is judged at the radius it was hardened for), else 0.1, 0.2, 0.3."""
    threat = (record or {}).get("threat")
    eps = threat.get("eps") if isinstance(threat, dict) else None
    if isinstance(eps, (int, float)) and not isinstance(eps, bool) and 0 < eps < float("inf"):
        return (eps / 3, 2 * eps / 3, float(eps))
    return (0.1, 0.2, 0.3)


def _advice(files: Sequence[Any]) -> list[str]:
    advice: list[str] = []
    if any(f.format not in {"safetensors"} for f in files):
        advice.append(
            "Ship safetensors: it holds no code, so loading it needs no unpickler at all "
            "(`bastion convert model.pt model.safetensors`)."
        )
    if any(c.name == "signature" and c.status is CheckStatus.WARN for f in files for c in f.checks):
        advice.append("Sign release files (`bastion sign`) and verify them before every load.")
    if any(f.verdict == "unknown" for f in files):
        advice.append(
            "Unknown imports: if the classes are yours, allow them with --allow MODULE.NAME; "
            "otherwise convert with `bastion convert --isolated`."
        )
    if any(f.verdict == "unsafe" for f in files):
        advice.append("Do not load this file: it can run code. Obtain the model from its source.")
    return advice
