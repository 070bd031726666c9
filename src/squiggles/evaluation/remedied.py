"""Remedies the evaluation applies by itself: when a sanity check fires for a cause with a known remedy, the
points still robust are attacked again through the remedy, and the headline is the per-point worst case.

A flag beside a flattering number is the failure AutoAttack was made to end (Croce & Hein 2020, arXiv
2003.01690; Carlini et al. 2019, arXiv 1902.06705, "evaluate against adaptive attacks"). So `evaluate`
does not stop at the flag:

- ``probability-outputs``: attack the logits behind the softmax (the model's last ``nn.Softmax`` module
  switched off) or, where none can be found, the log-probabilities; either standardised per example, so that
  a huge temperature in front of the softmax cannot saturate the cross-entropy either.
- ``randomized-model``: expectation over transformation (EOT, Athalye et al. 2018, arXiv 1802.00420).
- ``vanishing-gradients``: straight-through gradients (BPDA, same paper) for each leading parameter-free layer
  of an ``nn.Sequential`` whose gradient vanishes; then the masking remedy below, through them.
- ``black-box-stronger`` on a real share of the points (or vanishing gradients): the masking remedy, FAB-T
  (Croce & Hein 2020's boundary attack, AutoAttack's third stage) then the black-box stage with four times the
  queries. For L1, which neither supports, APGD-T over nine targets.

Every remedy except EOT computes the same function as the model, so a point it breaks is broken for the model
too. A point counts as robust only if it survives the evaluation with and without every remedy.

Example:
    >>> import squiggles                                                  # doctest: +SKIP
    >>> res = squiggles.evaluate(softmax_model, test, Linf(0.3), "standard")
    >>> res.robust_accuracy, res.unremedied_robust_accuracy, res.remedies[0]["remedy"]
    (0.75, 0.99, 'logits')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from squiggles.evaluation.cascade import REUSED
from squiggles.evaluation.ensembles import Stage
from squiggles.evaluation.remedies import LogitsFromProbabilities, expectation_over_transformation, straight_through

# Black-box-stronger triggers the extra queries only where Square broke at least this share of the points the
# gradient attacks left standing: one lucky point in 700 is noise, 5% is a mask.
MASKING_SHARE = 0.05
QUERY_FACTOR = 4
EOT_SAMPLES = 16
DEFAULT_QUERIES = 5000


@dataclass
class Remedy:
    """A model to attack instead of the original, the stages to attack it with, and why."""

    name: str
    reason: list[str]
    model: Callable[[Tensor], Tensor]
    stages: tuple[Stage, ...]
    description: str


def plan_remedies(
    model: Callable[[Tensor], Tensor], flags: list[dict[str, Any]], stages: tuple[Stage, ...], sample: Tensor,
    norm: str = "linf",
) -> list[Remedy]:
    """The remedies the raised ``flags`` call for (``sample``: a few inputs to identify transforms on; ``norm``:
    the threat's, which decides the attacks a masking remedy can use)."""
    codes = {f["code"]: f for f in flags}
    plans: list[Remedy] = []
    if "probability-outputs" in codes:
        plans.append(Remedy("logits", ["probability-outputs"], logits_model(model), stages,
                            "the cascade again on the logits behind the softmax"))
    if "randomized-model" in codes and isinstance(model, nn.Module):
        plans.append(Remedy("eot", ["randomized-model"], expectation_over_transformation(model, EOT_SAMPLES), stages,
                            f"the cascade again on the mean logits of {EOT_SAMPLES} passes (EOT)"))
    bpda, layers = model, []
    if "vanishing-gradients" in codes and "probability-outputs" not in codes:
        bpda, layers = straight_through_model(model, sample)
        if layers:
            plans.append(Remedy("bpda", ["vanishing-gradients"], bpda, stages,
                                f"the cascade again with straight-through gradients through {', '.join(layers)}"))
    # Vanishing gradients that the probability outputs explain are the logits remedy's to fix.
    vanishing = "vanishing-gradients" in codes and "probability-outputs" not in codes
    masking = vanishing or _black_box_share(codes.get("black-box-stronger")) >= MASKING_SHARE
    if masking and "randomized-model" not in codes:
        reason = (["vanishing-gradients"] if vanishing else []) + (["black-box-stronger"] if "black-box-stronger" in
                                                                    codes else [])
        extra = _masking_stages(stages, norm)
        plans.append(Remedy("masking", reason, bpda, extra,
                            " then ".join(f"{s.name} ({_what(s)})" for s in extra)
                            + (" through the straight-through gradients" if layers else "")))
    return plans


def apply_remedies(result: Any, x: Tensor, y: Tensor, plans: list[Remedy], run: Callable[..., Any]) -> Any:
    """Attack the points still robust through each remedy and fold the breaks into ``result`` in place.

    ``run(model, x, y, stages)`` is the evaluation itself at the result's budgets, without checks or remedies.
    """
    if not plans:
        return result
    result.unremedied = [result.accuracy_at(k) for k in range(len(result.eps))]
    for plan in plans:
        standing = result.robust.any(0).nonzero().flatten()
        before = [result.accuracy_at(k) for k in range(len(result.eps))]
        record: dict[str, Any] = {"remedy": plan.name, "reason": plan.reason, "description": plan.description,
                                  "attacked_points": len(standing)}
        if len(standing):
            sub = run(plan.model, x[standing], y[standing], plan.stages)
            _fold(result, sub, standing, plan)
        record["robust_accuracy_before"] = before
        record["robust_accuracy_after"] = [result.accuracy_at(k) for k in range(len(result.eps))]
        record["broke"] = [round((b - a) * result.n) for b, a in zip(before, record["robust_accuracy_after"],
                                                                   strict=True)]
        result.remedies.append(record)
    return result


def _fold(result: Any, sub: Any, idx: Tensor, plan: Remedy) -> None:
    """Per-point worst case of ``result`` and the remedied sub-evaluation ``sub`` on the points ``idx``."""
    offset = len(result.stages)
    result.stages = result.stages + [{**s, "name": f"{s['name']} [{plan.name}]"} for s in sub.stages]
    for k in range(len(result.eps)):
        result.stage_stats[k] = result.stage_stats[k] + sub.stage_stats[k]
        was = result.robust[k, idx]
        broke = was & ~sub.robust[k]
        where = idx[broke]
        codes = sub.broken_by[k][broke]
        # A point the remedy broke at a smaller budget is broken here by the same input (REUSED); so is one the
        # remedied model (EOT's mean) already misclassifies unattacked.
        result.broken_by[k, where] = torch.where(codes >= 0, codes + offset, torch.full_like(codes, REUSED))
        result.robust[k, where] = False
        if result.x_adv is not None and sub.x_adv is not None:
            result.x_adv[k, where] = sub.x_adv[k][broke]


def _masking_stages(stages: tuple[Stage, ...], norm: str) -> tuple[Stage, ...]:
    """For masked gradients: FAB-T, which follows the decision boundary's geometry instead of a loss (it broke
    15 of the 18 points AutoAttack's FAB-T broke and `standard` did not on the panel's Linf-trained model in
    L2), then the cascade's black-box stage (its options kept) with ``QUERY_FACTOR`` times the queries."""
    squares = [s for s in stages if s.attack == "square"]
    options = dict(squares[-1].options) if squares else {}
    options["queries"] = QUERY_FACTOR * int(options.get("queries", DEFAULT_QUERIES))
    more = Stage("square", options, f"Square x{QUERY_FACTOR}")
    if norm not in ("linf", "l2"):
        return (Stage("apgd-t", {"steps": 100, "n_target_classes": 9}, "APGD-T x9"),)
    return (Stage("fab-t", {"steps": 100, "n_target_classes": 9}, "FAB-T"), more)


def _what(stage: Stage) -> str:
    return ", ".join(f"{k} {v}" for k, v in stage.options.items())


def _black_box_share(flag: dict[str, Any] | None) -> float:
    if not flag:
        return 0.0
    return max((b["share"] for b in flag.get("budgets", [])), default=0.0)


# --- the remedied models ---------------------------------------------------------------------------------


class SoftmaxOff(nn.Module):
    """The model with one of its ``nn.Softmax`` modules passing its input through: the logits behind it."""

    def __init__(self, model: nn.Module, softmax: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._softmax = [softmax]  # a list, so the module is not registered twice

    def forward(self, x: Tensor) -> Tensor:
        handle = self._softmax[0].register_forward_hook(lambda _m, inputs, _out: inputs[0])
        try:
            return self.model(x)
        finally:
            handle.remove()


class Standardised(nn.Module):
    """Logits divided by their per-example spread (held constant for the gradient): the same predictions, and a
    cross-entropy that a huge temperature (logits times 1000 before the softmax) can no longer saturate."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        z = self.model(x)
        spread = z.detach().std(1, keepdim=True) if z.shape[1] > 1 else z.detach().abs()
        return z / spread.clamp_min(torch.finfo(z.dtype).tiny)


def logits_model(model: Callable[[Tensor], Tensor]) -> nn.Module:
    """Logits for a model that returns probabilities, standardised per example: its last ``nn.Softmax`` switched
    off, or where it has none, the log of its outputs."""
    if isinstance(model, nn.Module):
        softmaxes = [m for m in model.modules() if isinstance(m, nn.Softmax)]
        if softmaxes:
            return Standardised(SoftmaxOff(model, softmaxes[-1]))
        return Standardised(LogitsFromProbabilities(model))
    return Standardised(LogitsFromProbabilities(_AsModule(model)))


class _AsModule(nn.Module):
    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


def straight_through_model(model: Callable[[Tensor], Tensor], sample: Tensor) -> tuple[nn.Module, list[str]]:
    """``model`` with straight-through gradients for each leading parameter-free, shape-keeping layer of an
    ``nn.Sequential`` whose input gradient vanishes on ``sample``; the names of the layers replaced."""
    if not isinstance(model, nn.Sequential):
        return model, []  # type: ignore[return-value]
    layers, names, h = [], [], sample
    for i, layer in enumerate(model):
        if any(True for _ in layer.parameters()):
            layers += list(model)[i:]
            break
        with torch.no_grad():
            out = layer(h)
        if out.shape == h.shape and _gradient_vanishes(layer, h):
            layers.append(straight_through(layer))
            names.append(f"layer {i} ({type(layer).__name__})")
        else:
            layers.append(layer)
        h = out
    return (nn.Sequential(*layers), names) if names else (model, [])


def _gradient_vanishes(layer: nn.Module, h: Tensor) -> bool:
    hg = h.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = layer(hg)
        if not out.requires_grad:
            return True
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(out)
        (grad,) = torch.autograd.grad((out * weights).sum(), hg, allow_unused=True)
    return grad is None or bool(grad.abs().max() <= 1e-12)
