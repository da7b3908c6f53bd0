"""bastion: secure PyTorch models across their life.

Model files (scan, sign, verify, safe load), the data they learn from, the inputs they answer
and the attacks they must withstand, in one library and one command-line tool.

>>> import bastion
>>> bastion.ThreatModel(norm="linf", eps=0.3).describe()
'linf eps=0.3 bounds=[0, 1]'
"""

import importlib as _importlib
import typing as _typing

from bastion._version import __version__

if _typing.TYPE_CHECKING:  # the names, for type checkers and IDEs; imported lazily at run time
    from bastion.artifacts.convert import ConversionResult, convert
    from bastion.artifacts.keys import KeyPair, generate_keypair
    from bastion.artifacts.load import load
    from bastion.artifacts.manifest import (
        DatasetManifest,
        ManifestCheck,
        check_manifest,
        create_manifest,
        verify_manifest,
    )
    from bastion.artifacts.scan import (
        DEFAULT_POLICY,
        FileReport,
        Finding,
        Policy,
        ScanReport,
        Severity,
        Verdict,
        load_policy,
        scan_bytes,
        scan_file,
        scan_paths,
    )
    from bastion.artifacts.sign import sign
    from bastion.artifacts.verify import VerificationResult, verify
    from bastion.audit import AuditReport, run_audit
    from bastion.core.errors import (
        ArtifactError,
        BastionError,
        ConfigurationError,
        InputValidationError,
        IntegrityError,
        SignatureError,
        UnsafeArtifactError,
    )
    from bastion.core.threat import Norm, ThreatModel
    from bastion.data import DatasetSplits, load_dataset, load_npz
    from bastion.evaluate import RobustnessResult, SanityCheck, compare, robustness  # type: ignore[no-redef]
    from bastion.guard import (
        AuditLog,
        InputGuard,
        MonitorSuite,
        OutputChecker,
        TensorSchema,
        sanitize_text,
    )
    from bastion.zoo import DemoCNN, demo_info, demo_model, demo_model_path

    scan = scan_paths

# Importing bastion stays cheap (no torch) until a name that needs torch is used, so that
# `bastion scan` and `bastion verify` start in a fraction of a second.
_LAZY: dict[str, str] = {
    "ArtifactError": "bastion.core.errors",
    "AuditReport": "bastion.audit",
    "BastionError": "bastion.core.errors",
    "ConfigurationError": "bastion.core.errors",
    "ConversionResult": "bastion.artifacts.convert",
    "DEFAULT_POLICY": "bastion.artifacts.scan",
    "DatasetManifest": "bastion.artifacts.manifest",
    "DatasetSplits": "bastion.data",
    "DemoCNN": "bastion.zoo",
    "FileReport": "bastion.artifacts.scan",
    "Finding": "bastion.artifacts.scan",
    "InputValidationError": "bastion.core.errors",
    "IntegrityError": "bastion.core.errors",
    "KeyPair": "bastion.artifacts.keys",
    "ManifestCheck": "bastion.artifacts.manifest",
    "Norm": "bastion.core.threat",
    "Policy": "bastion.artifacts.scan",
    "ScanReport": "bastion.artifacts.scan",
    "Severity": "bastion.artifacts.scan",
    "SignatureError": "bastion.core.errors",
    "ThreatModel": "bastion.core.threat",
    "UnsafeArtifactError": "bastion.core.errors",
    "Verdict": "bastion.artifacts.scan",
    "VerificationResult": "bastion.artifacts.verify",
    "check_manifest": "bastion.artifacts.manifest",
    "convert": "bastion.artifacts.convert",
    "create_manifest": "bastion.artifacts.manifest",
    "demo_info": "bastion.zoo",
    "demo_model": "bastion.zoo",
    "demo_model_path": "bastion.zoo",
    "generate_keypair": "bastion.artifacts.keys",
    "load": "bastion.artifacts.load",
    "load_dataset": "bastion.data",
    "load_npz": "bastion.data",
    "load_policy": "bastion.artifacts.scan",
    "run_audit": "bastion.audit",
    "robustness": "bastion.evaluate",
    "RobustnessResult": "bastion.evaluate",
    "SanityCheck": "bastion.evaluate",
    "compare": "bastion.evaluate",
    "scan_bytes": "bastion.artifacts.scan",
    "scan_file": "bastion.artifacts.scan",
    "scan_paths": "bastion.artifacts.scan",
    "sign": "bastion.artifacts.sign",
    "verify": "bastion.artifacts.verify",
    "verify_manifest": "bastion.artifacts.manifest",
    "scan": "bastion.artifacts.scan.api",
    "AuditLog": "bastion.guard",
    "InputGuard": "bastion.guard",
    "MonitorSuite": "bastion.guard",
    "OutputChecker": "bastion.guard",
    "TensorSchema": "bastion.guard",
    "sanitize_text": "bastion.guard",
}


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bastion' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), "scan_paths" if name == "scan" else name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "ArtifactError",
    "AuditLog",
    "AuditReport",
    "BastionError",
    "ConfigurationError",
    "ConversionResult",
    "DEFAULT_POLICY",
    "DatasetManifest",
    "DatasetSplits",
    "DemoCNN",
    "FileReport",
    "Finding",
    "InputGuard",
    "InputValidationError",
    "IntegrityError",
    "KeyPair",
    "ManifestCheck",
    "MonitorSuite",
    "Norm",
    "OutputChecker",
    "Policy",
    "RobustnessResult",
    "SanityCheck",
    "ScanReport",
    "Severity",
    "SignatureError",
    "TensorSchema",
    "ThreatModel",
    "UnsafeArtifactError",
    "Verdict",
    "VerificationResult",
    "__version__",
    "check_manifest",
    "compare",
    "convert",
    "create_manifest",
    "demo_info",
    "demo_model",
    "demo_model_path",
    "generate_keypair",
    "load",
    "load_dataset",
    "load_npz",
    "load_policy",
    "robustness",
    "run_audit",
    "sanitize_text",
    "scan",
    "scan_bytes",
    "scan_file",
    "scan_paths",
    "sign",
    "verify",
    "verify_manifest",
]
