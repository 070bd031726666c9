"""The squiggles figure (Madry et al. 2018, Figure 12): large targeted L2 attacks on a few fixed digits.

Each digit is pushed toward every other class at several L2 budgets. Against a standard model the
perturbation that wins is faint noise; against a robust model the attack has to draw the target digit's
strokes, so the adversarial image looks like the target to a person too.

Example:
    >>> import torch
    >>> from squiggles.models import build_model
    >>> net = build_model("linear", in_shape=(1, 4, 4), num_classes=3)
    >>> grid = targeted_grid(net, torch.rand(2, 1, 4, 4), torch.tensor([0, 1]), [0.5, 1.0], 3, steps=5)
    >>> tuple(grid.adv.shape), tuple(grid.targets.shape)
    ((2, 2, 2, 1, 4, 4), (2, 2))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from squiggles.report.figures import as_image, pyplot


@dataclass
class SquigglesGrid:
    """Targeted attacks on D digits toward their T = K - 1 other classes at B budgets (all on the CPU).

    ``adv``: B x D x T x (input shape); ``pred``, ``conf`` (softmax probability of ``pred``), ``norms``: B x D x T.
    """

    budgets: list[float]
    x: Tensor
    labels: Tensor
    targets: Tensor
    adv: Tensor
    pred: Tensor
    conf: Tensor
    norms: Tensor
    clean_pred: Tensor
    clean_conf: Tensor
    bounds: tuple[float, float]

    def summary(self) -> list[dict[str, Any]]:
        """Per budget: how often the target was reached, the mean confidence in it, the mean L2 norm used."""
        rows = []
        for b, eps in enumerate(self.budgets):
            hit = self.pred[b] == self.targets
            rows.append({"budget": eps, "target_reached": hit.float().mean().item(),
                         "mean_confidence": self.conf[b].mean().item(), "mean_norm": self.norms[b].mean().item()})
        return rows


def other_classes(labels: Tensor, num_classes: int) -> Tensor:
    """D x (K - 1): for each label, every other class in increasing order."""
    all_classes = torch.arange(num_classes).expand(len(labels), num_classes)
    return all_classes[all_classes != labels.cpu().unsqueeze(1)].view(len(labels), num_classes - 1)


@torch.no_grad()
def _predict(model: Any, x: Tensor) -> tuple[Tensor, Tensor]:
    probs = torch.softmax(model(x).float(), 1)
    conf, pred = probs.max(1)
    return pred.cpu(), conf.cpu()


def targeted_grid(model: Any, x: Tensor, labels: Tensor, budgets: list[float], num_classes: int, *,
                  steps: int = 60, seed: int = 0, bounds: tuple[float, float] = (0.0, 1.0)) -> SquigglesGrid:
    """Targeted L2 PGD from each digit in ``x`` toward each other class at each budget, in one batch.

    The per-example eps lets every (budget, digit, target) run in one attack call; PGD returns the iterate
    that reaches the target with the highest confidence.
    """
    from squiggles.attacks import pgd
    from squiggles.goals import Targeted
    from squiggles.threat import L2

    d, dev = len(x), x.device
    targets = other_classes(labels, num_classes)
    t = targets.shape[1]
    b = len(budgets)
    xs = x.unsqueeze(0).unsqueeze(2).expand(b, d, t, *x.shape[1:]).reshape(b * d * t, *x.shape[1:])
    goal = Targeted(targets.unsqueeze(0).expand(b, d, t).reshape(-1).to(dev),
                    labels.view(1, d, 1).expand(b, d, t).reshape(-1).to(dev))
    eps = torch.tensor(budgets, dtype=x.dtype, device=dev).view(b, 1, 1).expand(b, d, t).reshape(-1)
    result = pgd(model, xs, goal, L2(eps, bounds), steps=steps, seed=seed)
    pred, conf = _predict(model, result.x_adv)
    clean_pred, clean_conf = _predict(model, x)
    shape = (b, d, t)
    return SquigglesGrid(list(budgets), x.cpu(), labels.cpu(), targets, result.x_adv.cpu().view(*shape, *x.shape[1:]),
                         pred.view(shape), conf.view(shape), result.norms.cpu().view(shape), clean_pred, clean_conf,
                         bounds)


def pick_digits(labels: Tensor, k: int) -> list[int]:
    """Indices of the first ``k`` points with distinct labels (a fixed, reproducible choice)."""
    seen: dict[int, int] = {}
    for i, y in enumerate(labels.tolist()):
        if y not in seen:
            seen[y] = i
        if len(seen) == k:
            break
    return list(seen.values())


def draw_grid(grid: SquigglesGrid, path: Path, title: str) -> Path:
    """Rows: each digit at each budget; first column the clean digit, then the attack toward each class."""
    plt = pyplot()
    b, d, t = grid.pred.shape
    fig, axes = plt.subplots(d * b, t + 1, figsize=(0.95 * (t + 1), 1.02 * d * b), squeeze=False)
    for i in range(d):
        for j, eps in enumerate(grid.budgets):
            row = axes[i * b + j]
            if j == 0:
                row[0].imshow(as_image(grid.x[i], grid.bounds), cmap="gray", vmin=0, vmax=1)
                row[0].set_title(f"clean: {int(grid.clean_pred[i])} ({grid.clean_conf[i]:.2f})", fontsize=7)
            row[0].text(-0.15, 0.5, f"L2 {eps:g}", transform=row[0].transAxes, ha="right", va="center", fontsize=7)
            for k in range(t):
                hit = bool(grid.pred[j, i, k] == grid.targets[i, k])
                row[k + 1].imshow(as_image(grid.adv[j, i, k], grid.bounds), cmap="gray", vmin=0, vmax=1)
                row[k + 1].set_title(f"→{int(grid.targets[i, k])}: {int(grid.pred[j, i, k])} "
                                     f"({grid.conf[j, i, k]:.2f})", fontsize=6, color="darkgreen" if hit else "black")
            for ax in row:
                ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0.03, 0, 1, 0.98))
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def draw_perturbations(grids: dict[str, SquigglesGrid], path: Path, budget: int = -1) -> Path:
    """Signed heat maps of the perturbation at one budget: a row per digit and model, a column per target."""
    plt = pyplot()
    names = list(grids)
    first = grids[names[0]]
    _, d, t = first.pred.shape
    fig, axes = plt.subplots(d * len(names), t, figsize=(0.95 * t, 1.05 * d * len(names)), squeeze=False)
    for i in range(d):
        for m, name in enumerate(names):
            grid = grids[name]
            delta = (grid.adv[budget, i] - grid.x[i]).mean(1)  # average over channels: T x H x W
            scale = max(delta.abs().max().item(), 1e-12)
            row = axes[i * len(names) + m]
            row[0].text(-0.15, 0.5, f"{name}\ndigit {int(grid.labels[i])}", transform=row[0].transAxes,
                        ha="right", va="center", fontsize=7)
            for k in range(t):
                row[k].imshow(delta[k].numpy(), cmap="RdBu_r", vmin=-scale, vmax=scale)
                row[k].set_title(f"→{int(grid.targets[i, k])}", fontsize=7)
                row[k].axis("off")
    fig.suptitle(f"perturbations at L2 budget {first.budgets[budget]:g} (red adds ink, blue removes it)", fontsize=9)
    fig.tight_layout(rect=(0.08, 0, 1, 0.97))
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
