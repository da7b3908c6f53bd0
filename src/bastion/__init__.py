"""bastion: secure PyTorch models across their life.

Model files (scan, sign, verify, safe load), the data they learn from, the inputs they answer
and the attacks they must withstand, in one library and one command-line tool.

>>> import bastion
>>> bastion.ThreatModel(norm="linf", eps=0.3).describe()
'linf eps=0.3 bounds=[0, 1]'
"""

from bastion._version import __version__
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
from bastion.zoo import DemoCNN, demo_info, demo_model, demo_model_path

#: ``bastion.scan`` is the scanner of paths, like the ``bastion scan`` command.
scan = scan_paths

__all__ = [
    "DEFAULT_POLICY",
    "ArtifactError",
    "AuditReport",
    "BastionError",
    "ConfigurationError",
    "ConversionResult",
    "DatasetManifest",
    "DatasetSplits",
    "DemoCNN",
    "FileReport",
    "Finding",
    "InputValidationError",
    "IntegrityError",
    "KeyPair",
    "ManifestCheck",
    "Norm",
    "Policy",
    "ScanReport",
    "Severity",
    "SignatureError",
    "ThreatModel",
    "UnsafeArtifactError",
    "VerificationResult",
    "Verdict",
    "__version__",
    "check_manifest",
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
    "run_audit",
    "scan",
    "scan_bytes",
    "scan_file",
    "scan_paths",
    "sign",
    "verify",
    "verify_manifest",
]
