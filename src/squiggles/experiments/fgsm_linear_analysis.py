"""The maths and pictures of the FGSM experiment (Goodfellow, Shlens, Szegedy 2014, arXiv 1412.6572).

FGSM moves every input coordinate by ``eps`` in the direction of the sign of the loss gradient at the clean
point, ``x_adv = clip(x + eps * sign(grad_x J(x, y)))``. The gradient does not depend on ``eps``, so one
gradient per image gives the whole eps sweep; only a forward pass per budget is added.

The paper's explanation (§3): a linear score ``w . x`` moves by ``w . eta = eps * ||w||_1`` under
``eta = eps * sign(w)``, which is large in high dimension although no coordinate moves by more than eps. The
first-order change of the loss, ``grad . delta``, is the same statement for any model; how well it predicts
the measured change at large eps says how linear a model is along the attack.

Example:
    >>> import torch
    >>> x = torch.tensor([[0.0, 0.5, 1.0]])
    >>> fgsm_step(x, torch.tensor([[-1.0, 1.0, 1.0]]), 0.25, (0.0, 1.0)).tolist()
    [[0.0, 0.75, 1.0]]
    >>> error_rate(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    0.5
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from squiggles.report.figures import as_image, pyplot

Bounds = tuple[float, float]

# --- pure maths -----------------------------------------------------------------------------------------


def fgsm_step(x: Tensor, sign: Tensor, eps: float, bounds: Bounds | None) -> Tensor:
    """``x + eps * sign``, clipped to ``bounds`` (None: not clipped, as the paper's formula reads)."""
    out = x + eps * sign
    return out if bounds is None else out.clamp(*bounds)


def error_rate(logits: Tensor, labels: Tensor) -> float:
    """Fraction of examples whose prediction is not the label (the paper's "error rate")."""
    return (logits.argmax(1) != labels).float().mean().item()


def confidences(logits: Tensor, labels: Tensor) -> tuple[float, float | None]:
    """Mean max-softmax probability over all examples, and over the misclassified ones only.

    On a misclassified example the max probability is the probability of the (wrong) predicted class: the
    paper's "average confidence" (its CIFAR-10 sentence: "average probability ... assigned to the incorrect
    labels"; §6: "average confidence on a misclassified example"). None when nothing is misclassified.
    """
    conf, pred = torch.softmax(logits.double(), 1).max(1)
    wrong = pred != labels
    return conf.mean().item(), (conf[wrong].mean().item() if wrong.any() else None)


def mean_loss(logits: Tensor, labels: Tensor) -> float:
    return F.cross_entropy(logits.double(), labels).item()


def linearity_row(
    eps: float, clean: Tensor, adv: Tensor, labels: Tensor, first_order: Tensor, grad_l1: Tensor
) -> dict[str, float]:
    """The measured loss increase beside its first-order prediction ``grad . delta`` and the paper's
    ``eps * ||grad||_1`` (the same without clipping), and how far the logits moved per unit of eps."""
    measured = F.cross_entropy(adv.double(), labels, reduction="none") - F.cross_entropy(
        clean.double(), labels, reduction="none"
    )
    predicted = first_order.double().mean().item()
    return {
        "eps": eps,
        "loss_increase": measured.mean().item(),
        "first_order": predicted,
        "eps_grad_l1": eps * grad_l1.double().mean().item(),
        "measured_over_first_order": measured.mean().item() / predicted if predicted > 0 else None,
        "logit_change_per_eps": (adv - clean).double().norm(dim=1).mean().item() / eps,
    }


def is_softmax_regression(model: nn.Module) -> bool:
    """One affine layer to the logits (with only flattening or normalising around it)."""
    leaves = [m for m in model.modules() if not list(m.children())]
    affine = [m for m in leaves if isinstance(m, nn.Linear)]
    others = [
        m for m in leaves if not isinstance(m, (nn.Linear, nn.Flatten, nn.Identity)) and type(m).__name__ != "Normalize"
    ]
    return len(affine) == 1 and not others


# --- running FGSM over a grid of budgets ----------------------------------------------------------------


@dataclass
class Sweep:
    """One model's FGSM results at every budget of ``eps`` (all on the CPU).

    ``adv``: E x N x K logits; ``first_order``: E x N values of ``grad . (x_adv - x)``; ``grad_l1``: N;
    ``unclipped``: N x K logits at ``unclipped_eps`` without clipping to the bounds.
    """

    eps: list[float]
    labels: Tensor
    clean: Tensor
    adv: Tensor
    first_order: Tensor
    grad_l1: Tensor
    unclipped_eps: float
    unclipped: Tensor

    def at(self, eps: float) -> Tensor:
        return self.adv[self.eps.index(eps)]


def loss_grad(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Clean logits and the input gradient of the summed cross-entropy (each example's own gradient)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x)
    return logits.detach(), grad


@torch.no_grad()
def fgsm_sweep(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: list[float],
    bounds: Bounds,
    *,
    unclipped_eps: float,
    device: torch.device,
    batch_size: int = 500,
    progress: bool = False,
    desc: str = "fgsm",
) -> Sweep:
    """FGSM at every budget in ``eps`` from one gradient per image, in batches on ``device``."""
    parts: dict[str, list[Tensor]] = {k: [] for k in ("clean", "adv", "first", "l1", "unclipped")}
    for i in tqdm(range(0, len(x), batch_size), desc=desc, unit="batch", disable=not progress):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        logits, grad = loss_grad(model, xb, yb)
        sign = grad.sign()
        advs, firsts = [], []
        for e in eps:
            xa = fgsm_step(xb, sign, e, bounds)
            advs.append(logits if e == 0 else model(xa))
            firsts.append((grad * (xa - xb)).flatten(1).sum(1))
        parts["clean"].append(logits.cpu())
        parts["adv"].append(torch.stack(advs).cpu())
        parts["first"].append(torch.stack(firsts).cpu())
        parts["l1"].append(grad.flatten(1).abs().sum(1).cpu())
        parts["unclipped"].append(model(fgsm_step(xb, sign, unclipped_eps, None)).cpu())
    return Sweep(
        list(eps),
        y.cpu(),
        torch.cat(parts["clean"]),
        torch.cat(parts["adv"], 1),
        torch.cat(parts["first"], 1),
        torch.cat(parts["l1"]),
        unclipped_eps,
        torch.cat(parts["unclipped"]),
    )


@torch.no_grad()
def margin_rows(
    model: nn.Module, x: Tensor, y: Tensor, eps: list[float], device: torch.device, batch_size: int = 500
) -> list[dict[str, float]]:
    """For softmax regression: the drop of the margin ``z_y - z_t`` (t the clean runner-up) under unclipped
    FGSM, beside its largest possible value in the eps-ball, ``eps * ||w_y - w_t||_1`` (exact for a linear
    model: its margin is ``(w_y - w_t) . x + b``). FGSM follows the loss, not this margin, so the ratio is
    at most 1; it does not depend on eps, because every quantity here is linear in eps."""
    drops, bounds = [], []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        logits, grad = loss_grad(model, xb, yb)
        runner_up = logits.scatter(1, yb[:, None], -math.inf).argmax(1)
        pair = torch.stack([yb, runner_up], 1)
        xg = xb.detach().requires_grad_(True)
        with torch.enable_grad():
            z = model(xg).gather(1, pair)
            (w_diff,) = torch.autograd.grad((z[:, 0] - z[:, 1]).sum(), xg)
        margin = z.detach()[:, 0] - z.detach()[:, 1]
        for_eps = []
        for e in eps:
            za = model(fgsm_step(xb, grad.sign(), e, None)).gather(1, pair)
            for_eps.append(margin - (za[:, 0] - za[:, 1]))
        drops.append(torch.stack(for_eps).cpu())
        bounds.append(w_diff.flatten(1).abs().sum(1).cpu())
    drop, l1 = torch.cat(drops, 1).double(), torch.cat(bounds).double()
    return [
        {
            "eps": e,
            "margin_drop": drop[k].mean().item(),
            "eps_w_diff_l1": e * l1.mean().item(),
            "ratio": drop[k].mean().item() / (e * l1.mean().item()),
        }
        for k, e in enumerate(eps)
    ]


# --- tables -------------------------------------------------------------------------------------------


def sweep_rows(name: str, sweep: Sweep) -> list[dict[str, Any]]:
    """Per budget: error rate, mean confidence (all, and on the misclassified only), mean loss."""
    rows = []
    for eps, logits in zip(sweep.eps, sweep.adv, strict=True):
        conf, wrong = confidences(logits, sweep.labels)
        rows.append(
            {
                "model": name,
                "eps": eps,
                "error_rate": error_rate(logits, sweep.labels),
                "mean_confidence": conf,
                "wrong_confidence": wrong,
                "mean_loss": mean_loss(logits, sweep.labels),
            }
        )
    return rows


def linearity_rows(name: str, sweep: Sweep) -> list[dict[str, Any]]:
    return [
        {
            "model": name,
            **linearity_row(e, sweep.clean, sweep.adv[k], sweep.labels, sweep.first_order[k], sweep.grad_l1),
        }
        for k, e in enumerate(sweep.eps)
        if e > 0
    ]


def model_row(
    name: str, info: dict[str, Any], model: nn.Module, sweep: Sweep, eps: float, small_eps: float, agreement: float
) -> dict[str, Any]:
    """One model at the headline budget, with its clean accuracy and the unclipped variant."""
    at = sweep.at(eps)
    conf, wrong = confidences(at, sweep.labels)
    k = sweep.eps.index(small_eps)
    first = linearity_row(small_eps, sweep.clean, sweep.adv[k], sweep.labels, sweep.first_order[k], sweep.grad_l1)
    return {
        "model": name,
        "source": info["source"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "softmax_regression": is_softmax_regression(model),
        "clean_accuracy": 1 - error_rate(sweep.clean, sweep.labels),
        "eps": eps,
        "error_rate": error_rate(at, sweep.labels),
        "mean_confidence": conf,
        "wrong_confidence": wrong,
        "error_rate_unclipped": error_rate(sweep.unclipped, sweep.labels),
        "first_order_ratio_small_eps": first["measured_over_first_order"],
        # float32 softmax saturates on very confident points: their gradient is exactly 0 and FGSM cannot move
        "zero_gradient_fraction": (sweep.grad_l1 == 0).float().mean().item(),
        "library_fgsm_agreement": agreement,
    }


def library_agreement(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    sweep: Sweep,
    eps: float,
    bounds: tuple[float, float],
    device: torch.device,
    batch_size: int,
) -> float:
    """Fraction of predictions on which `squiggles.attacks.fgsm` agrees with the sweep at ``eps`` (a cross-check
    of the one-gradient sweep against the library's attack; sign flips of near-zero gradients may differ)."""
    from squiggles.attacks import fgsm
    from squiggles.threat import Linf

    preds = [
        fgsm(model, x[i : i + batch_size].to(device), y[i : i + batch_size].to(device), Linf(eps, bounds)).pred.cpu()
        for i in range(0, len(x), batch_size)
    ]
    return (torch.cat(preds) == sweep.at(eps).argmax(1)).float().mean().item()


# --- figures --------------------------------------------------------------------------------------------


def draw_sweep(path: Path, rows: list[dict[str, Any]], published: list[tuple[str, float, float, float]]) -> Path:
    """Error rate and confidence on the misclassified examples against eps, one line per model; the paper's
    points (label, eps, error %, confidence %) as stars."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        eps = [r["eps"] for r in mine]
        axes[0].plot(eps, [100 * r["error_rate"] for r in mine], marker="o", label=name)
        conf = [(r["eps"], 100 * r["wrong_confidence"]) for r in mine if r["wrong_confidence"] is not None]
        axes[1].plot([c[0] for c in conf], [c[1] for c in conf], marker="o", label=name)
    for label, eps, err, conf in published:
        axes[0].plot([eps], [err], marker="*", markersize=12, linestyle="none", label=f"paper: {label}")
        axes[1].plot([eps], [conf], marker="*", markersize=12, linestyle="none", label=f"paper: {label}")
    axes[0].set_ylabel("error rate on FGSM examples (%)")
    axes[1].set_ylabel("mean confidence on misclassified (%)")
    for ax in axes:
        ax.set_xlabel("eps (L-inf, pixels in [0, 1])")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_linearity(path: Path, rows: list[dict[str, Any]]) -> Path:
    """How far the logits move per unit of eps (flat = linear), and measured over first-order loss change."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        eps = [r["eps"] for r in mine]
        axes[0].plot(eps, [r["logit_change_per_eps"] for r in mine], marker="o", label=name)
        ratio = [(r["eps"], r["measured_over_first_order"]) for r in mine if r["measured_over_first_order"]]
        axes[1].plot([p[0] for p in ratio], [p[1] for p in ratio], marker="o", label=name)
    axes[0].set_ylabel("mean ||z(x_adv) - z(x)||_2 / eps")
    axes[1].set_ylabel("loss increase / (grad . delta)")
    axes[1].axhline(1.0, color="gray", linewidth=0.8, linestyle="--")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("eps (L-inf)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_examples(
    path: Path, x: Tensor, x_adv: Tensor, clean: Tensor, adv: Tensor, labels: Tensor, bounds: Bounds, title: str
) -> Path:
    """Columns of clean image, perturbation and adversarial image, with predictions and confidences."""
    plt = pyplot()
    n = len(x)
    fig, axes = plt.subplots(3, n, figsize=(1.7 * n, 5.4), squeeze=False)
    pc, pa = torch.softmax(clean.double(), 1), torch.softmax(adv.double(), 1)
    delta = (x_adv - x).mean(1)
    scale = max(delta.abs().max().item(), 1e-12)
    for i in range(n):
        wrong = int(pa[i].argmax()) != int(labels[i])
        axes[0, i].imshow(as_image(x[i], bounds), cmap="gray", vmin=0, vmax=1)
        axes[0, i].set_title(f"label {int(labels[i])}: {int(pc[i].argmax())} ({pc[i].max():.2f})", fontsize=8)
        axes[1, i].imshow(delta[i].numpy(), cmap="RdBu_r", vmin=-scale, vmax=scale)
        axes[1, i].set_title("perturbation", fontsize=8)
        axes[2, i].imshow(as_image(x_adv[i], bounds), cmap="gray", vmin=0, vmax=1)
        axes[2, i].set_title(
            f"{int(pa[i].argmax())} ({pa[i].max():.2f})", fontsize=8, color="crimson" if wrong else "black"
        )
        for ax in axes[:, i]:
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
