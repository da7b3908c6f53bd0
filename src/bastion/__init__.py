"""bastion: secure PyTorch models across their life.

Model files (scan, sign, verify, safe load), the data they learn from, the inputs they answer
and the attacks they must withstand, in one library and one command-line tool.
"""

from bastion._version import __version__
from bastion.core.errors import (
    ArtifactError,
    BastionError,
    ConfigurationError,
    InputValidationError,
    IntegrityError,
    SignatureError,
    UnsafeArtifactError,
)

__all__ = [
    "ArtifactError",
    "BastionError",
    "ConfigurationError",
    "InputValidationError",
    "IntegrityError",
    "SignatureError",
    "UnsafeArtifactError",
    "__version__",
]
