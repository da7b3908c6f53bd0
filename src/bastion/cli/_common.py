"""Options and helpers shared by every command (defined once, used everywhere)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import typer
from rich.console import Console

from bastion.artifacts.scan.policy import DEFAULT_POLICY, Policy, load_policy
from bastion.core.errors import ConfigurationError

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


_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(ch: str) -> str:
    if ch.isprintable():
        return ch
    code = ord(ch)
    if ch in _NAMED:
        return _NAMED[ch]
    return f"\\x{code:02x}" if code <= 0xFF else (
        f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
    )


def shown(path: object) -> str:
    """``path`` as text safe for a terminal: non-printable characters (ESC, BEL, newlines, C1
    codes, bidi overrides) are written as ``\\xNN``-style escapes, everything else verbatim.

    A file name is chosen by whoever made the file; printed raw, ``ESC ] 0 ; ... BEL`` retitles
    the terminal and other sequences rewrite what the user sees. Printable names come back
    unchanged, at the cost of one scan of the string.
    """
    text = str(path)
    return text if text.isprintable() else "".join(map(_escape, text))


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop: compare the plain absolute path
        return path.absolute()


def _same_file(a: Path, b: Path) -> bool:
    try:
        if os.path.samefile(a, b):
            return True
    except OSError:  # one of them does not exist (yet)
        pass
    return _resolved(a) == _resolved(b)


def refuse_clobber(
    output: Path,
    option: str,
    inputs: Sequence[tuple[str, Path]],
    *,
    replaceable: Callable[[Path], bool] | None = None,
) -> None:
    """Refuse, before any work, an output path that would destroy an input.

    ``output`` may not be the same file as any input (``(role, path)`` pairs: the model, the key,
    the dataset...), and may not replace an existing file inside an input directory, unless
    ``replaceable(output)`` says it is an earlier output of the same command (a report, a
    manifest, a signature). Raises ConfigurationError naming the clash.
    """
    out = _resolved(output)
    for role, given in inputs:
        if _same_file(output, given):
            raise ConfigurationError(
                f"{option} {shown(output)} is the {role} itself; write the output elsewhere"
            )
        base = _resolved(given)
        if (
            base.is_dir() and out.is_relative_to(base) and output.exists()
            and not (replaceable is not None and replaceable(output))
        ):
            raise ConfigurationError(
                f"{option} {shown(output)} would overwrite a file inside the {role} "
                f"{shown(given)}; write the output elsewhere"
            )


def is_json_with(path: Path, key: str, prefix: str) -> bool:
    """Whether ``path`` is a JSON object (at most 64 MiB) whose ``key`` starts with ``prefix``
    (a string) or, for an empty ``prefix``, is any integer: how an earlier signature bundle,
    manifest or report is recognised before replacing it."""
    try:
        if not path.is_file() or path.stat().st_size > 64 << 20:
            return False
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    value = doc.get(key) if isinstance(doc, dict) else None
    if not prefix and isinstance(value, int):
        return True
    return isinstance(value, str) and value.startswith(prefix)
