"""Metrics of monitoring: detection (AUROC, AUPR, FPR at 95% TPR) and calibration (ECE, MCE, NLL, Brier).

Detection scores follow one convention everywhere in squiggles: **higher means more in-distribution** (more
normal, more trustworthy), as the maximum softmax probability is. AUROC and the two AUPRs come from
scikit-learn; AUPR-in treats the in-distribution points as positives, AUPR-out the others (with the scores
negated); FPR at 95% TPR is the share of outliers scored at or above the threshold that keeps 95% of the
in-distribution points (Liang et al. 2018).

Calibration follows Guo et al. 2017 (arXiv 1706.04599): confidence is the top softmax probability; the
expected calibration error (ECE) puts it into equal-width bins ``(lower, upper]`` and averages
``|accuracy - confidence|`` weighted by the bins' shares of points; the maximum calibration error (MCE) is the
worst non-empty bin; the Brier score sums the squared error over classes (Brier 1950), averaged over points.

Example:
    >>> import torch
    >>> detection(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0]))["auroc"]
    1.0
    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])   # both 88% confident, one of two right
    >>> round(calibration(logits, torch.tensor([0, 0]), bins=2, check=False)["ece"], 3)
    0.381
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from squiggles.errors import SquigglesError

MIN_POINTS_PER_BIN = 10


def detection(in_scores: Tensor, out_scores: Tensor, *, tpr: float = 0.95) -> dict[str, float]:
    """AUROC, AUPR-in, AUPR-out and FPR at ``tpr`` for telling ``in_scores`` (positives) from ``out_scores``."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    a, b = _finite(in_scores, "in-distribution"), _finite(out_scores, "out-of-distribution")
    if len(a) == 0 or len(b) == 0:
        raise SquigglesError("detection metrics need at least one in-distribution and one out-of-distribution point")
    labels = np.concatenate([np.ones(len(a)), np.zeros(len(b))])
    scores = np.concatenate([a, b])
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "aupr_in": float(average_precision_score(labels, scores)),
        "aupr_out": float(average_precision_score(1 - labels, -scores)),
        "fpr_at_95_tpr" if tpr == 0.95 else f"fpr_at_{round(100 * tpr)}_tpr": fpr_at_tpr(a, b, tpr),
    }


def fpr_at_tpr(in_scores: np.ndarray, out_scores: np.ndarray, tpr: float = 0.95) -> float:
    """Share of outliers at or above the highest threshold that keeps at least ``tpr`` of the inliers."""
    s = np.sort(in_scores)[::-1]
    threshold = s[int(np.ceil(tpr * len(s))) - 1]
    return float((out_scores >= threshold).mean())


def roc_points(in_scores: Tensor, out_scores: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve (false-positive rate, true-positive rate) with in-distribution as the positive class."""
    from sklearn.metrics import roc_curve

    a, b = _finite(in_scores, "in-distribution"), _finite(out_scores, "out-of-distribution")
    fpr, tpr, _ = roc_curve(np.concatenate([np.ones(len(a)), np.zeros(len(b))]), np.concatenate([a, b]))
    return fpr, tpr


def _finite(scores: Tensor, what: str) -> np.ndarray:
    s = torch.as_tensor(scores).detach().double().cpu().numpy().ravel()
    if not np.isfinite(s).all():
        raise SquigglesError(f"the {what} scores hold NaN or infinite values; the model's outputs overflowed")
    return s


def check_bins(n: int, bins: int, flag: str = "--n") -> None:
    """Refuse a calibration measured on fewer than ``MIN_POINTS_PER_BIN`` points per bin on average."""
    if bins < 1:
        raise SquigglesError(f"--bins must be >= 1, got {bins}")
    if n < MIN_POINTS_PER_BIN * bins:
        raise SquigglesError(f"{n} points are too few for {bins} calibration bins (ECE needs about "
                             f"{MIN_POINTS_PER_BIN} per bin, {MIN_POINTS_PER_BIN * bins} in all); give more points "
                             f"({flag}) or fewer --bins")


def calibration(logits: Tensor, y: Tensor, *, bins: int = 15, check: bool = True) -> dict[str, Any]:
    """ECE, MCE, NLL, Brier score, accuracy, mean confidence and the reliability diagram's bins, from logits."""
    if check:
        check_bins(len(y), bins)
    logits, y = logits.detach().double().cpu(), y.detach().cpu()
    probs = logits.softmax(1)
    conf, pred = probs.max(1)
    correct = (pred == y).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    # Bin b holds confidences in (edges[b], edges[b + 1]]; bucketize with right=False gives exactly that.
    index = (torch.bucketize(conf, edges, right=False) - 1).clamp(0, bins - 1)
    count = torch.bincount(index, minlength=bins).double()
    conf_sum = torch.bincount(index, conf, minlength=bins)
    acc_sum = torch.bincount(index, correct, minlength=bins)
    filled = count > 0
    mean_conf = torch.where(filled, conf_sum / count.clamp_min(1), torch.nan)
    mean_acc = torch.where(filled, acc_sum / count.clamp_min(1), torch.nan)
    gap = (mean_acc - mean_conf).abs()
    n = max(len(y), 1)
    onehot = F.one_hot(y, probs.shape[1]).double()
    return {
        "n": len(y),
        "bins": bins,
        "ece": float((gap[filled] * count[filled]).sum() / n),
        "mce": float(gap[filled].max()) if bool(filled.any()) else 0.0,
        "nll": float(F.cross_entropy(logits, y)) if len(y) else float("nan"),
        "brier": float(((probs - onehot) ** 2).sum(1).mean()) if len(y) else float("nan"),
        "accuracy": float(correct.mean()) if len(y) else float("nan"),
        "confidence": float(conf.mean()) if len(y) else float("nan"),
        "reliability": {
            "edges": edges.tolist(),
            "count": count.long().tolist(),
            "confidence": [None if not f else float(v) for v, f in zip(mean_conf, filled, strict=True)],
            "accuracy": [None if not f else float(v) for v, f in zip(mean_acc, filled, strict=True)],
        },
    }
