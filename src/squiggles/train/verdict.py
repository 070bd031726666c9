"""The end-of-run verdict of an adversarial run: did it become robust, and did it end near its best?

An adversarial run that never became robust, or that ends far below its best, says so at the end (in the log
and in the card) with what to try, instead of shipping a model whose card a hurried user reads as robust.

Example:
    >>> verdict({"clean_accuracy": 0.8, "robust_accuracy": 0.05, "robust_eval": {"norm": "linf", "eps": 0.3}},
    ...         "fgsm-rs")[0][:30]
    'the run did not become robust:'
"""

from __future__ import annotations

from typing import Any

# Robust accuracy below this share of the clean accuracy: the defence did not take.
NOT_ROBUST = 0.25
# Clean test accuracy below this: the model did not learn the task at all (whatever its robust figure says).
NOT_LEARNED = 0.5
# The guard's last check this far below its best: the run ended after its robustness fell.
FAR_BELOW_BEST = 0.1

ADVICE = {
    "fgsm-rs": "train with --method pgd or trades, or keep fgsm-rs with its recipe (the defaults: --epochs 10 "
    "--batch-size 100 --lr 5e-3 --warmup 0.3) and a smaller --attack-step-size",
    "pgd": "train longer (--epochs), ramp eps in (--warmup 0.3), lower --lr, or use --method trades",
    "trades": "train longer (--epochs), ramp eps in (--warmup 0.3), lower --lr, or raise --beta",
}


def verdict(metrics: dict[str, Any], method: str) -> list[str]:
    """Warnings for the card's ``metrics`` of a run trained by ``method`` (empty when all is well)."""
    if method == "standard":
        return []
    warnings = []
    advice = ADVICE.get(method, "train longer, ramp eps in (--warmup 0.3), or lower --lr")
    robust, clean, where = _robust_figure(metrics)
    test_clean = metrics.get("clean_accuracy")
    if test_clean is not None and test_clean < NOT_LEARNED:
        warnings.append(f"the run did not learn the task: {100 * test_clean:.1f}% clean test accuracy; try: a "
                        "lower --lr, more --epochs, a smaller --eps or --warmup 0.3 to ramp it in")
    if robust is not None and clean and robust < NOT_ROBUST * clean:
        warnings.append(f"the run did not become robust: {100 * robust:.1f}% robust accuracy {where} against "
                        f"{100 * clean:.1f}% clean; try: {advice}")
    guard = metrics.get("guard") or {}
    checks = guard.get("checks") or []
    best = guard.get("best", -1.0)
    if checks and best >= 0 and checks[-1]["robust"] < best - FAR_BELOW_BEST:
        warnings.append(f"the run ended far below its best: the guard measured {100 * checks[-1]['robust']:.1f}% "
                        f"robust after the last epoch against {100 * best:.1f}% at best; try: {advice}")
    return warnings


def _robust_figure(metrics: dict[str, Any]) -> tuple[float | None, float | None, str]:
    """The run's robust accuracy, its clean accuracy and where they were measured: the final evaluation on test
    points when there was one, else the guard's last check on training points."""
    ev = metrics.get("robust_eval")
    if ev is not None and metrics.get("robust_accuracy") is not None:
        clean = ev.get("clean_accuracy", metrics.get("clean_accuracy"))
        where = f"at {ev['norm']} {ev['eps']:g} on {ev.get('points', '?')} test points"
        return metrics["robust_accuracy"], clean, where
    checks = (metrics.get("guard") or {}).get("checks") or []
    if checks:
        return checks[-1]["robust"], metrics.get("clean_accuracy"), "by the guard on training points"
    return None, None, ""
