"""The three monitoring analyses, each over one or several models on the same points, as JSON-ready results.

- `corruption_errors`: each model's error on the clean test images and under each MNIST-C corruption, the mean
  corruption error and the error relative to clean (Mu and Gilmer 2019).
- `ood_detection`: every detector of every model against every out-of-distribution set (AUROC, AUPR-in,
  AUPR-out, FPR at 95% TPR), and misclassification detection (right against wrong predictions).
- `calibration_analysis`: ECE, MCE, NLL and Brier before and after temperature scaling (fitted on the
  validation split), and ECE against corruption severity (calibration under shift).

Example:
    >>> from squiggles.monitor.analyses import corruption_errors          # doctest: +SKIP
    >>> res = corruption_errors({"standard": model}, test)
    >>> res["rows"][0]["mean_error"]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from squiggles.monitor.corruptions import CORRUPTIONS, SCALED, corrupt
from squiggles.monitor.metrics import calibration, detection
from squiggles.monitor.ood import METHODS, fit_detector

Log = Callable[[str], None]


def logits_of(model: nn.Module, x: Tensor, batch_size: int = 1000) -> Tensor:
    """The model's logits for ``x`` in batches, on the model's device, returned on the CPU."""
    from squiggles.runtime import eval_mode

    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    with torch.no_grad(), eval_mode(model):
        return torch.cat([model(b.to(device)).float().cpu() for b in x.split(batch_size)]) if len(x) else (
            torch.zeros(0, 0))


def _error(logits: Tensor, y: Tensor) -> float:
    return float((logits.argmax(1) != y).double().mean())


def corruption_errors(models: dict[str, nn.Module], test: Any, *, names: Sequence[str] | None = None,
                      severity: int | None = None, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Error of each model on ``test`` and under each corruption, on the same images: at MNIST-C's severities, or
    at ``severity`` (1-5) for the corruptions with a scale (the others have one setting)."""
    names = list(names or CORRUPTIONS)
    levels = {n: severity if CORRUPTIONS[n].levels is not None else None for n in names}
    start = time.perf_counter()
    corrupted = {name: corrupt(test.x, name, levels[name], seed=seed)
                 for name in tqdm(names, desc="corrupting", disable=not progress, leave=False)}
    generation_s = time.perf_counter() - start
    rows = []
    for label, model in models.items():
        clean = _error(logits_of(model, test.x), test.y)
        errors = {name: _error(logits_of(model, xc), test.y) for name, xc in corrupted.items()}
        mean = sum(errors.values()) / len(errors)
        rows.append({
            "model": label, "clean_error": clean, "errors": errors, "mean_error": mean,
            "mean_increase": mean - clean,
            # Error relative to clean: how many times the clean error each corruption costs (Mu and Gilmer).
            "relative": {k: (v / clean if clean > 0 else None) for k, v in errors.items()},
            "mean_relative": (mean / clean) if clean > 0 else None,
        })
    return {"analysis": "corruptions", "n": len(test.y), "corruptions": names,
            "severity": {n: levels[n] or CORRUPTIONS[n].severity for n in names}, "seed": seed, "rows": rows,
            "generation_s": round(generation_s, 2), "verdicts": _corruption_verdicts(rows)}


def _corruption_verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """Plain sentences comparing each model with the first (the reference, usually the standard model)."""
    if len(rows) < 2:
        return []
    ref = rows[0]
    out = []
    for row in rows[1:]:
        worse = [k for k, v in row["errors"].items() if v > ref["errors"][k]]
        word = "worse" if row["mean_error"] > ref["mean_error"] else "better"
        out.append(f"{row['model']} is {word} than {ref['model']} on MNIST-C: mean error "
                   f"{100 * row['mean_error']:.2f}% against {100 * ref['mean_error']:.2f}%, worse on "
                   f"{len(worse)} of {len(row['errors'])} corruptions" + (f" ({', '.join(worse)})" if worse else ""))
    return out


def ood_detection(models: dict[str, nn.Module], test: Any, train: Any, ood_sets: dict[str, Tensor], *,
                  methods: Sequence[str] = METHODS, progress: bool = True) -> dict[str, Any]:
    """Every detector of every model: in-distribution ``test`` against each set in ``ood_sets``; detectors that
    learn (Mahalanobis) are fitted on ``train`` only."""
    rows, misclassification, confidence, curves = [], [], [], {}
    for label, model in models.items():
        logits = logits_of(model, test.x)
        right = logits.argmax(1) == test.y
        for method in tqdm(methods, desc=f"detectors ({label})", disable=not progress, leave=False):
            det = fit_detector(model, train, method)
            s_in = det.score(test.x)
            for name, x_out in ood_sets.items():
                s_out = det.score(x_out)
                rows.append({"model": label, "method": method, "ood": name, **detection(s_in, s_out)})
                curves[(label, method, name)] = (s_in, s_out)
            if bool(right.any()) and not bool(right.all()):
                m = detection(s_in[right], s_in[~right])
                misclassification.append({"model": label, "method": method, "auroc": m["auroc"],
                                          "aupr_error": m["aupr_out"], "errors": int((~right).sum())})
        msp = logits.softmax(1).amax(1)
        confidence.append({"model": label, "set": "in-distribution", "mean_msp": float(msp.mean())})
        for name, x_out in ood_sets.items():
            confidence.append({"model": label, "set": name,
                               "mean_msp": float(logits_of(model, x_out).softmax(1).amax(1).mean())})
    return {"analysis": "ood", "n_in": len(test.y), "n_out": {k: len(v) for k, v in ood_sets.items()},
            "methods": list(methods), "sets": list(ood_sets), "rows": rows, "best": _best(rows),
            "misclassification": misclassification, "confidence": confidence}, curves


def _best(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each model, the detector with the highest mean AUROC over the sets, and its worst set."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        by_method: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            if r["model"] == model:
                by_method.setdefault(r["method"], []).append(r)
        method, rs = max(by_method.items(), key=lambda kv: sum(r["auroc"] for r in kv[1]) / len(kv[1]))
        worst = min(rs, key=lambda r: r["auroc"])
        out.append({"model": model, "method": method, "mean_auroc": sum(r["auroc"] for r in rs) / len(rs),
                    "worst_set": worst["ood"], "worst_auroc": worst["auroc"]})
    return out


def calibration_analysis(models: dict[str, nn.Module], test: Any, val: Any, *, bins: int = 15, shift: bool = True,
                         shift_n: int | None = None, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Calibration before and after temperature scaling (T fitted on ``val``), on ``test`` and, with ``shift``, on
    ``test`` under each scaled corruption at severities 1 to 5."""
    from squiggles.monitor.calibration import fit_temperature

    rows, curves, shifted = [], {}, []
    x_shift, y_shift = test.x[:shift_n], test.y[:shift_n]
    shifted_sets = {}
    if shift:
        for name in tqdm(SCALED, desc="corrupting", disable=not progress, leave=False):
            for s in range(1, len(CORRUPTIONS[name].levels) + 1):
                shifted_sets[(name, s)] = corrupt(x_shift, name, s, seed=seed)
    for label, model in models.items():
        t = fit_temperature(logits_of(model, val.x), val.y)
        logits = logits_of(model, test.x)
        before = calibration(logits, test.y, bins=bins)
        after = calibration(logits / t, test.y, bins=bins)
        changed = int((logits.argmax(1) != (logits / t).argmax(1)).sum())
        rows.append({"model": label, "temperature": t, "before": _short(before), "after": _short(after),
                     "predictions_changed": changed})
        curves[label] = {"before": before["reliability"], "after": after["reliability"]}
        for (name, s), xs in shifted_sets.items():
            z = logits_of(model, xs)
            shifted.append({"model": label, "corruption": name, "severity": s,
                            "ece": calibration(z, y_shift, bins=bins)["ece"],
                            "ece_scaled": calibration(z / t, y_shift, bins=bins)["ece"],
                            "error": _error(z, y_shift)})
    return {"analysis": "calibration", "n": len(test.y), "n_val": len(val.y), "bins": bins, "rows": rows,
            "reliability": curves, "shift": shifted, "shift_n": len(y_shift) if shift else 0,
            "shift_summary": _shift_summary(shifted)}


def _short(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in ("ece", "mce", "nll", "brier", "accuracy", "confidence")}


def _shift_summary(shifted: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ECE (raw and temperature-scaled) and error over the corruptions, per model and severity."""
    out = []
    keys = dict.fromkeys((r["model"], r["severity"]) for r in shifted)
    for model, severity in keys:
        rs = [r for r in shifted if r["model"] == model and r["severity"] == severity]
        out.append({"model": model, "severity": severity,
                    "ece": sum(r["ece"] for r in rs) / len(rs),
                    "ece_scaled": sum(r["ece_scaled"] for r in rs) / len(rs),
                    "error": sum(r["error"] for r in rs) / len(rs)})
    return out
