"""The monitoring pictures: corruption heat map and examples, ROC curves, reliability diagrams, ECE under shift."""

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


def corruption_heatmap(path: Path, result: dict[str, Any]) -> Path:
    """Error (%) of each model (rows) under each corruption (columns), clean and the mean beside them."""
    plt = pyplot()
    names = result["corruptions"]
    rows = result["rows"]
    cols = ["clean", *names, "mean"]
    data = [[r["clean_error"], *[r["errors"][n] for n in names], r["mean_error"]] for r in rows]
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(cols), 0.9 + 0.5 * len(rows)))
    im = ax.imshow([[100 * v for v in row] for row in data], cmap="magma_r", aspect="auto")
    ax.set_xticks(range(len(cols)), [c.replace("_", " ") for c in cols], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [r["model"] for r in rows], fontsize=8)
    for i, row in enumerate(data):
        for j, v in enumerate(row):
            ax.text(j, i, f"{100 * v:.1f}", ha="center", va="center", fontsize=6,
                    color="white" if v > 0.5 * max(max(data)) else "black")
    fig.colorbar(im, ax=ax, label="error (%)")
    ax.set_title("Error under MNIST-C corruptions (%)", fontsize=9)
    return _done(plt, fig, path)


def image_strip(path: Path, images: dict[str, Tensor], title: str, per_row: int = 6) -> Path:
    """A few images of each set (one row per set, its name on the left)."""
    plt = pyplot()
    fig, axes = plt.subplots(len(images), per_row, figsize=(per_row * 0.9 + 1.6, len(images) * 0.9 + 0.4),
                             squeeze=False)
    for i, (name, x) in enumerate(images.items()):
        for j in range(per_row):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(x):
                img = x[j].detach().float().cpu().clamp(0, 1)
                ax.imshow(img[0] if img.shape[0] == 1 else img.permute(1, 2, 0), cmap="gray", vmin=0, vmax=1)
        axes[i][0].text(-0.15, 0.5, name.replace("_", " "), transform=axes[i][0].transAxes, ha="right",
                        va="center", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return _done(plt, fig, path)


def roc_curves(path: Path, curves: dict[tuple[str, str, str], tuple[Tensor, Tensor]], model: str) -> Path:
    """One panel per out-of-distribution set, one ROC curve per detector, for ``model``."""
    from squiggles.monitor.metrics import detection, roc_points

    plt = pyplot()
    sets = list(dict.fromkeys(k[2] for k in curves if k[0] == model))
    fig, axes = plt.subplots(1, len(sets), figsize=(3.0 * len(sets), 3.1), squeeze=False)
    for ax, name in zip(axes[0], sets, strict=True):
        for (m, method, s), (s_in, s_out) in curves.items():
            if m == model and s == name:
                fpr, tpr = roc_points(s_in, s_out)
                auc = detection(s_in, s_out)["auroc"]
                ax.plot(fpr, tpr, lw=1.2, label=f"{method} {100 * auc:.1f}")
        ax.plot([0, 1], [0, 1], color="0.8", lw=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("false-positive rate (outliers kept)", fontsize=7)
        ax.set_ylabel("true-positive rate (inliers kept)", fontsize=7)
        ax.legend(fontsize=6, loc="lower right", title="AUROC", title_fontsize=6)
    fig.suptitle(f"Out-of-distribution detection: {model}", fontsize=9)
    return _done(plt, fig, path)


def reliability(path: Path, curves: dict[str, dict[str, dict[str, Any]]], rows: list[dict[str, Any]]) -> Path:
    """Reliability diagrams (accuracy against confidence per bin) before and after temperature scaling."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(3.2 * len(curves), 3.2), squeeze=False)
    for ax, (model, both) in zip(axes[0], curves.items(), strict=True):
        row = next(r for r in rows if r["model"] == model)
        for key, colour in (("before", "tab:red"), ("after", "tab:blue")):
            rel = both[key]
            pts = [(c, a) for c, a in zip(rel["confidence"], rel["accuracy"], strict=True) if c is not None]
            ece = row[key]["ece"]
            label = f"{key} (ECE {100 * ece:.2f}%)" if key == "before" else (
                f"T = {row['temperature']:.2f} (ECE {100 * ece:.2f}%)")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, lw=1, color=colour, label=label)
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
        ax.set_xlabel("confidence", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.set_title(model, fontsize=9)
        ax.legend(fontsize=6)
    fig.suptitle("Reliability diagrams (15 bins)", fontsize=9)
    return _done(plt, fig, path)


def ece_under_shift(path: Path, summary: list[dict[str, Any]]) -> Path:
    """Mean ECE over the corruptions against their severity, per model, raw and temperature-scaled."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for i, model in enumerate(dict.fromkeys(r["model"] for r in summary)):
        rs = sorted((r for r in summary if r["model"] == model), key=lambda r: r["severity"])
        sev = [r["severity"] for r in rs]
        colour = f"C{i}"
        ax.plot(sev, [100 * r["ece"] for r in rs], "o-", color=colour, label=f"{model}")
        ax.plot(sev, [100 * r["ece_scaled"] for r in rs], "o--", color=colour, alpha=0.6, label=f"{model}, scaled")
    ax.set_xlabel("corruption severity (MNIST-C's scale)")
    ax.set_ylabel("mean ECE over the corruptions (%)")
    ax.set_xticks(range(1, 6))
    ax.legend(fontsize=7)
    ax.set_title("Calibration under shift", fontsize=9)
    return _done(plt, fig, path)


def first(x: Tensor, n: int = 6) -> Tensor:
    return x[:n].detach().clone() if len(x) else torch.zeros(0)
