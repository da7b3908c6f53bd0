"""``bastion convert IN OUT.safetensors``: rewrite a pickle checkpoint as safetensors."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from bastion.cli._common import ALLOW_OPTION, POLICY_OPTION, build_policy, console


def convert(
    source: Path = typer.Argument(
        ..., help="Checkpoint to convert (torch, pickle, joblib, npy/npz)."
    ),
    output: Path = typer.Argument(..., help="Safetensors file to write."),
    isolated: bool = typer.Option(
        False,
        "--isolated",
        help="For files that scan 'unknown': unpickle in a child process with CPU, memory and "
        "file-write limits and a scrubbed environment; only tensors come back.",
    ),
    signature: Path | None = typer.Option(None, "--signature", help="Verify this signature first."),
    key: Path | None = typer.Option(None, "--key", help="Trusted public key (PEM) or key dir."),
    sha256: str | None = typer.Option(None, "--sha256", help="Expected SHA-256 of the source."),
    cpu_seconds: int = typer.Option(120, "--cpu-seconds", help="CPU limit of --isolated."),
    force: bool = typer.Option(False, "--force", help="Replace OUTPUT if it exists."),
    allow: list[str] | None = ALLOW_OPTION,
    policy: Path | None = POLICY_OPTION,
) -> None:
    """Convert a pickle checkpoint into safetensors (no code can live in it).

    Example: bastion convert model.pt model.safetensors
    """
    from bastion.artifacts.convert import convert as run
    from bastion.artifacts.isolate import IsolationLimits

    result = run(
        source,
        output,
        isolated=isolated,
        policy=build_policy(allow, policy),
        signature=signature,
        public_keys=key,
        sha256=sha256,
        limits=IsolationLimits(cpu_seconds=cpu_seconds),
        overwrite=force,
    )
    console.print(
        f"[green]wrote[/] {escape(result.output)}: {result.tensors} tensors, "
        f"{result.nbytes:,} bytes ({result.mode} load of a {result.verdict} file), "
        f"sha256 {result.sha256}",
        highlight=False,
    )
    for item in result.skipped:
        console.print(f"  [yellow]skipped[/] {escape(item)} (not a tensor)", highlight=False)
