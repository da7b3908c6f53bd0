"""The one seam between bastion and the ``model_signing`` package (OpenSSF Model Signing).

Signing goes through ``model_signing``'s public API. Verification needs one step that API does
not expose on its own: checking the bundle's signature *without* re-hashing the model, so that
the safe loader can check bytes it already holds in memory. For that step this module uses
``model_signing._signing.sign_ec_key.Verifier`` and ``sign_sigstore_pb.Signature`` — the same
classes ``model_signing.verifying.Config.use_elliptic_key_verifier`` uses — and nothing else
private. Every exception from ``model_signing``, protobuf or json is turned into a bastion error
here, so no caller ever sees a raw traceback from them.
"""

from __future__ import annotations

import contextlib
import io
import pathlib
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from model_signing import hashing, signing
from model_signing import manifest as ms_manifest
from model_signing._signing import sign_ec_key, sign_sigstore_pb

from bastion.core.errors import ConfigurationError, IntegrityError, SignatureError
from bastion.core.progress import task_progress

__all__ = [
    "hash_model",
    "read_bundle",
    "relative_inside",
    "sign_to_bytes",
    "verify_bundle",
]


def relative_inside(root: Path, path: Path) -> str | None:
    """``path`` relative to directory ``root`` (POSIX), or None when it lies outside it."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None


def sign_to_bytes(model: Path, private_key: Path, ignore: Iterable[str]) -> bytes:
    """Sign ``model`` with the EC key and return the bundle JSON (written nowhere else).

    ``model_signing`` writes its signature with a plain ``write_text``; bastion lets it write into
    a private temporary directory and then writes the result atomically itself.
    Git files are ignored as ``model_signing``'s own CLI does; ``ignore`` adds paths relative
    to the model directory (the signature file when it lies inside the model).
    """
    config = (
        signing.Config()  # type: ignore[no-untyped-call]
        .use_elliptic_key_signer(private_key=private_key)
        .set_hashing_config(
            hashing.Config().set_ignored_paths(  # type: ignore[no-untyped-call]
                paths=list(ignore), ignore_git_paths=True
            )
        )
    )
    with tempfile.TemporaryDirectory(prefix="bastion-sign-") as tmp:
        out = Path(tmp) / "model.sig"
        try:
            with task_progress(f"hashing {model.name}", None):
                config.sign(model, out)
        except ValueError as exc:  # symlinks, unreadable layout
            raise ConfigurationError(f"cannot sign {model}: {exc}") from None
        return out.read_bytes()


def read_bundle(signature: Path) -> sign_sigstore_pb.Signature:
    """Parse a signature file as a Sigstore bundle (no cryptographic check yet).

    Raises:
        ConfigurationError: the file does not exist.
        SignatureError: the file is not a readable Sigstore bundle (corrupt, truncated, other).
    """
    if not signature.is_file():
        raise ConfigurationError(f"signature file not found: {signature}")
    try:
        return sign_sigstore_pb.Signature.read(pathlib.Path(signature))
    except Exception as exc:  # noqa: BLE001 - json, pydantic, KeyError, UnicodeError, ...
        raise SignatureError(
            f"{signature}: not a valid OpenSSF Model Signing bundle (corrupted or truncated?): "
            f"{type(exc).__name__}: {_short(exc)}",
            path=signature,
        ) from None


def verify_bundle(bundle: sign_sigstore_pb.Signature, key_file: Path) -> ms_manifest.Manifest:
    """Check the bundle's signature with one public key and return the signed manifest.

    Raises:
        SignatureError: with a reason: another key signed it, the signature does not match its
            content, or the signed payload is not a model-signing statement.
    """
    verifier = sign_ec_key.Verifier(pathlib.Path(key_file))
    try:
        # model_signing prints a warning on stdout for pre-1.0 bundles; keep stdout clean.
        with contextlib.redirect_stdout(io.StringIO()):
            return verifier.verify(bundle)
    except InvalidSignature:
        raise SignatureError(
            f"signature does not match the signed content for key {key_file.name} "
            "(the signature file was altered)"
        ) from None
    except ValueError as exc:
        if str(exc).startswith("Key mismatch"):
            raise SignatureError(f"signed by another key than {key_file.name}") from None
        raise SignatureError(f"invalid signed payload: {_short(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - malformed envelope or statement
        raise SignatureError(
            f"malformed bundle content: {type(exc).__name__}: {_short(exc)}"
        ) from None


def hash_model(model: Path, settings: Mapping[str, Any], ignore: Iterable[str]) -> dict[str, str]:
    """Hash ``model`` now with the settings recorded in a signature; identifier -> hex digest.

    Only the ignore paths recorded by the signer (plus ``ignore``) are skipped: the verifier
    re-applies what was signed rather than its own defaults.

    Raises:
        SignatureError: the recorded settings are not ones ``model_signing`` knows.
        IntegrityError: the model cannot be hashed as signed (e.g. a symlink appeared).
    """
    try:
        method = settings["method"]
        algorithm = settings["hash_type"]
        symlinks = bool(settings["allow_symlinks"])
        ignored = [*map(str, settings.get("ignore_paths", ())), *ignore]
        config = hashing.Config()  # type: ignore[no-untyped-call]
        if method == "files":
            config.use_file_serialization(hashing_algorithm=algorithm, allow_symlinks=symlinks)
        elif method == "shards":
            config.use_shard_serialization(
                hashing_algorithm=algorithm,
                shard_size=int(settings["shard_size"]),
                allow_symlinks=symlinks,
            )
        else:
            raise ValueError(f"unknown serialization method {method!r}")
        config.set_ignored_paths(paths=ignored, ignore_git_paths=False)
        config.set_allow_symlinks(symlinks)
    except (KeyError, TypeError, ValueError) as exc:
        raise SignatureError(f"unsupported hashing settings in signature: {_short(exc)}") from None
    try:
        with task_progress(f"hashing {model.name}", None):
            actual = config.hash(model)
    except (ValueError, OSError) as exc:  # a symlink where none was signed, a vanished file
        raise IntegrityError(f"{model}: {exc}", path=model) from None
    return {rd.identifier: rd.digest.digest_hex for rd in actual.resource_descriptors()}


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
