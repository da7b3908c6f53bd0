"""Sign a model file or directory in the OpenSSF Model Signing (OMS) format.

The signature is a Sigstore bundle made by the ``model_signing`` package with an elliptic-curve
key, so ``model_signing verify key MODEL --signature SIG --public_key PUB`` accepts what bastion
signs and :func:`bastion.artifacts.verify.verify` accepts what ``model_signing`` signs.

Default signature locations (``model_signing``'s own CLI writes ``model.sig`` into the current
directory, which silently mixes signatures of different models):

* a file ``weights.pt`` -> ``weights.pt.sig`` beside it;
* a directory ``model/`` -> ``model/model.sig`` inside it, where it travels with the model, the
  name the OMS documentation uses.

A signature inside the model directory is recorded as an ignored path, as are git files
(``.git``, ``.gitattributes``, ``.github``, ``.gitignore``); verifiers re-apply both. Symlinks
inside a model are refused, as ``model_signing`` does by default.
"""

from __future__ import annotations

from pathlib import Path

from bastion.artifacts import _oms
from bastion.artifacts.keys import load_private_key
from bastion.core.atomic import atomic_write_bytes
from bastion.core.errors import ConfigurationError

__all__ = ["default_signature_path", "sign"]

#: Name of the signature inside a signed model directory.
DIRECTORY_SIGNATURE_NAME = "model.sig"


def default_signature_path(model: str | Path) -> Path:
    """Where :func:`sign` writes the signature when none is given.

    Example:
        >>> default_signature_path("weights.pt").as_posix()
        'weights.pt.sig'
    """
    path = Path(model)
    if path.is_dir():
        return path / DIRECTORY_SIGNATURE_NAME
    return path.with_name(path.name + ".sig")


def sign(path: str | Path, private_key: str | Path, *, signature: str | Path | None = None) -> Path:
    """Sign a model file or directory with an elliptic-curve private key.

    Every file's SHA-256 is recorded (file serialization, ``model_signing``'s default) in an
    in-toto statement, signed inside a Sigstore bundle that is written atomically.

    Args:
        path: the model file or directory.
        private_key: PEM private key from :func:`bastion.artifacts.keys.generate_keypair`.
        signature: where to write the bundle; default :func:`default_signature_path`.

    Returns:
        The path of the signature written.

    Raises:
        ConfigurationError: the model or key is missing or unusable, the model contains a
            symlink, or the signature would overwrite the model itself.

    Example:
        >>> import os, tempfile
        >>> from bastion.artifacts.keys import generate_keypair
        >>> d = tempfile.mkdtemp()
        >>> keys = generate_keypair(os.path.join(d, "k.pem"))
        >>> _ = open(os.path.join(d, "w.bin"), "wb").write(b"weights")
        >>> sign(os.path.join(d, "w.bin"), keys.private_key).name
        'w.bin.sig'
    """
    model = Path(path)
    if model.is_symlink():
        raise ConfigurationError(f"refusing to sign a symlink: {model} (sign its target)")
    if not model.exists():
        raise ConfigurationError(f"model not found: {model}")
    if not (model.is_file() or model.is_dir()):
        raise ConfigurationError(f"not a regular file or directory: {model}")
    load_private_key(private_key)  # clear errors before model_signing sees the key
    out = default_signature_path(model) if signature is None else Path(signature)
    if out.is_dir() or (out.exists() and out.resolve() == model.resolve()):
        raise ConfigurationError(f"the signature path is a directory or the model itself: {out}")
    ignore: list[str] = []
    if model.is_dir():
        inside = _oms.relative_inside(model, out)
        if inside is not None:
            ignore.append(inside)
    bundle = _oms.sign_to_bytes(model, Path(private_key), ignore)
    atomic_write_bytes(out, bundle, 0o644)
    return out
