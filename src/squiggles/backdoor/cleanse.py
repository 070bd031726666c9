"""Neural Cleanse (Wang et al. 2019, IEEE S&P, "Neural Cleanse: Identifying and Mitigating Backdoor Attacks in
Neural Networks"): from the model and clean data alone, reverse-engineer for every class ``t`` the smallest trigger
that sends clean inputs to ``t``, and flag a class whose trigger is far smaller than the others'.

A trigger is a mask ``m`` (one value per pixel, shared by the channels) and a pattern ``p``, applied as
``(1 - m) * x + m * p``. For each class, ``m = (tanh(a) + 1) / 2`` and ``p`` (likewise, scaled to the bounds) are
optimised by Adam (learning rate 0.1, betas 0.5 and 0.9, as the paper's code) on
``cross_entropy(f(x'), t) + cost_t * |m|_1`` over mini-batches of clean inputs of the other classes. All classes
are optimised together: one batched forward of ``classes x batch`` inputs per step, gradients to ``a`` and ``p``
only. The cost follows the paper's schedule, per class: 0 until the attack succeeds, then ``init_cost``, then
multiplied by 1.5 after ``patience`` rounds at or above the 0.99 success threshold and divided by 1.5^1.5 after
``patience`` rounds below it (ART's defaults). The smallest mask that reached the threshold is kept.

The anomaly index of a class is ``|norm_t - median| / (1.4826 * MAD)`` over the masks' L1 norms (MAD: the median
absolute deviation; 1.4826 makes it a consistent estimate of a standard deviation); a class is flagged when its
index exceeds 2 and its norm lies below the median (a backdoor makes a *small* trigger).

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    >>> x, y = torch.rand(30, 1, 4, 4), torch.arange(30) % 3
    >>> res = neural_cleanse(model, x, y, 3, config=CleanseConfig(steps=20, round_steps=5))
    >>> res.masks.shape, len(res.anomaly)
    (torch.Size([3, 1, 4, 4]), 3)
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from squiggles.errors import SquigglesError

MAD_SCALE = 1.4826
ANOMALY_THRESHOLD = 2.0


@dataclass
class CleanseConfig:
    """Neural Cleanse's settings; the defaults are the paper's and ART's, except the step budget (a scan's)."""

    steps: int = 600
    batch_size: int = 32
    lr: float = 0.1
    init_cost: float = 1e-3
    threshold: float = 0.99
    patience: int = 5
    round_steps: int = 10  # optimisation steps per round: the unit the cost schedule counts in
    multiplier: float = 1.5

    def validate(self) -> None:
        bad = [(self.steps >= 1, "--steps must be >= 1"), (self.batch_size >= 1, "--batch-size must be >= 1"),
               (self.lr > 0, "the learning rate must be > 0"), (0 < self.threshold <= 1, "the threshold is in (0, 1]"),
               (self.round_steps >= 1, "round_steps must be >= 1"), (self.multiplier > 1, "the multiplier must be > 1")]
        for ok, message in bad:
            if not ok:
                raise SquigglesError(message)


@dataclass
class CleanseResult:
    """Per class: the smallest successful trigger found (mask, pattern), its L1 norm and success rate, whether the
    threshold was ever reached, the anomaly index; the flagged classes; the median and MAD of the norms."""

    masks: Tensor
    patterns: Tensor
    norms: list[float]
    success: list[float]
    reached: list[bool]
    anomaly: list[float]
    flagged: list[int]
    median: float
    mad: float
    steps: int
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready, without the tensors."""
        top = min(range(len(self.norms)), key=lambda t: self.norms[t])
        return {"flagged_classes": self.flagged, "smallest_class": top, "smallest_index": self.anomaly[top],
                "median_norm": self.median, "mad": self.mad, "steps": self.steps, "seconds": round(self.seconds, 2),
                "config": self.config,
                "classes": [{"class": t, "mask_l1": self.norms[t], "anomaly_index": self.anomaly[t],
                             "success": self.success[t], "reached": self.reached[t], "flagged": t in self.flagged}
                            for t in range(len(self.norms))]}


def anomaly_index(norms: list[float]) -> tuple[list[float], float, float]:
    """Each norm's ``|n - median| / (1.4826 * MAD)``, with the median and the scaled MAD (0 spread: index 0)."""
    if not norms:
        raise SquigglesError("the anomaly index needs at least one norm")
    med = statistics.median(norms)
    mad = MAD_SCALE * statistics.median([abs(n - med) for n in norms])
    return [abs(n - med) / mad if mad > 0 else 0.0 for n in norms], med, mad


def flagged_classes(norms: list[float], index: list[float], median: float,
                    threshold: float = ANOMALY_THRESHOLD) -> list[int]:
    """Classes whose trigger is an outlier on the small side: index above ``threshold`` and norm below the median."""
    return [t for t, (n, a) in enumerate(zip(norms, index, strict=True)) if a > threshold and n < median]


def neural_cleanse(model: nn.Module, x: Tensor, y: Tensor, num_classes: int, *, bounds: tuple[float, float] = (0, 1),
                   config: CleanseConfig | None = None, seed: int = 0, progress: bool = False) -> CleanseResult:
    """Reverse-engineer every class's minimal trigger on clean ``(x, y)`` and compute the anomaly index (module doc).

    Device and dtype follow ``x``; batches are drawn from a generator seeded with ``seed``; the model's parameters
    get no gradient. Example: ``res = neural_cleanse(model, clean.x[:1000], clean.y[:1000], 10); res.flagged``.
    """
    from tqdm.auto import tqdm

    from squiggles.attacks._core import attack_mode

    cfg = config or CleanseConfig()
    cfg.validate()
    if len(x) == 0 or len(x) != len(y):
        raise SquigglesError("Neural Cleanse needs clean inputs with one label each")
    start = time.perf_counter()
    k, device, dtype = num_classes, x.device, x.dtype
    lo, hi = float(bounds[0]), float(bounds[1])
    mask_shape = (1, *x.shape[2:]) if x.dim() == 4 else tuple(x.shape[1:])
    g = torch.Generator().manual_seed(int(seed))
    # The paper starts from uniform random masks and patterns; atanh maps them to the free parameters.
    a = _atanh(torch.rand(k, *mask_shape, generator=g, dtype=dtype).to(device)).requires_grad_(True)
    b = _atanh(torch.rand(k, *x.shape[1:], generator=g, dtype=dtype).to(device)).requires_grad_(True)
    opt = torch.optim.Adam([a, b], lr=cfg.lr, betas=(0.5, 0.9))
    targets = torch.arange(k, device=device)
    cost = torch.zeros(k, dtype=dtype, device=device)
    up, down, set_count = (torch.zeros(k, dtype=torch.long, device=device) for _ in range(3))
    best_norm = torch.full((k,), float("inf"), dtype=dtype, device=device)
    best_mask = torch.zeros(k, *mask_shape, dtype=dtype, device=device)
    best_pattern = torch.zeros(k, *x.shape[1:], dtype=dtype, device=device)
    hits = torch.zeros(k, dtype=dtype, device=device)
    seen = torch.zeros(k, dtype=dtype, device=device)
    with attack_mode(model):
        for step in tqdm(range(cfg.steps), desc="neural cleanse", disable=not progress, leave=False):
            idx = torch.randint(len(x), (min(cfg.batch_size, len(x)),), generator=g).to(device)
            xb, yb = x[idx], y[idx].to(device)
            with torch.enable_grad():
                mask, pattern = _mask(a), lo + (hi - lo) * _mask(b)
                stamped = (1 - mask[:, None]) * xb[None] + (mask * pattern)[:, None]  # K x B x ...
                logits = model(stamped.flatten(0, 1)).view(k, len(xb), -1)
                other = (yb[None] != targets[:, None]).to(dtype)  # a class's own images say nothing about it
                ce = F.cross_entropy(logits.transpose(1, 2), targets[:, None].expand(k, len(xb)), reduction="none")
                l1 = mask.flatten(1).sum(1)
                loss = ((ce * other).sum(1) / other.sum(1).clamp_min(1) + cost * l1).sum()
                ga, gb = torch.autograd.grad(loss, [a, b])
            a.grad, b.grad = ga, gb
            opt.step()
            hits += ((logits.argmax(2) == targets[:, None]).to(dtype) * other).sum(1).detach()
            seen += other.sum(1)
            if (step + 1) % cfg.round_steps == 0 or step + 1 == cfg.steps:
                rate = hits / seen.clamp_min(1)
                _keep_best(rate >= cfg.threshold, l1.detach(), mask.detach(), pattern.detach(), best_norm, best_mask,
                           best_pattern)
                _schedule(rate >= cfg.threshold, cost, up, down, set_count, cfg)
                hits.zero_()
                seen.zero_()
    reached = torch.isfinite(best_norm)
    with torch.no_grad():  # a class that never reached the threshold keeps its last trigger
        last_mask, last_pattern = _mask(a), lo + (hi - lo) * _mask(b)
        best_mask[~reached], best_pattern[~reached] = last_mask[~reached], last_pattern[~reached]
    success = trigger_success(model, x, y, best_mask, best_pattern, cfg.batch_size * 8)
    norms = [float(v) for v in best_mask.flatten(1).sum(1)]
    index, med, mad = anomaly_index(norms)
    return CleanseResult(best_mask.detach(), best_pattern.detach(), norms, success, [bool(r) for r in reached], index,
                         flagged_classes(norms, index, med), med, mad, cfg.steps, time.perf_counter() - start,
                         asdict(cfg))


def trigger_success(model: nn.Module, x: Tensor, y: Tensor, masks: Tensor, patterns: Tensor,
                    batch_size: int = 256) -> list[float]:
    """For each class ``t``, the share of inputs of other classes that its trigger sends to ``t``."""
    from squiggles.runtime import predict

    out = []
    for t in range(len(masks)):
        xs = x[y.to(x.device) != t]
        if len(xs) == 0:
            out.append(float("nan"))
            continue
        pred = predict(model, (1 - masks[t]) * xs + masks[t] * patterns[t], batch_size).argmax(1)
        out.append(float((pred == t).double().mean()))
    return out


def _mask(v: Tensor) -> Tensor:
    return (torch.tanh(v) + 1) / 2


def _atanh(u: Tensor) -> Tensor:
    return torch.atanh((2 * u - 1).clamp(-1 + 1e-6, 1 - 1e-6))


def _keep_best(ok: Tensor, l1: Tensor, mask: Tensor, pattern: Tensor, best_norm: Tensor, best_mask: Tensor,
               best_pattern: Tensor) -> None:
    better = ok & (l1 < best_norm)
    best_norm[better] = l1[better]
    best_mask[better] = mask[better]
    best_pattern[better] = pattern[better]


def _schedule(ok: Tensor, cost: Tensor, up: Tensor, down: Tensor, set_count: Tensor, cfg: CleanseConfig) -> None:
    """The paper's cost schedule, for every class at once (in place)."""
    unset = cost == 0
    # Before the cost is set: count successful rounds; after `patience` of them the L1 term switches on.
    set_count[unset & ok] += 1
    set_count[unset & ~ok] = 0
    start = unset & (set_count >= cfg.patience)
    cost[start] = cfg.init_cost
    live = ~unset
    up[live & ok] += 1
    down[live & ok] = 0
    down[live & ~ok] += 1
    up[live & ~ok] = 0
    raise_ = live & (up >= cfg.patience)
    lower = live & (down >= cfg.patience)
    cost[raise_] *= cfg.multiplier
    cost[lower] /= cfg.multiplier ** 1.5
    up[raise_] = 0
    down[lower] = 0
