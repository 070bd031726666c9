"""Finding the poisoned points of a training set from the model's penultimate features, class by class.

- **Spectral signatures** (Tran, Li and Madry 2018, arXiv 1811.00636): centre the features of the points labelled
  ``c``, take the top right singular vector ``v`` of that matrix and project on it; the paper's outlier score is
  ``<r - mean, v>^2`` and it removes the ``1.5 eps n_c`` highest scores of every class, which needs the poisoned
  share ``eps`` in advance. Here the projection is split in two by the exact one-dimensional 2-means, and a point's
  score is how far past that cut it lies, towards the suspect group.
- **Activation clustering** (Chen et al. 2018, arXiv 1811.03728): reduce the class's features to 10 dimensions
  (PCA, as ART's default; the paper used ICA) and split them by 2-means.

Both methods split each class into two groups; what decides whether one is poison, and which:

- With held-out clean points (``trusted``), the decision asks whether clean data of the class looks like the
  group: a group holding a share ``s`` of the class's training points that draws under a fifth of ``s`` of its clean
  points, a shortfall a binomial draw would give with probability under 1e-3, is poison. A clean class split in
  two by writing style draws clean points into both groups, so it is left alone, while a poisoned class's trigger
  group draws none; this also answers which group is the poison when the two are of similar size (10% all-to-one
  poisoning makes nearly half of the target class poison, where Chen et al.'s "the smaller cluster" can pick the
  wrong one).
- Without them, Chen et al.'s relative size: the smaller group is poison when the two are far apart (Ashman's
  ``D = |m1 - m2| / sqrt((s1^2 + s2^2) / 2)`` of the points projected on the line through the two centres, at least
  4; a single Gaussian split in two gives about 2.7).

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> feats, labels = torch.randn(400, 8, generator=g), torch.arange(400) % 2
    >>> feats[:40:2] += 12                      # 20 planted points in class 0
    >>> det = spectral_signatures(feats, labels)
    >>> det.flagged(), int(det.suspects.sum())
    ([0], 20)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from squiggles.errors import SquigglesError

SEPARATION = 4.0  # Ashman's D above which two groups count as distinct, without clean data
SHORTFALL = 0.2  # a poison group draws under this fraction of its training share of clean points ...
P_VALUE = 1e-3  # ... and a binomial draw would fall that short with probability under this
MIN_POINTS = 4  # fewer points of a class than this are not split
DETECTORS = ("spectral", "clustering")


@dataclass
class Detection:
    """One detector's verdict: suspected points (bool per training point), a suspicion score per point (higher is
    more suspicious), and a record per class (size, groups, separation, clean-data shares, flagged or not)."""

    method: str
    suspects: Tensor
    scores: Tensor
    classes: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def flagged(self) -> list[int]:
        return [c["class"] for c in self.classes if c["flagged"]]

    def summary(self, truth: Tensor | None = None) -> dict[str, Any]:
        """JSON-ready: flagged classes, counts, precision and recall against ``truth`` (poisoned indices) if given."""
        out = {"method": self.method, "flagged_classes": self.flagged(), "suspects": int(self.suspects.sum()),
               "seconds": round(self.seconds, 3), "classes": self.classes}
        if truth is not None:
            out.update(precision_recall(self.suspects, truth))
        return out


def precision_recall(suspects: Tensor, truth: Tensor) -> dict[str, Any]:
    """Precision, recall and F1 of the suspects (bool per point) against the poisoned ``truth`` (indices).
    Precision is None when nothing is suspected."""
    poisoned = torch.zeros(len(suspects), dtype=torch.bool)
    poisoned[truth.cpu()] = True
    s = suspects.cpu().bool()
    tp = int((s & poisoned).sum())
    precision = tp / int(s.sum()) if s.any() else None
    recall = tp / int(poisoned.sum()) if poisoned.any() else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else 0.0
    return {"true_positives": tp, "poisoned": int(poisoned.sum()), "precision": precision, "recall": recall, "f1": f1}


def spectral_signatures(feats: Tensor, labels: Tensor, *, num_classes: int | None = None,
                        trusted: tuple[Tensor, Tensor] | None = None) -> Detection:
    """Tran et al.'s spectral signatures, with each class's projection split by exact 1-D 2-means (module doc).

    ``trusted``: held-out clean ``(features, labels)``. Example: ``spectral_signatures(feats, y, trusted=(f, t))``.
    """
    return _detect("spectral", feats, labels, num_classes, trusted, _spectral_split)


def activation_clustering(feats: Tensor, labels: Tensor, *, num_classes: int | None = None,
                          trusted: tuple[Tensor, Tensor] | None = None, dims: int = 10, seed: int = 0) -> Detection:
    """Chen et al.'s activation clustering: PCA to ``dims`` dimensions and 2-means per class (module doc).

    Example: ``activation_clustering(feats, y, trusted=(clean_feats, clean_y))``.
    """
    return _detect("clustering", feats, labels, num_classes, trusted,
                   lambda f, t: _cluster_split(f, t, dims, seed))


def detect(method: str, feats: Tensor, labels: Tensor, **options: Any) -> Detection:
    """A detector by name: ``spectral`` or ``clustering``."""
    if method == "spectral":
        return spectral_signatures(feats, labels, **{k: v for k, v in options.items() if k not in ("dims", "seed")})
    if method == "clustering":
        return activation_clustering(feats, labels, **options)
    raise SquigglesError(f"unknown detector {method!r}; choose from {', '.join(DETECTORS)}")


# --- the shared per-class loop and decision ------------------------------------------------------------------


def _detect(method: str, feats: Tensor, labels: Tensor, num_classes: int | None,
            trusted: tuple[Tensor, Tensor] | None, split: Any) -> Detection:
    start = time.perf_counter()
    if feats.dim() != 2 or len(feats) != len(labels):
        raise SquigglesError(f"detectors need features N x D and N labels; got {tuple(feats.shape)} and "
                             f"{tuple(labels.shape)}")
    feats, labels = feats.detach().double().cpu(), labels.cpu()
    k = num_classes or int(labels.max()) + 1
    suspects = torch.zeros(len(feats), dtype=torch.bool)
    scores = torch.zeros(len(feats), dtype=torch.float64)
    classes = []
    for c in range(k):
        idx = (labels == c).nonzero().flatten()
        record: dict[str, Any] = {"class": c, "n": len(idx), "flagged": False}
        if len(idx) < MIN_POINTS:
            classes.append({**record, "note": "too few points to split"})
            continue
        clean = trusted[0][trusted[1].cpu() == c].detach().double().cpu() if trusted is not None else None
        groups, clean_groups, proj, score = split(feats[idx], clean)
        suspect, info = _decide(groups, clean_groups, proj)
        if suspect is not None:
            suspects[idx[groups == suspect]] = True
        scores[idx] = score(suspect if suspect is not None else info["smaller"])
        classes.append({**record, **info, "flagged": suspect is not None})
    return Detection(method, suspects, scores.float(), classes, time.perf_counter() - start)


def _decide(groups: Tensor, clean_groups: Tensor | None, proj: Tensor) -> tuple[int | None, dict[str, Any]]:
    """Which group (0 or 1) is poison, if any, and the figures behind the decision."""
    from scipy.stats import binom

    n = len(groups)
    sizes = [int((groups == g).sum()) for g in (0, 1)]
    smaller = 0 if sizes[0] <= sizes[1] else 1
    d = _ashman(proj[groups == 0], proj[groups == 1])
    info: dict[str, Any] = {"groups": sizes, "smaller": smaller, "separation": round(d, 3)}
    if clean_groups is not None and len(clean_groups):
        m = len(clean_groups)
        drawn = [int((clean_groups == g).sum()) for g in (0, 1)]
        # For each group, the chance that m clean draws land in it at most this often, were it ordinary data.
        tails = [float(binom.cdf(drawn[g], m, sizes[g] / n)) for g in (0, 1)]
        g = 0 if tails[0] <= tails[1] else 1
        info.update(clean_points=m, clean_drawn=drawn, p_value=tails[g], rule="clean data")
        poison = tails[g] < P_VALUE and drawn[g] / m < SHORTFALL * sizes[g] / n
        return (g if poison else None), info
    info["rule"] = "relative size"
    return (smaller if d >= SEPARATION and sizes[smaller] < n else None), info


def _ashman(a: Tensor, b: Tensor) -> float:
    if len(a) == 0 or len(b) == 0:
        return 0.0
    spread = ((a.var(unbiased=False) + b.var(unbiased=False)) / 2).sqrt()
    gap = (a.mean() - b.mean()).abs()
    return float(gap / spread) if spread > 0 else (float("inf") if gap > 0 else 0.0)


def _top_directions(centred: Tensor, k: int) -> Tensor:
    """The ``k`` leading right singular vectors (D x k) of ``centred``, by the eigenvectors of its Gram matrix."""
    _, vecs = torch.linalg.eigh(centred.T @ centred)
    return vecs[:, -k:].flip(1)


def _spectral_split(f: Tensor, clean: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor, Any]:
    mean = f.mean(0)
    v = _top_directions(f - mean, 1)[:, 0]
    p = (f - mean) @ v
    t = _two_means_threshold(p)
    groups = (p > t).long()
    clean_groups = (((clean - mean) @ v) > t).long() if clean is not None else None
    # The paper ranks by p^2 from the class mean; with a large poisoned share that mean sits between the groups, so
    # points are ranked by how far past the cut they lie, towards the suspect side.
    return groups, clean_groups, p, lambda suspect: (p - t) if suspect == 1 else (t - p)


def _two_means_threshold(p: Tensor) -> float:
    """The cut of 1-D points into two intervals with the least within-group sum of squares (exact, by sorting)."""
    s = p.sort().values
    n = len(s)
    csum, csq = s.cumsum(0), s.square().cumsum(0)
    left = torch.arange(1, n, dtype=s.dtype)  # sizes of the left group for cuts after positions 0 .. n-2
    sse_left = csq[:-1] - csum[:-1].square() / left
    right_sum, right_sq = csum[-1] - csum[:-1], csq[-1] - csq[:-1]
    sse_right = right_sq - right_sum.square() / (n - left)
    i = int((sse_left + sse_right).argmin())
    return float((s[i] + s[i + 1]) / 2)


def _cluster_split(f: Tensor, clean: Tensor | None, dims: int, seed: int) -> tuple[Tensor, Tensor | None, Tensor, Any]:
    from sklearn.cluster import KMeans

    mean = f.mean(0)
    comps = _top_directions(f - mean, max(1, min(dims, f.shape[1], len(f) - 1)))
    z = (f - mean) @ comps
    km = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(z.numpy())
    groups = torch.from_numpy(km.labels_).long()
    centres = torch.from_numpy(km.cluster_centers_).to(z.dtype)
    axis = centres[1] - centres[0]
    proj = z @ (axis / axis.norm().clamp_min(1e-12))
    clean_groups = None
    if clean is not None:
        zc = (clean - mean) @ comps
        clean_groups = torch.cdist(zc, centres).argmin(1) if len(zc) else torch.zeros(0, dtype=torch.long)

    def score(suspect: int) -> Tensor:  # how much nearer the suspect centre than the other
        dist = torch.cdist(z, centres)
        return dist[:, 1 - suspect] - dist[:, suspect]

    return groups, clean_groups, proj, score
