"""Wormholes (Gaziv et al. 2023): do perturbations made against a model change what *others* see?

Targeted L2 attacks at growing budgets are made against (a) a standard model and (b) a robust model, and
(c) random perturbations of the same norm are drawn. Each is shown to held-out observer models (robust models
of other seeds and architectures, never attacked), standing in for the human observers of the paper. The
paper's finding: perturbations from robust models move human percepts toward the target class at budgets
where those from standard models and random noise do nothing.

Example:
    >>> import torch
    >>> x = torch.full((3, 1, 4, 4), 0.5)
    >>> d = random_perturbation(x, torch.tensor([0.0, 1.0, 2.0]), (0.0, 1.0), torch.Generator().manual_seed(0))
    >>> [round(v, 3) for v in (d - x).flatten(1).norm(dim=1).tolist()]
    [0.0, 1.0, 2.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from squiggles.report.figures import pyplot

RANDOM = "random"


def random_perturbation(x: Tensor, budgets: Tensor, bounds: tuple[float, float], gen: torch.Generator) -> Tensor:
    """``x`` plus a Gaussian direction of L2 norm ``budgets`` (per example), clipped to the bounds.

    Clipping can only shorten the perturbation, so the norms actually used are measured, not assumed.
    """
    noise = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
    noise = noise / noise.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
    return (x + budgets.view(-1, *([1] * (x.dim() - 1))) * noise).clamp(*bounds)


@torch.no_grad()
def _preds(model: Any, x: Tensor, batch: int = 1000) -> Tensor:
    return torch.cat([model(x[i:i + batch]).argmax(1).cpu() for i in range(0, len(x), batch)])


def _perturbed(source: str, models: dict[str, Any], x: Tensor, labels: Tensor, targets: Tensor,
               eps: Tensor, bounds: tuple[float, float], steps: int, seed: int) -> tuple[Tensor, Tensor | None]:
    """The perturbed inputs for one source, and whether they reach the target on the source model itself."""
    from squiggles.attacks import pgd
    from squiggles.goals import Targeted
    from squiggles.threat import L2

    if source == RANDOM:
        return random_perturbation(x, eps, bounds, torch.Generator().manual_seed(seed)), None
    result = pgd(models[source], x, Targeted(targets, labels), L2(eps, bounds), steps=steps, seed=seed)
    return result.x_adv, result.success.cpu()


def wormholes(models: dict[str, Any], observers: Sequence[Any], x: Tensor, labels: Tensor, targets: Tensor,
              budgets: Sequence[float], *, steps: int = 40, seed: int = 0,
              bounds: tuple[float, float] = (0.0, 1.0)) -> list[dict[str, Any]]:
    """One row per (source, budget): the observers' target and abandon rates (averaged over observers).

    ``models`` maps a source name to the model attacked; the random source is added. ``target_rate``: share
    of (image, observer) pairs where the observer reports the target class; ``abandon_rate``: where it no
    longer reports the true class; ``source_success``: the attack reached the target on its own model;
    ``followed_rate``: the target rate on just those images (how often a fooled model takes the observers along).
    """
    n, b = len(x), len(budgets)
    xs = x.repeat(b, *([1] * (x.dim() - 1)))
    ys, ts = labels.repeat(b), targets.repeat(b)
    eps = torch.tensor(budgets, dtype=x.dtype, device=x.device).repeat_interleave(n)
    rows = []
    for source in [*models, RANDOM]:
        x_adv, reached = _perturbed(source, models, xs, ys, ts, eps, bounds, steps, seed)
        norms = (x_adv - xs).flatten(1).norm(dim=1).cpu()
        seen = torch.stack([_preds(obs, x_adv) for obs in observers])  # observers x (b * n)
        for k, budget in enumerate(budgets):
            part = slice(k * n, (k + 1) * n)
            said = seen[:, part]
            fooled = reached[part] if reached is not None else None
            rows.append({
                "source": source, "budget": float(budget),
                "target_rate": (said == targets.cpu()).float().mean().item(),
                "abandon_rate": (said != labels.cpu()).float().mean().item(),
                "source_success": None if fooled is None else fooled.float().mean().item(),
                "followed_rate": _followed(said, targets.cpu(), fooled),
                "mean_norm": norms[part].mean().item(),
            })
    return rows


def _followed(said: Tensor, targets: Tensor, fooled: Tensor | None) -> float | None:
    """Share of (image, observer) pairs reporting the target among images that fooled their own model."""
    if fooled is None or not bool(fooled.any()):
        return None
    return (said[:, fooled] == targets[fooled]).float().mean().item()


def pooled_followed(rows: list[dict[str, Any]], source: str) -> float | None:
    """``followed_rate`` over every budget of ``source``, weighted by how many images fooled the model."""
    mine = [r for r in rows if r["source"] == source and r.get("followed_rate") is not None]
    weight = sum(r["source_success"] for r in mine)
    return sum(r["followed_rate"] * r["source_success"] for r in mine) / weight if weight else None


def _series(rows: list[dict[str, Any]], source: str, key: str) -> tuple[list[float], list[float]]:
    mine = [r for r in rows if r["source"] == source]
    return [r["budget"] for r in mine], [100 * r[key] for r in mine]


def draw(rows: list[dict[str, Any]], path: Path, labels: dict[str, str]) -> Path:
    """Two panels against the budget: observers reporting the target, and observers abandoning the truth."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    sources = list(dict.fromkeys(r["source"] for r in rows))
    for ax, key, title in ((axes[0], "target_rate", "observers report the target class"),
                           (axes[1], "abandon_rate", "observers abandon the true class")):
        for source in sources:
            ax.plot(*_series(rows, source, key), marker="o", label=labels.get(source, source),
                    linestyle="--" if source == RANDOM else "-")
        ax.set_xlabel("L2 budget")
        ax.set_ylabel("% of images x observers")
        ax.set_ylim(-2, 102)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def describe(rows: list[dict[str, Any]], robust: str, standard: str) -> str:
    """What the numbers show at the largest budget, in a sentence or three, whatever they show."""
    top = max(r["budget"] for r in rows)
    at = {r["source"]: r for r in rows if r["budget"] == top}
    r, s, z = at[robust], at[standard], at[RANDOM]

    def pct(row: dict[str, Any], key: str) -> str:
        return f"{100 * row[key]:.0f}%"

    text = (f"At L2 budget {top:g}, perturbations made against the robust model led the observers to report the "
            f"target class for {pct(r, 'target_rate')} of the images and to abandon the true class for "
            f"{pct(r, 'abandon_rate')}; against the standard model the same budget gave {pct(s, 'target_rate')} "
            f"and {pct(s, 'abandon_rate')}, and random noise of that norm {pct(z, 'target_rate')} and "
            f"{pct(z, 'abandon_rate')}. ")
    fr, fs = pooled_followed(rows, robust), pooled_followed(rows, standard)
    if fr is not None and fs is not None:
        text += (f"Where an attack fooled its own model, the observers followed it {100 * fr:.0f}% of the time for "
                 f"the robust model and {100 * fs:.0f}% for the standard model (all budgets pooled). ")
    margin = r["target_rate"] - max(s["target_rate"], z["target_rate"])
    if margin >= 0.10:
        text += ("As Gaziv et al. found with people, the robust model's perturbations carry over to independent "
                 "observers more than the standard model's" + (", and noise of the same size does nothing."
                                                               if z["target_rate"] < 0.02 else "."))
        if s["target_rate"] >= 0.2:
            text += (f" Unlike people, though, the observers here are also moved by the standard model's largest "
                     f"perturbations ({pct(s, 'target_rate')}): the finding is the gap, not an absence of transfer.")
        return text
    if margin > 0:
        return text + ("The robust model's perturbations move the observers more, but by less than 10 points: the "
                       "expected shape is only faintly there.")
    return text + ("The expected shape did not appear: the robust model's perturbations did not move the observers "
                   "more than the others did.")
