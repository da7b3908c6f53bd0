"""``bastion audit``: the one-command answer to "is this model safe to ship?"."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from bastion.cli._common import ALLOW_OPTION, POLICY_OPTION, build_policy, console


def audit(
    model: Path | None = typer.Option(
        None, "--model", help="Model file to audit (default: the bundled demo, end to end)."
    ),
    signature: Path | None = typer.Option(None, "--signature", help="OMS signature of --model."),
    key: Path | None = typer.Option(
        None, "--key", help="Trusted public key (PEM) or a directory of them."
    ),
    sha256: str | None = typer.Option(None, "--sha256", help="Expected SHA-256 of --model."),
    out: Path = typer.Option(Path("audit"), "--out", help="Directory for report.json/.html."),
    robustness: int = typer.Option(
        100,
        "--robustness",
        min=0,
        help="With the demo: evaluate robustness on this many MNIST test samples for the "
        "Robustness section (0 leaves it out).",
    ),
    hardened: Path | None = typer.Option(
        None, "--hardened", help="A hardened model's weights, or a `bastion train`/`bastion "
        "harden` output directory: adds the Hardening section (against --baseline).",
    ),
    baseline: Path | None = typer.Option(
        None, "--baseline", help="The baseline's weights (default: the demo model)."
    ),
    architecture: str = typer.Option(
        "demo", "--architecture", metavar="SPEC",
        help="Architecture of --hardened/--baseline: 'demo' or 'package.module:factory'.",
    ),
    data: str = typer.Option(
        "mnist5k", "--data", metavar="DATA",
        help="Test data of the Hardening section: mnist5k, digits or an .npz file.",
    ),
    allow: list[str] | None = ALLOW_OPTION,
    policy: Path | None = POLICY_OPTION,
) -> None:
    """Audit a model file (or the bundled demo) and write report.json and report.html.

    Exit code 0 when nothing failed (warnings allowed), 1 when a check failed.
    """
    from bastion.audit import run_audit
    from bastion.report import write_report

    report = run_audit(
        model,
        signature=signature,
        public_keys=key,
        sha256=sha256,
        policy=build_policy(allow, policy),
        workdir=out,
        robustness_samples=robustness if model is None else 0,
        hardened=hardened,
        baseline=baseline,
        architecture=architecture,
        hardening_data=data,
    )
    json_path, html_path = write_report(report, out)
    for section in report.sections:
        console.print(f"[bold]{section.title}[/]: {section.status.value}", highlight=False)
        for file in section.files:
            console.print(f"  {file.path} ({file.format}) verdict {file.verdict}", markup=False,
                          highlight=False)
            for check in file.checks:
                console.print(
                    f"    {check.name:<10} {check.status.value:<7} {check.detail}",
                    markup=False, highlight=False,
                )
        result = getattr(section, "result", None)
        if result is not None and result.baseline is not None:  # the Hardening section
            b = result.baseline
            console.print(
                f"  hardened: clean {result.clean_accuracy:.1%}, robust "
                f"{result.robust_accuracy:.1%}; baseline: clean {b.clean_accuracy:.1%}, robust "
                f"{b.robust_accuracy:.1%} (eps {result.threat.eps:g})",
                markup=False, highlight=False)
        if result is not None:  # the Robustness and Hardening sections
            curve = ", ".join(f"eps {p.eps:g}: {p.robust_accuracy:.1%}" for p in result.curve)
            console.print(f"  clean {result.clean_accuracy:.1%}; robust {curve}", markup=False,
                          highlight=False)
            for check in result.sanity:
                status = "pass" if check.passed else "FAIL"
                console.print(f"    {check.check:<28} {status:<5} {check.detail}", markup=False,
                              highlight=False)
        if hasattr(section, "summary_lines"):  # the Runtime guard section
            for line in section.summary_lines():
                console.print(line, markup=False, highlight=False)
    console.print(f"overall: [bold]{report.status.value}[/]; wrote {escape(str(json_path))} and "
                  f"{escape(str(html_path))}",
                  highlight=False)
    if report.status.value == "fail":
        raise typer.Exit(1)
