"""Options and helpers shared by every command (defined once, used everywhere)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from bastion.artifacts.scan.policy import DEFAULT_POLICY, Policy, load_policy

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

ALLOW_OPTION = typer.Option(
    None,
    "--allow",
    metavar="MODULE.NAME",
    help="Also allow this global (repeatable; MODULE.* allows a whole module), e.g. for your own "
    "model classes.",
)
POLICY_OPTION = typer.Option(
    None, "--policy", metavar="FILE", help='TOML policy file: allow = ["mypkg.Net", ...].'
)


def build_policy(allow: list[str] | None, policy_file: Path | None) -> Policy:
    """The default policy, extended by a policy file and by ``--allow`` entries."""
    policy = DEFAULT_POLICY
    if policy_file is not None:
        policy = load_policy(policy_file, policy)
    if allow:
        policy = policy.extended(allow)
    return policy
