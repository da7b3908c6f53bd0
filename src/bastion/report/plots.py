"""Plots for reports, drawn with matplotlib's Agg backend and embedded as base64 PNG so that an
HTML report stays one self-contained file."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

__all__ = ["curve_png", "gallery_png"]


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    return Figure(figsize=(width, height), dpi=100)


def _encode(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def curve_png(curves: Sequence[tuple[str, Sequence[float], Sequence[float]]], norm: str) -> str:
    """Robust accuracy against eps, one line per ``(label, eps, accuracy)``; base64 PNG.

    Example:
        >>> curve_png([("model", [0.0, 0.1], [0.9, 0.2])], "linf")[:8]
        'iVBORw0K'
    """
    fig = _figure(5.5, 3.4)
    ax = fig.add_subplot(1, 1, 1)
    for label, eps, acc in curves:
        ax.plot(list(eps), [100 * a for a in acc], marker="o", label=label)
    ax.set_xlabel(f"eps ({norm})")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    return _encode(fig)


def gallery_png(examples: Sequence[Any], *, amplify: float | None = None) -> str:
    """Rows of original, amplified perturbation and adversarial image with both predictions.

    ``examples`` are :class:`bastion.evaluate.AdversarialExample`; the perturbation is scaled to
    fill the colour range (or by ``amplify``) and centred on grey.
    """
    rows = max(1, len(examples))
    fig = _figure(6.0, 2.0 * rows)
    for i, ex in enumerate(examples):
        x, x_adv = ex.x.float(), ex.x_adv.float()
        delta = x_adv - x
        scale = amplify or 0.5 / max(float(delta.abs().max()), 1e-12)
        panels = [
            (_image(x), f"original: {ex.clean_prediction} (true {ex.label})"),
            (_image(0.5 + scale * delta, clip=True), f"perturbation x{scale:.3g}"),
            (_image(x_adv), f"adversarial: {ex.adversarial_prediction} ({ex.attack})"),
        ]
        for j, (img, title) in enumerate(panels):
            ax = fig.add_subplot(rows, 3, 3 * i + j + 1)
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    return _encode(fig)


def _image(t: Any, clip: bool = False) -> Any:
    """A tensor as an HxW or HxWx3 numpy image in [0, 1] (flat vectors become one row)."""
    t = t.detach().cpu().float()
    if t.dim() == 3 and t.shape[0] in (1, 3):
        t = t[0] if t.shape[0] == 1 else t.permute(1, 2, 0)
    elif t.dim() != 2:
        t = t.reshape(1, -1)
    lo, hi = float(t.min()), float(t.max())
    if clip:
        t = t.clamp(0, 1)
    elif lo < 0 or hi > 1:
        t = (t - lo) / max(hi - lo, 1e-12)
    return t.numpy()
