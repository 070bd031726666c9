"""The backdoor pictures: the real trigger beside the reversed ones, the mask norms with the anomaly index, and
suspected training points."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from squiggles.report.figures import pyplot


def _done(plt: Any, fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _show(ax: Any, img: Tensor, bounds: tuple[float, float], title: str, colour: str = "black") -> None:
    img = ((img.detach().float().cpu() - bounds[0]) / (bounds[1] - bounds[0])).clamp(0, 1)
    if img.dim() == 3:
        img = img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)
    elif img.dim() == 1:
        img = img[None]
    ax.imshow(img.numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_title(title, fontsize=7, color=colour)
    ax.axis("off")


def trigger_figure(path: Path, masks: Tensor, patterns: Tensor, summary: dict[str, Any], bounds: tuple[float, float],
                   real: tuple[Tensor, Tensor] | None = None, example: Tensor | None = None) -> Path:
    """Top row: the real trigger (mask times pattern) when known, then every class's reversed one, titled with its
    mask's L1 norm and anomaly index (flagged classes in red). Bottom row: a clean example wearing each."""
    plt = pyplot()
    k = len(masks)
    cols = k + (1 if real is not None else 0)
    rows = 2 if example is not None else 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols + 0.4, 1.35 * rows + 0.5), squeeze=False)
    classes = summary["classes"]
    shown = []
    if real is not None:
        shown.append((real[0], real[1], "real trigger", "tab:blue"))
    for t in range(k):
        c = classes[t]
        shown.append((masks[t], patterns[t], f"class {t}\nL1 {c['mask_l1']:.1f}, idx {c['anomaly_index']:.1f}",
                      "crimson" if c["flagged"] else "black"))
    for j, (m, p, title, colour) in enumerate(shown):
        # Mask times pattern on a dark ground: what the trigger paints, and where.
        _show(axes[0][j], bounds[0] + m * (p - bounds[0]), bounds, title, colour)
        if example is not None:
            _show(axes[1][j], (1 - m) * example + m * p, bounds, "", colour)
    fig.suptitle("Real and reverse-engineered triggers (Neural Cleanse); red: flagged (anomaly index > 2)", fontsize=8)
    return _done(plt, fig, path)


def norms_figure(path: Path, summary: dict[str, Any], expected: int | None = None) -> Path:
    """Each class's reversed-mask L1 norm, the median and the line below which the anomaly index exceeds 2."""
    plt = pyplot()
    classes = summary["classes"]
    norms = [c["mask_l1"] for c in classes]
    fig, ax = plt.subplots(figsize=(0.45 * len(norms) + 2.2, 2.8))
    colours = ["crimson" if c["flagged"] else "tab:gray" for c in classes]
    ax.bar(range(len(norms)), norms, color=colours)
    ax.axhline(summary["median_norm"], color="black", lw=0.8, label="median")
    ax.axhline(summary["median_norm"] - 2 * summary["mad"], color="crimson", lw=0.8, ls="--",
               label="anomaly index 2")
    if expected is not None:
        ax.annotate("real target", (expected, norms[expected]), textcoords="offset points", xytext=(0, 4),
                    ha="center", fontsize=7, color="tab:blue")
    ax.set_xticks(range(len(norms)))
    ax.set_xlabel("class")
    ax.set_ylabel("L1 norm of the reversed mask")
    ax.legend(fontsize=7)
    ax.set_title("Trigger sizes per class: a backdoor's target needs a much smaller one", fontsize=8)
    return _done(plt, fig, path)


def suspects_figure(path: Path, x: Tensor, y: Tensor, detections: dict[str, Any], bounds: tuple[float, float],
                    truth: Tensor | None = None, per_row: int = 8) -> Path:
    """The most suspicious training points of each data detector, with their (training) labels; those known to be
    poisoned titled in red."""
    plt = pyplot()
    poisoned = set(truth.tolist()) if truth is not None else set()
    fig, axes = plt.subplots(len(detections), per_row, figsize=(per_row * 0.95 + 1.4, len(detections) * 1.2 + 0.4),
                             squeeze=False)
    for i, (name, det) in enumerate(detections.items()):
        picked = det.suspects.nonzero().flatten()
        order = picked[det.scores[picked].argsort(descending=True)][:per_row]
        for j in range(per_row):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(order):
                n = int(order[j])
                _show(ax, x[n], bounds, f"#{n} y={int(y[n])}", "crimson" if n in poisoned else "black")
        axes[i][0].text(-0.2, 0.5, name, transform=axes[i][0].transAxes, ha="right", va="center", fontsize=8)
    fig.suptitle("Most suspicious training points (red: known to be poisoned)", fontsize=8)
    return _done(plt, fig, path)


def first_of_class(x: Tensor, y: Tensor, avoid: int | None = None) -> Tensor:
    """A clean example to stamp in the pictures: the first point not of class ``avoid``."""
    rows = (y != avoid).nonzero().flatten() if avoid is not None else torch.arange(len(y))
    return x[int(rows[0]) if len(rows) else 0]
