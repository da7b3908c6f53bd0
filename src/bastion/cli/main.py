"""The ``bastion`` command: one sub-command per job, each a thin layer over the public API.

Exit codes are shared by every command: 0 success (safe, verified), 1 a refusal (unsafe or
unknown file, failed verification), 2 a usage error (bad option, missing file).
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

from bastion._version import __version__
from bastion.cli import audit as _audit
from bastion.cli import convert as _convert
from bastion.cli import evaluate as _evaluate
from bastion.cli import manifest as _manifest
from bastion.cli import scan as _scan
from bastion.cli import serve as _serve
from bastion.cli import sign as _sign
from bastion.cli import train as _train
from bastion.core.errors import BastionError, ConfigurationError

app = typer.Typer(
    name="bastion",
    help="Secure PyTorch models: scan, sign and verify model files, load them safely, audit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.command("audit")(_audit.audit)
app.command("scan")(_scan.scan)
app.command("keygen")(_sign.keygen)
app.command("sign")(_sign.sign)
app.command("verify")(_sign.verify)
app.command("convert")(_convert.convert)
app.command("evaluate")(_evaluate.evaluate)
app.command("train")(_train.train)
app.command("distill")(_train.distill)
app.command("harden")(_train.harden)
app.command("manifest")(_manifest.manifest)
app.command("serve")(_serve.serve)
app.add_typer(_serve.apikey_app, name="apikey")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bastion {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Secure PyTorch models across their life."""


def main(argv: list[str] | None = None) -> None:
    """Console entry point: runs the app and turns bastion errors into messages and exit codes."""
    err = Console(stderr=True, soft_wrap=True)
    try:
        app(args=argv, prog_name="bastion", standalone_mode=True)
    except ConfigurationError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(2)
    except BastionError as exc:
        err.print(f"[bold red]refused:[/] {escape(str(exc))}", highlight=False)
        sys.exit(1)
    except MemoryError:  # numpy's _ArrayMemoryError too: a size the data declares, not a bug
        err.print("[bold red]error:[/] out of memory: the input needs more memory than this "
                  "machine can give (use a smaller file or a bigger machine)", highlight=False)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
