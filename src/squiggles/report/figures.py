"""Figures as PNG files. Matplotlib runs headless (Agg) and is imported only when a figure is drawn."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor


def pyplot():  # noqa: ANN202
    """matplotlib's pyplot on the headless Agg backend, imported only when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def is_image_batch(x: Tensor) -> bool:
    """N x C x H x W with 1 or 3 channels: something we can draw as pictures."""
    return x.dim() == 4 and x.shape[1] in (1, 3)


def attack_grid(
    path: Path,
    clean: Tensor,
    adv: Tensor,
    clean_pred: Tensor,
    adv_pred: Tensor,
    adv_conf: Tensor | None,
    labels: Tensor,
    bounds: tuple[float, float] = (0.0, 1.0),
    title: str = "",
    rows: int = 8,
) -> Path:
    """Clean image, signed perturbation (a heat map) and adversarial image, one example per row."""
    plt = pyplot()
    n = min(rows, len(clean))
    fig, axes = plt.subplots(n, 3, figsize=(6, 2 * n), squeeze=False)
    delta = (adv - clean)[:n]
    scale = max(delta.abs().max().item(), 1e-12)
    for i in range(n):
        panels = [
            (as_image(clean[i], bounds), "gray", None, f"label {int(labels[i])}, pred {int(clean_pred[i])}"),
            (delta[i].mean(0).numpy(), "RdBu_r", (-scale, scale), f"perturbation (max {scale:.3g})"),
            (as_image(adv[i], bounds), "gray", None,
             f"pred {int(adv_pred[i])}" + (f" ({float(adv_conf[i]):.2f})" if adv_conf is not None else "")),
        ]
        fooled = int(adv_pred[i]) != int(labels[i])
        for col, (ax, (img, cmap, lim, text)) in enumerate(zip(axes[i], panels, strict=True)):
            kwargs = {"vmin": lim[0], "vmax": lim[1]} if lim else {"vmin": 0, "vmax": 1}
            ax.imshow(img, cmap=cmap, **kwargs)
            # The adversarial panel's title turns red when the model was fooled.
            ax.set_title(text, fontsize=8, color="crimson" if col == 2 and fooled else "black")
            ax.axis("off")
    return _save(plt, fig, path, title)


def _save(plt, fig, path: Path, title: str) -> Path:  # noqa: ANN001
    """Title, lay out, write and close a figure of images."""
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def as_image(img: Tensor, bounds: tuple[float, float]):  # noqa: ANN201
    """One image (C x H x W) scaled to [0, 1] as H x W (gray) or H x W x C, ready for imshow."""
    lo, hi = bounds
    img = ((img - lo) / (hi - lo)).clamp(0, 1)
    return img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()


def confidence(logits: Tensor) -> Tensor:
    """Softmax probability of the predicted class."""
    return torch.softmax(logits.float(), 1).amax(1)


_BUDGET_LABELS = {"patch": "patch area (share of the image)", "spatial": "share of the rotation-translation box"}
def eps_curve(path: Path, curves: dict[str, tuple[list[float], list[float]]], norm: str, title: str = "",
              ylabel: str = "robust accuracy (%)") -> Path:
    """Robust accuracy (or another share, given as a fraction) against the budget, one line per model or
    setting (PNG or SVG by the suffix)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, (eps, acc) in curves.items():
        ax.plot(eps, [100 * a for a in acc], marker="o", label=label)
    ax.set_xlabel(_BUDGET_LABELS.get(norm, f"eps ({norm})"))
    ax.set_ylabel(ylabel)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def query_curve(path: Path, curves: dict[str, tuple[list[int], list[float | None]]], norm: str,
                references: dict[str, float] | None = None, title: str = "") -> Path:
    """Median adversarial norm against model calls per example (log x), one line per attack; white-box
    references (e.g. FMN's minimal norm on the same points) as horizontal dashed lines."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, (queries, medians) in curves.items():
        points = [(q, m) for q, m in zip(queries, medians, strict=True) if m is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label)
    for label, value in (references or {}).items():
        ax.axhline(value, linestyle="--", color="gray", linewidth=1)
        ax.text(ax.get_xlim()[0], value, f" {label}", fontsize=7, va="bottom", color="dimgray")
    ax.set_xscale("log")
    ax.set_xlabel("model calls per example")
    ax.set_ylabel(f"median {norm} norm")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def patch_figure(path: Path, content: Tensor, worn: Tensor, pred: Tensor, target: int,
                 bounds: tuple[float, float] = (0.0, 1.0), title: str = "", count: int = 8) -> Path:
    """The patch itself, then test images wearing it with the labels the model gave them (red: the target)."""
    plt = pyplot()
    n = min(count, len(worn))
    fig, axes = plt.subplots(1, n + 1, figsize=(1.4 * (n + 1), 1.8), squeeze=False)
    axes[0, 0].imshow(as_image(content, bounds), cmap="gray", vmin=0, vmax=1)
    axes[0, 0].set_title("the patch", fontsize=8)
    for i in range(n):
        ax = axes[0, i + 1]
        ax.imshow(as_image(worn[i], bounds), cmap="gray", vmin=0, vmax=1)
        hit = int(pred[i]) == target
        ax.set_title(f"pred {int(pred[i])}", fontsize=8, color="crimson" if hit else "black")
    for ax in axes[0]:
        ax.axis("off")
    return _save(plt, fig, path, title)


def gallery(path: Path, rows: list[tuple[str, Tensor, list[str], list[bool]]], bounds: tuple[float, float] = (0.0, 1.0),
            title: str = "") -> Path:
    """Rows of images, each row named (a model, or "clean"), each image with a caption; a caption whose flag
    is set is drawn in red (the model was fooled)."""
    plt = pyplot()
    cols = max(len(images) for _, images, _, _ in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.3 * cols + 1.2, 1.5 * len(rows)), squeeze=False)
    for r, (name, images, captions, fooled) in enumerate(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(images):
                ax.imshow(as_image(images[c], bounds), cmap="gray", vmin=0, vmax=1)
                ax.set_title(captions[c], fontsize=7, color="crimson" if fooled[c] else "black")
        axes[r, 0].text(-0.15, 0.5, name, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=8)
    return _save(plt, fig, path, title)
