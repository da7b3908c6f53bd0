"""`bastion keygen`, `bastion sign`, `bastion verify`: OpenSSF Model Signing with EC keys.

Each command maps its options onto :mod:`bastion.artifacts.keys`, :mod:`~bastion.artifacts.sign`
and :mod:`~bastion.artifacts.verify`; errors propagate to ``bastion.cli.main.main``, which turns
them into exit codes (0 verified, 1 refused, 2 usage error).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from bastion.cli._common import is_json_with, refuse_clobber, shown
from bastion.core.errors import ConfigurationError

_out = Console(highlight=False, soft_wrap=True, markup=False)

_SIGNATURE_HELP = "Default: FILE.sig beside a file, DIR/model.sig inside a directory."


def keygen(
    private_key: Annotated[
        Path, typer.Argument(metavar="PRIVATE.pem", help="Where to write the private key (0600).")
    ],
    public_key: Annotated[
        Path | None,
        typer.Option(
            "--public",
            metavar="PUBLIC.pem",
            help="Where to write the public key (0644). Default: PRIVATE's stem + .pub.pem.",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing key files.")] = False,
) -> None:
    """Write a P-256 signing key pair for `bastion sign` and `model_signing`.

    Example: bastion keygen keys/signing.pem   (writes keys/signing.pem and keys/signing.pub.pem)
    """
    from bastion.artifacts.keys import generate_keypair

    pair = generate_keypair(private_key, public_key, overwrite=force)
    _out.print(f"private key: {shown(pair.private_key)} (keep secret)")
    _out.print(f"public key:  {shown(pair.public_key)} (share with verifiers)")


def sign(
    path: Annotated[Path, typer.Argument(metavar="PATH", help="Model file or directory to sign.")],
    key: Annotated[
        Path,
        typer.Option(
            "--key", "-k", metavar="PRIVATE.pem", help="EC private key (from `bastion keygen`)."
        ),
    ],
    signature: Annotated[
        Path | None,
        typer.Option(
            "--signature", "-s", metavar="OUT", help=f"Signature file to write. {_SIGNATURE_HELP}"
        ),
    ] = None,
) -> None:
    """Sign a model file or directory (OpenSSF Model Signing format).

    Example: bastion sign model/ --key keys/signing.pem   (writes model/model.sig)
    """
    from bastion.artifacts.sign import default_signature_path
    from bastion.artifacts.sign import sign as sign_model  # model_signing loads slowly: lazily

    target = default_signature_path(path) if signature is None else signature
    refuse_clobber(target, "-s", [("model", path), ("private key", key)],
                   replaceable=_is_signature)
    if target.exists() and not _is_signature(target):
        raise ConfigurationError(
            f"-s {shown(target)} exists and is not a signature bundle; refusing to overwrite it "
            "(delete it first, or choose another path)"
        )
    out = sign_model(path, key, signature=signature)
    _out.print(f"signed {shown(path)} -> {shown(out)}")


def _is_signature(path: Path) -> bool:
    """An earlier signature (a Sigstore bundle, which ``sign`` writes) may be replaced."""
    return is_json_with(path, "mediaType", "application/vnd.dev.sigstore.bundle")


def verify(
    path: Annotated[
        Path, typer.Argument(metavar="PATH", help="Model file or directory to verify.")
    ],
    key: Annotated[
        Path,
        typer.Option(
            "--key",
            "-k",
            metavar="PUBLIC.pem|KEYDIR",
            help="Trusted public key, or a directory of trusted public keys (*.pem, *.pub); "
            "any one of them may have signed.",
        ),
    ],
    signature: Annotated[
        Path | None,
        typer.Option("--signature", "-s", metavar="SIG", help=f"Signature file. {_SIGNATURE_HELP}"),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the verification result as JSON.")
    ] = False,
) -> None:
    """Verify a model against its signature: exit 0 verified, 1 refused, 2 usage error.

    Example: bastion verify model/ --key trusted-keys/
    """
    from bastion.artifacts.sign import default_signature_path
    from bastion.artifacts.verify import verify as verify_model

    sig = default_signature_path(path) if signature is None else signature
    result = verify_model(path, signature=sig, public_keys=key)
    if json_output:
        typer.echo(result.to_json())
        return
    _out.print(
        f"verified {shown(result.path)}: {len(result.files)} file(s) match "
        f"{shown(result.signature)}, signed by {shown(result.key)}"
    )
