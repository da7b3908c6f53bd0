"""``bastion evaluate``: robust accuracy of a model under a threat model, honestly reported."""

from __future__ import annotations

import enum
import json
from pathlib import Path

import typer
from rich.markup import escape

from bastion.cli._common import ALLOW_OPTION, POLICY_OPTION, build_policy, console
from bastion.core.errors import ConfigurationError


class OutputFormat(enum.Enum):
    TEXT = "text"
    JSON = "json"


def _eps_list(text: str) -> list[float]:
    values = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            values.append(float(part))
        except ValueError:
            raise ConfigurationError(
                f"--eps {text!r}: expected comma-separated numbers, e.g. 0.1,0.2,0.3"
            ) from None
    if not values:
        raise ConfigurationError("--eps needs at least one number, e.g. 0.1,0.2,0.3")
    return values


def evaluate(
    model: str = typer.Option(
        ..., "--model", metavar="MODEL",
        help="'demo', 'package.module:factory' (with --weights FILE) or a torch.export .pt2 file.",
    ),
    data: str = typer.Option(
        ..., "--data", metavar="DATA", help="'mnist5k', 'digits' or an .npz file (test split)."
    ),
    norm: str = typer.Option("linf", "--norm", help="Threat model norm: linf or l2."),
    eps: str = typer.Option(
        "0.3", "--eps", metavar="E1,E2,...",
        help="Radii of the curve; robust accuracy is reported at the largest.",
    ),
    attacks: str = typer.Option(
        "default", "--attacks", metavar="NAMES",
        help="Comma-separated: default (fast cascade with probes), full (every stage on every "
        "survivor), fgsm, pgd, mi-fgsm, apgd-ce, apgd-dlr, apgd-t, square, "
        "deepfool, cw.",
    ),
    baseline: str | None = typer.Option(
        None, "--baseline", metavar="MODEL", help="A second model to compare, same data/threat."
    ),
    weights: Path | None = typer.Option(
        None, "--weights", help="Weights for --model, read only through bastion.load."
    ),
    baseline_weights: Path | None = typer.Option(
        None, "--baseline-weights", help="Weights for --baseline, read through bastion.load."
    ),
    signature: Path | None = typer.Option(None, "--signature", help="OMS signature of --weights."),
    key: Path | None = typer.Option(None, "--key", help="Trusted public key (PEM) or directory."),
    sha256: str | None = typer.Option(None, "--sha256", help="Expected SHA-256 of --weights."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Evaluate the first N samples."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Samples per attack call."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1,
                             help="Seed of the attacks and sanity subsample."),
    sanity: bool = typer.Option(True, "--sanity/--no-sanity", help="Gradient-masking checks."),
    output_format: OutputFormat = typer.Option(
        OutputFormat.TEXT, "--format", case_sensitive=False, help="text or json on stdout."
    ),
    out: Path | None = typer.Option(None, "--out", help="Write report.json and report.html here."),
    allow: list[str] | None = ALLOW_OPTION,
    policy: Path | None = POLICY_OPTION,
) -> None:
    """Evaluate robust accuracy: worst case per sample over an attack ensemble, with a curve
    over eps, per-attack work, and sanity checks that flag gradient masking.

    Exit code 0 when the evaluation ran (a flagged result says so in every output), 1 when a
    model file was refused, 2 on a usage error.
    """
    from bastion.core.threat import Norm, ThreatModel
    from bastion.data import load_dataset
    from bastion.evaluate import AttackName, robustness
    from bastion.evaluate.models import ModelSource, resolve_model

    names = AttackName.parse_list(attacks)  # unknown names: exit 2 with the valid list
    radii = _eps_list(eps)
    splits = load_dataset(Path(data) if data.endswith(".npz") else data)
    threat = ThreatModel(norm=Norm.parse(norm), eps=max(radii), bounds=splits.bounds)
    checked = build_policy(allow, policy)
    target = resolve_model(ModelSource(spec=model, weights=weights, signature=signature,
                                       public_keys=key, sha256=sha256, policy=checked))
    other = None
    if baseline is not None:
        other = resolve_model(ModelSource(spec=baseline, weights=baseline_weights,
                                          policy=checked))
    result = robustness(
        target, (splits.x_test, splits.y_test), threat, [n.value for n in names], eps=radii,
        batch_size=batch_size, limit=limit, seed=seed, sanity=sanity, baseline=other,
        name=model, baseline_name=baseline or "baseline",
    )
    if out is not None:
        from bastion.report.robustness import write_robustness_report

        written = write_robustness_report(result, out)
    if output_format is OutputFormat.JSON:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        _print_text(result)
        if out is not None:
            console.print(f"wrote {escape(str(written[0]))} and {escape(str(written[1]))}",
                          highlight=False)


def _print_text(result: object) -> None:
    from bastion.evaluate.compare import comparison_table
    from bastion.evaluate.results import RobustnessResult

    assert isinstance(result, RobustnessResult)
    def say(text: str) -> None:
        console.print(text, markup=False, highlight=False)

    say(result.summary())
    say(f"  {'attack':<14} {'robust':>8} {'broke':>6} {'seconds':>8} {'forward':>9} "
        f"{'backward':>9}  mean norm")
    for a in result.attacks:
        norm = "-" if a.mean_norm is None else f"{a.mean_norm:.3g}"
        say(f"  {a.name:<14} {a.robust_accuracy:>8.1%} {a.broken:>6} {a.seconds:>8.2f} "
            f"{a.forward:>9} {a.backward:>9}  {norm}" + (f"  ({a.note})" if a.note else ""))
    say("  curve: " + ", ".join(f"eps {p.eps:g}: {p.robust_accuracy:.1%}" for p in result.curve))
    for check in result.sanity:
        say(f"  sanity {'PASS' if check.passed else 'FAIL'} {check.check}: {check.detail}")
    for note in result.notes:
        say(f"  note: {note}")
    if result.baseline is not None:
        say(result.baseline.summary())
        say(comparison_table(result))
