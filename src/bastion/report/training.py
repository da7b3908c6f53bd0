"""Reports of training and hardening: per-epoch training curves, and a harden run's rounds side
by side with the baseline, as JSON and as one self-contained HTML page each."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bastion.core.atomic import atomic_write_text
from bastion.report.plots import _encode, _figure
from bastion.report.render import _ENV, render_json

__all__ = [
    "hardening_context",
    "rounds_png",
    "training_context",
    "training_curves_png",
    "write_harden_report",
    "write_training_report",
]


def training_curves_png(history: Sequence[Mapping[str, Any]]) -> str:
    """Loss and clean/robust accuracy per epoch (rows of ``EpochMetrics.to_dict()``); base64 PNG.

    Example:
        >>> training_curves_png([{"epoch": 1, "loss": 1.0, "clean_accuracy": 0.5,
        ...                       "robust_accuracy": 0.1}])[:8]
        'iVBORw0K'
    """
    fig = _figure(8.0, 3.2)
    epochs = [int(h["epoch"]) for h in history]
    ax = fig.add_subplot(1, 2, 1)
    ax.plot(epochs, [float(h["loss"]) for h in history], marker="o", color="#444")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax = fig.add_subplot(1, 2, 2)
    ax.plot(epochs, [100 * float(h["clean_accuracy"]) for h in history], marker="o",
            label="clean")
    robust = [(e, float(h["robust_accuracy"])) for e, h in zip(epochs, history, strict=True)
              if h.get("robust_accuracy") is not None]
    if robust:
        ax.plot([e for e, _ in robust], [100 * r for _, r in robust], marker="s",
                label="robust (PGD)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _encode(fig)


def rounds_png(rounds: Sequence[Mapping[str, Any]], target: float) -> str:
    """Clean and robust accuracy per harden round (round 0 = baseline) with the target line.

    Example:
        >>> rounds_png([{"round": 0, "clean_accuracy": 0.9, "robust_accuracy": 0.0}], 0.5)[:8]
        'iVBORw0K'
    """
    fig = _figure(5.5, 3.4)
    ax = fig.add_subplot(1, 1, 1)
    index = [int(r["round"]) for r in rounds]
    ax.plot(index, [100 * float(r["clean_accuracy"]) for r in rounds], marker="o", label="clean")
    ax.plot(index, [100 * float(r["robust_accuracy"]) for r in rounds], marker="s",
            label="robust")
    ax.axhline(100 * target, color="#9b1c1c", linestyle="--", linewidth=1, label="target")
    ax.set_xticks(index)
    ax.set_xlabel("round (0 = baseline)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _encode(fig)


def training_context(result: Any) -> dict[str, Any]:
    """What the training template needs: the result's JSON and its curves."""
    data = result.to_dict()
    history = data.get("history") or []
    return {"data": data, "curves_png": training_curves_png(history) if history else None}


def hardening_context(result: Any) -> dict[str, Any]:
    """What the hardening template needs: the result's JSON and the rounds plot."""
    data = result.to_dict()
    return {"data": data,
            "rounds_png": rounds_png(data["rounds"], float(data["target_robust_accuracy"]))}


def write_training_report(result: Any, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``train.json`` and ``report.html`` for a training run, atomically."""
    return _write(result, Path(out_dir), "train.json", "training.html.j2",
                  tr=training_context(result))


def write_harden_report(result: Any, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``harden.json`` and ``report.html`` for a harden run, atomically."""
    return _write(result, Path(out_dir), "harden.json", "harden.html.j2",
                  hd=hardening_context(result))


def _write(result: Any, out: Path, json_name: str, template: str,
           **context: Any) -> tuple[Path, Path]:
    json_path, html_path = out / json_name, out / "report.html"
    atomic_write_text(json_path, render_json(result))
    atomic_write_text(html_path, _ENV.get_template(template).render(**context))
    return json_path, html_path
