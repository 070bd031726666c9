"""Sanity checks that catch an evaluation being fooled, each with what it means and what to do.

They follow the "indicators of attack failure" of the literature (Carlini et al. 2019, arXiv 1902.06705;
Croce & Hein 2020's AutoAttack flags; Pintor et al. 2022, arXiv 2106.09947). Each check is cheap: it looks
at a small sample of points or at numbers the cascade already produced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from squiggles.evaluation.cascade import REUSED
from squiggles.evaluation.result import EvalResult
from squiggles.threat import ThreatModel

Flag = dict[str, Any]
SAMPLE = 100


def flag(code: str, message: str, advice: str, severity: float = 1.0, **details: Any) -> Flag:
    """A raised check. ``severity``: the share of points it concerns (0 to 1), so the worst is listed first."""
    return {"code": code, "message": message, "advice": advice, "severity": round(float(severity), 4), **details}


def worst_first(flags: list[Flag]) -> list[Flag]:
    return sorted(flags, key=lambda f: -float(f.get("severity", 1.0)))


def run_checks(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    result: EvalResult,
    device: torch.device,
    seed: int,
) -> list[Flag]:
    """All checks on up to ``SAMPLE`` correctly classified points; returns the flags raised."""
    from squiggles.attacks._core import attack_mode

    idx = result.clean_correct.nonzero().flatten()[:SAMPLE]
    xs, ys = x[idx].to(device), y[idx].to(device)
    flags: list[Flag | None] = []
    with attack_mode(model):
        logits = _forward(model, xs)
        flags.append(check_probabilities(logits))
        flags.append(check_randomness(model, xs, logits))
        if len(xs):
            flags.append(check_gradients(model, xs, ys))
    flags.append(check_disagreement(result))
    if len(xs):
        flags.append(check_eps_zero(model, xs, ys, threat, seed))
        flags.append(check_large_eps(model, xs, ys, threat, seed))
    flags.append(check_curve_flat(result))
    flags.append(check_black_box(result))
    return worst_first([f for f in flags if f is not None])


def _forward(model: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x)


def check_probabilities(logits: Tensor) -> Flag | None:
    if (
        len(logits)
        and (logits >= 0).all()
        and (logits <= 1).all()
        and torch.allclose(logits.sum(1), torch.ones_like(logits[:, 0]), atol=1e-3)
    ):
        return flag(
            "probability-outputs",
            "the model's outputs are probabilities (rows in [0, 1] summing to 1), "
            "not logits; a saturated softmax hides gradients",
            "remove the final softmax so the model returns logits "
            "(squiggles.evaluation.remedies.logits_from_probabilities); evaluate attacks the logits by itself "
            "and reports the lower figure",
        )
    return None


def check_randomness(model: Callable[[Tensor], Tensor], x: Tensor, logits: Tensor) -> Flag | None:
    again = _forward(model, x)
    if not torch.allclose(again, logits, rtol=1e-4, atol=1e-5):
        frac = (again.argmax(1) != logits.argmax(1)).float().mean().item()
        return flag(
            "randomized-model",
            f"two forward passes on the same inputs differ ({100 * frac:.0f}% of labels "
            "changed): the model is randomised, so one lucky pass can make a point look robust",
            "evaluate the expectation over transformation "
            "(squiggles.evaluation.remedies.expectation_over_transformation(model, samples=16)); evaluate "
            "runs it by itself and reports the lower figure",
            severity=max(frac, 0.5),
        )
    return None


def check_gradients(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> Flag | None:
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = torch.nn.functional.cross_entropy(model(xg), y, reduction="sum")
        if not loss.requires_grad:
            grad = torch.zeros_like(xg)
        else:
            (grad,) = torch.autograd.grad(loss, xg, allow_unused=True)
            grad = torch.zeros_like(xg) if grad is None else grad
    norms = grad.flatten(1).abs().amax(1)
    tiny = float(torch.finfo(x.dtype).eps) * 1e-3
    frac = (norms <= tiny).float().mean().item()
    if frac > 0.1:
        return flag(
            "vanishing-gradients",
            f"the input gradient is zero or vanishing for {100 * frac:.0f}% of correctly "
            "classified points: gradient attacks have nothing to follow (gradient masking)",
            "replace non-differentiable steps by a straight-through estimate (BPDA, "
            "squiggles.evaluation.remedies.straight_through) and rely on the black-box stage (Square)",
            severity=frac,
        )
    return None


def check_disagreement(result: EvalResult) -> Flag | None:
    bad = sum(result.disagreements)
    if bad:
        return flag(
            "non-deterministic",
            f"the final forward pass disagreed with the attacks' own verdict on {bad} "
            "point(s); they are counted as not robust",
            "make the model deterministic (eval mode, no dropout or random transforms at test time)",
            severity=bad / max(1, result.n * len(result.eps)),
        )
    return None


def check_eps_zero(
    model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, threat: ThreatModel, seed: int
) -> Flag | None:
    from squiggles.attacks.registry import get_attack

    res = get_attack("apgd-ce")(model, x, y, threat.with_eps(0.0), steps=5, seed=seed)
    if res.robust_accuracy != 1.0:
        return flag(
            "eps-zero",
            f"at eps = 0 accuracy is {100 * res.robust_accuracy:.1f}% on points classified "
            "correctly a moment before: the model is not a fixed function of its input",
            "check for randomness, train-mode layers, or inputs outside the bounds",
            severity=1 - res.robust_accuracy,
        )
    return None


def check_large_eps(
    model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, threat: ThreatModel, seed: int
) -> Flag | None:
    from squiggles.attacks.registry import get_attack

    lo, hi = threat.bounds
    d = x[0].numel()
    big = {"linf": hi - lo, "l2": (hi - lo) * d**0.5, "l1": (hi - lo) * d}[threat.name]
    res = get_attack("apgd-ce")(model, x, y, threat.with_eps(big), steps=20, seed=seed)
    if res.robust_accuracy > 0.1:
        return flag(
            "large-eps",
            f"with eps = {big:g}, enough to reach any input, {100 * res.robust_accuracy:.0f}% of "
            "points stay correct: the attack is not working on this model",
            "look for gradient masking (quantisation, saturated outputs, non-differentiable layers)",
            severity=res.robust_accuracy,
        )
    return None


def check_curve_flat(result: EvalResult) -> Flag | None:
    if (
        len(result.eps) > 1
        and result.eps[-1] > 0
        and result.accuracy_at(-1) >= result.accuracy_at(0) - 1e-9
        and result.accuracy_at(0) > 0
    ):
        return flag(
            "flat-curve",
            f"accuracy does not fall from eps {result.eps[0]:g} to {result.eps[-1]:g}",
            "a real model loses accuracy as the budget grows; check for gradient masking",
        )
    return None


def check_black_box(result: EvalResult) -> Flag | None:
    """Square breaking points the gradient attacks left standing, at every budget where it did, worst first."""
    rows = []
    for k, eps in enumerate(result.eps):
        codes = result.broken_by[k]
        for si, stage in enumerate(result.stages):
            earlier_white = [j for j, s in enumerate(result.stages[:si]) if s["attack"] != "square"]
            if stage["attack"] != "square" or not earlier_white:
                continue
            broken = int((codes == si).sum())
            # Standing after the gradient attacks: not broken before this stage (nor at a smaller budget).
            standing = int((result.clean_correct & (codes != REUSED) & ~_broken_before(codes, si)).sum())
            if broken:
                rows.append({"eps": eps, "stage": stage["name"], "broken": broken, "standing": standing,
                             "share": round(broken / max(standing, 1), 4)})
    if not rows:
        return None
    rows.sort(key=lambda r: (-r["share"], -r["broken"]))
    norm = result.threat.get("norm", "").upper().replace("LINF", "Linf")
    parts = [f"at {norm} {r['eps']:g}, {r['stage']} broke {r['broken']} of {r['standing']} points that the "
             f"gradient attacks left standing ({100 * r['share']:.0f}%)" for r in rows]
    return flag(
        "black-box-stronger",
        "; ".join(parts) + ": gradients are masked where the share is large",
        "trust the cascade's number (it includes Square); where the share is 5% or more, evaluate also runs "
        "FAB-T and Square with four times the queries and reports the lower figure; investigate the gradients",
        severity=rows[0]["share"],
        budgets=rows,
    )


def _broken_before(codes: Tensor, si: int) -> Tensor:
    return (codes >= 0) & (codes < si)
