"""The maths and the pictures of the transfer experiment (Papernot et al. 2016, arXiv 1605.07277; Tramèr et
al. 2017, arXiv 1704.03453): transfer rates between every pair of models, their means, and the heat maps.

The rate from a source ``s`` to a target ``t`` counts only the points that both models classify correctly,
so a target's clean errors never pass for transfer; the diagonal (``s == t``) is the white-box success rate.

Example:
    >>> import torch
    >>> correct = torch.tensor([[True, True, False], [True, True, True]])
    >>> adv_correct = torch.tensor([[[False, True, False], [False, False, True]],
    ...                             [[True, True, False], [False, True, True]]])
    >>> transfer_rates(correct, adv_correct).tolist()
    [[0.5, 1.0], [0.0, 0.3333333432674408]]
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from squiggles.experiments.base import published_row
from squiggles.report.figures import pyplot

# Published figures at L-inf eps 0.3 (paper-anchors.md): the accuracy of Madry et al.'s adversarially trained MNIST
# model under white-box attacks and under examples crafted on other models. No MNIST transfer matrix is citable.
MADRY = "Madry et al. 2017 (arXiv 1706.06083) Table 1"
CHALLENGE = "MadryLab/mnist_challenge black-box leaderboard"


def transfer_rates(correct: Tensor, adv_correct: Tensor) -> Tensor:
    """M x M transfer rates (NaN where no point is classified correctly by both models).

    ``correct``: M x N bool, model m classifies clean point n correctly. ``adv_correct``: M x M x N bool,
    target t classifies the adversarial example crafted on source s from point n correctly.
    """
    both = correct.unsqueeze(1) & correct.unsqueeze(0)  # S x T x N: the points both s and t get right
    fooled = both & ~adv_correct
    counts = both.sum(-1)
    rates = fooled.sum(-1).float() / counts.clamp(min=1).float()
    return torch.where(counts > 0, rates, torch.full_like(rates, math.nan))


def off_diagonal_means(rates: Tensor) -> tuple[Tensor, Tensor]:
    """Per source (row) and per target (column): the mean rate over the *other* models, NaN cells left out."""
    cells = _off_diagonal(rates)
    return cells.nanmean(1), cells.nanmean(0)


def block_mean(rates: Tensor, sources: Tensor, targets: Tensor) -> float:
    """Mean off-diagonal rate over source rows ``sources`` and target columns ``targets`` (bool masks);
    NaN when the block holds no pair of distinct models."""
    cells = _off_diagonal(rates)[sources][:, targets]
    values = cells[~cells.isnan()]
    return values.mean().item() if len(values) else math.nan


def _off_diagonal(rates: Tensor) -> Tensor:
    eye = torch.eye(len(rates), dtype=torch.bool, device=rates.device)
    return rates.masked_fill(eye, math.nan)


def as_number(value: float, digits: int = 4) -> float | None:
    """A JSON-ready number: rounded, None for NaN (no pair to measure)."""
    return None if math.isnan(value) else round(float(value), digits)


def matrix_records(rates: Tensor, names: list[str]) -> list[dict[str, Any]]:
    """The matrix as flat records: a row per source with a column per target and its mean transfer to the
    other models, then a last row with each target's mean over the other sources."""
    row_mean, col_mean = off_diagonal_means(rates)
    records = []
    for s, source in enumerate(names):
        record: dict[str, Any] = {"source": source}
        record.update({target: as_number(rates[s, t].item()) for t, target in enumerate(names)})
        record["mean to others"] = as_number(row_mean[s].item())
        records.append(record)
    last: dict[str, Any] = {"source": "mean from others"}
    last.update({target: as_number(col_mean[t].item()) for t, target in enumerate(names)})
    everyone = torch.ones(len(names), dtype=torch.bool)
    last["mean to others"] = as_number(block_mean(rates, everyone, everyone))
    records.append(last)
    return records


def draw_heatmap(path: Path, rates: Tensor, names: list[str], robust: list[bool], title: str) -> Path:
    """Sources on rows, targets on columns, the rate written in each cell; the diagonal (white-box) is boxed
    and a line separates the standard models from the robust ones."""
    plt = pyplot()
    m = len(names)
    size = 1.0 + 0.75 * m
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    values = rates.cpu().numpy()
    image = ax.imshow(values, cmap="magma", vmin=0.0, vmax=1.0)
    for s in range(m):
        for t in range(m):
            value = values[s, t]
            text = "–" if math.isnan(value) else f"{100 * value:.0f}"
            ax.text(t, s, text, ha="center", va="center", fontsize=8, color="black" if value > 0.6 else "white")
        ax.add_patch(plt.Rectangle((s - 0.5, s - 0.5), 1, 1, fill=False, edgecolor="cyan", linewidth=1.5))
    labels = [f"{name} (robust)" if r else name for name, r in zip(names, robust, strict=True)]
    ax.set_xticks(range(m), labels, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(m), labels, fontsize=8)
    split = sum(not r for r in robust)
    if 0 < split < m:
        ax.axhline(split - 0.5, color="white", linewidth=1.5)
        ax.axvline(split - 0.5, color="white", linewidth=1.5)
    ax.set_xlabel("target (evaluated on)")
    ax.set_ylabel("source (crafted on)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="transfer rate")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


GROUPS = (("standard", False), ("robust", True))


def block_rows(rates: dict[str, Tensor], is_robust: Tensor) -> list[dict[str, Any]]:
    """Per attack, the mean off-diagonal rate between the groups: standard or robust sources to targets."""
    rows = []
    for attack, matrix in rates.items():
        for source, s_robust in GROUPS:
            for target, t_robust in GROUPS:
                sources, targets = is_robust == s_robust, is_robust == t_robust
                pairs = int(sources.sum()) * int(targets.sum()) - (int(sources.sum()) if source == target else 0)
                rows.append(
                    {
                        "attack": attack,
                        "from": source,
                        "to": target,
                        "pairs": pairs,
                        "mean_rate": as_number(block_mean(matrix, sources, targets)),
                    }
                )
    return rows


def accuracy_rows(accuracy: dict[str, Tensor], names: list[str]) -> list[dict[str, Any]]:
    """Per attack and source, each target's accuracy on every point (its clean errors included)."""
    return [
        {"attack": attack, "source": source, **{t: as_number(matrix[s, j].item()) for j, t in enumerate(names)}}
        for attack, matrix in accuracy.items()
        for s, source in enumerate(names)
    ]


def published_rows(
    names: list[str], robust: list[bool], archs: list[str], accuracy: dict[str, Tensor], budget: str
) -> list[dict[str, Any]]:
    """Madry et al.'s L∞ model beside our first robust model (``accuracy[attack]``: S x T accuracy under the
    examples of each source), white-box and black-box from standard models; then a row saying that no MNIST
    transfer matrix is citable."""
    standard = [i for i, r in enumerate(robust) if not r]
    target = next((i for i, r in enumerate(robust) if r), None)
    madry = next((i for i in standard if archs[i] == "madry-cnn"), None)
    # Our most transferable standard source against the first robust model stands in for Madry's source B.
    best = {
        a: min(standard, key=lambda s: m[s, target].item()) if target is not None and standard else None
        for a, m in accuracy.items()
    }
    other = f"{MADRY}, source B (Tramèr et al.'s architecture); ours from our most transferable standard source"
    specs = [
        ("robust model's accuracy under white-box FGSM", 0.956, "fgsm", target, f"{MADRY}, source A"),
        ("robust model's accuracy under white-box PGD-40", 0.932, "pgd", target, f"{MADRY}, source A"),
        ("robust model's accuracy under FGSM from another architecture", 0.954, "fgsm", best["fgsm"], other),
        ("robust model's accuracy under PGD-40 from another architecture", 0.964, "pgd", best["pgd"], other),
        (
            "robust model's accuracy under PGD from a standard Madry CNN",
            0.9681,
            "pgd",
            madry,
            f"{CHALLENGE}, 'PGD on the natural net'",
        ),
    ]
    rows = []
    for quantity, value, attack, source, cited in specs:
        if target is None or source is None:
            rows.append(published_row(quantity, value, None, f"{cited}; no such model in this run"))
            continue
        note = (
            f"{cited}; published: Madry et al.'s PGD-trained CNN, eps 0.3, 10,000 points; ours: {names[target]} "
            f"attacked from {names[source]}, {budget}"
        )
        rows.append(published_row(quantity, value, as_number(accuracy[attack][source, target].item()), note))
    rows.append(
        published_row(
            "transfer matrix between standard and robust MNIST models",
            None,
            None,
            "Papernot et al. 2016 and Tramèr et al. 2017 publish transfer matrices for their own "
            "models; our references hold no MNIST figure of theirs to cite",
        )
    )
    return rows
