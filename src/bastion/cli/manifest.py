"""`bastion manifest`: record or check the SHA-256 of every file of a dataset.

Maps options onto :mod:`bastion.artifacts.manifest`; exit 0 match, 1 mismatch (the files are
named), 2 usage error (through ``bastion.cli.main.main``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from bastion.artifacts.manifest import MANIFEST_KIND, create_manifest, verify_manifest
from bastion.cli._common import is_json_with, refuse_clobber, shown
from bastion.core.errors import ConfigurationError

_out = Console(highlight=False, soft_wrap=True, markup=False)


def manifest(
    directory: Annotated[
        Path | None, typer.Argument(metavar="DIR", help="Dataset directory to record (with -o).")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", metavar="FILE", help="Where to write the JSON manifest."),
    ] = None,
    check: Annotated[
        Path | None,
        typer.Option(
            "--check", metavar="FILE", help="Check a directory against this manifest instead."
        ),
    ] = None,
    root: Annotated[
        Path | None,
        typer.Option(
            "--root",
            metavar="DIR",
            help="With --check: the directory to check (default: the root recorded in FILE).",
        ),
    ] = None,
) -> None:
    """Record or check dataset digests (symlinks and special files are refused).

    Examples: bastion manifest data/ -o data.manifest.json
              bastion manifest --check data.manifest.json --root data/
    """
    if check is not None:
        if directory is not None or output is not None:
            raise ConfigurationError("--check takes no DIR or -o; use --root to choose the DIR")
        result = verify_manifest(check, root)
        _out.print("\n".join(shown(line) for line in result.describe().split("\n")))
        return
    if root is not None:
        raise ConfigurationError("--root is only used with --check")
    if directory is None or output is None:
        raise ConfigurationError("give DIR and -o FILE to record, or --check FILE to check")
    refuse_clobber(output, "-o", [("dataset directory", directory)],
                   replaceable=lambda p: is_json_with(p, "kind", MANIFEST_KIND))
    made = create_manifest(directory, output)
    total = sum(f.size for f in made.files)
    _out.print(
        f"recorded {len(made.files)} files ({total} bytes) of {shown(made.root)} in {shown(output)}"
    )
