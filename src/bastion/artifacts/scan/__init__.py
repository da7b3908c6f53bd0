"""Scan model files for pickled code before anything loads them.

Every container is walked (torch zip and legacy formats, joblib, .npy/.npz, .pt2, nested
archives, plain pickles of protocols 0-5, safetensors headers), every import a pickle makes is
resolved without unpickling, and judged by an allowlist :class:`Policy`.

>>> from bastion.artifacts.scan import scan_bytes
>>> scan_bytes(b"\\x80\\x04\\x8c\\x02os\\x8c\\x06system\\x93.").verdict.value
'unsafe'
"""

from bastion.artifacts.scan.api import scan_bytes, scan_file, scan_paths
from bastion.artifacts.scan.findings import FileReport, Finding, ScanReport, Severity, Verdict
from bastion.artifacts.scan.formats import sniff_format
from bastion.artifacts.scan.limits import ScanLimits
from bastion.artifacts.scan.policy import DEFAULT_POLICY, ImportClass, Policy, load_policy
from bastion.artifacts.scan.sarif import render_sarif, render_text

__all__ = [
    "DEFAULT_POLICY",
    "FileReport",
    "Finding",
    "ImportClass",
    "Policy",
    "ScanLimits",
    "ScanReport",
    "Severity",
    "Verdict",
    "load_policy",
    "render_sarif",
    "render_text",
    "scan_bytes",
    "scan_file",
    "scan_paths",
    "sniff_format",
]
