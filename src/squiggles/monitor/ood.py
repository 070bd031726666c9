"""Out-of-distribution scores from the classifier alone, as fitted detectors: ``fit`` on training data, then
``score(x)`` (higher means more in-distribution).

- ``msp``: the maximum softmax probability (Hendrycks and Gimpel 2017, arXiv 1610.02136), the baseline.
- ``max-logit``: the largest logit (Hendrycks et al. 2022, arXiv 1911.11132).
- ``energy``: ``T * logsumexp(logits / T)``, the negative free energy (Liu et al. 2020, arXiv 2010.03759), T = 1.
- ``odin``: the softmax at temperature ``T = 1000`` after a small input step that raises it (Liang et al. 2018,
  arXiv 1706.02690), ``eps = 0.0014``; the paper tunes both on outliers, here they stay at its defaults.
- ``mahalanobis``: minus the smallest Mahalanobis distance from the penultimate features (the input of the
  last ``nn.Linear``) to a class mean, with one covariance shared by the classes (Lee et al. 2018, arXiv
  1807.03888), fitted on the training data; no input step and no outlier-tuned weights.
- ``knn``: the cosine similarity of the L2-normalised penultimate features to their ``k``-th nearest training
  neighbour (Sun et al. 2022, arXiv 2204.06507), ``k = 50`` as in the paper.
- ``layer-stats``: the Mahalanobis score (shared covariance, class means) of the per-channel mean and standard
  deviation of every convolutional activation map, where a digit's stroke statistics live (in the spirit of
  Lee et al.'s feature ensemble, with no weights tuned on outliers); models without convolutions use their
  hidden activations.
- ``ensemble``: ``layer-stats`` plus ``knn``, each standardised by its scores on held-out training points
  (the last fifth of the data given to ``fit``, which the components do not see).

The learned parts come only from the in-distribution training data passed to ``fit``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    >>> x, y = torch.randn(60, 4), torch.arange(60) % 3
    >>> det = fit_detector(model, (x, y), method="mahalanobis")
    >>> det.score(torch.randn(5, 4)).shape
    torch.Size([5])
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from squiggles.errors import SquigglesError
from squiggles.runtime import eval_mode

METHODS = ("msp", "max-logit", "energy", "odin", "mahalanobis", "knn", "layer-stats", "ensemble")
# Methods that learn from the training data (the others are fixed functions of the logits).
FITTED = ("mahalanobis", "knn", "layer-stats", "ensemble")


@dataclass
class Detector:
    """A score in front of a deployed model. ``score(x)``: higher is more in-distribution."""

    model: nn.Module
    method: str = "msp"
    temperature: float = 1.0
    eps: float = 0.0
    k: int = 50
    batch_size: int = 500
    # What `fit` learned: class means and shared precision (mahalanobis, layer-stats), the normalised feature bank
    # (knn), the two standardised parts (ensemble).
    fitted: dict[str, Any] = field(default_factory=dict)
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def fit(self, x: Tensor, y: Tensor, num_classes: int | None = None) -> Detector:
        """Learn what the method needs from in-distribution training data (the logit scores need nothing)."""
        if len(x) != len(y) or len(x) == 0:
            raise SquigglesError(f"fit needs as many labels as inputs (got {len(x)} inputs, {len(y)} labels)")
        self.fitted_on = {"n": len(x)}
        k = num_classes or int(y.max()) + 1
        if self.method in ("mahalanobis", "layer-stats"):
            self.fitted = _fit_gaussian(self._features(x), y, k)
        elif self.method == "knn":
            if len(x) < self.k:
                raise SquigglesError(f"knn needs at least k = {self.k} training points, got {len(x)}")
            self.fitted = {"bank": F.normalize(self._features(x).float(), dim=1)}
        elif self.method == "ensemble":
            cut = len(x) - max(1, len(x) // 5)
            parts = []
            for method in ("layer-stats", "knn"):
                part = Detector(self.model, method, k=self.k, batch_size=self.batch_size).fit(x[:cut], y[:cut], k)
                ref = part.score(x[cut:]).double()
                parts.append((part, float(ref.mean()), float(ref.std().clamp_min(1e-12))))
            self.fitted = {"parts": parts}
        return self

    def score(self, x: Tensor) -> Tensor:
        """One score per row of ``x``; higher means more in-distribution."""
        if self.method in FITTED and not self.fitted:
            raise SquigglesError(f"this {self.method} detector is not fitted yet: call fit(x_train, y_train) first")
        if self.method == "ensemble":
            return sum(((p.score(x).double() - m) / sd for p, m, sd in self.fitted["parts"]),
                       torch.zeros(len(x), dtype=torch.float64)).float()
        device = _device(self.model)
        return torch.cat([self._score(b.to(device)) for b in x.split(self.batch_size)]) if len(x) else torch.zeros(0)

    def _features(self, x: Tensor) -> Tensor:
        fn = _layer_stats if self.method == "layer-stats" else _penultimate
        device = _device(self.model)
        return torch.cat([fn(self.model, b.to(device)) for b in x.split(self.batch_size)]).double()

    def _score(self, x: Tensor) -> Tensor:
        if self.method in ("mahalanobis", "layer-stats"):
            return _gaussian_score(self.fitted, self._features(x)).float().cpu()
        if self.method == "knn":
            f = F.normalize(self._features(x).float(), dim=1)
            return (f @ self.fitted["bank"].T).topk(self.k, dim=1).values[:, -1].cpu()
        if self.method == "odin":
            x = _odin_step(self.model, x, self.temperature, self.eps)
        with torch.no_grad(), eval_mode(self.model):
            logits = self.model(x).float() / self.temperature
        if self.method in ("msp", "odin"):
            return logits.softmax(1).amax(1).cpu()
        if self.method == "max-logit":
            return logits.amax(1).cpu()
        return (self.temperature * torch.logsumexp(logits, 1)).cpu()


def _fit_gaussian(feats: Tensor, y: Tensor, k: int) -> dict[str, Tensor]:
    """Class means and the inverse of the shared (tied) covariance of ``feats``."""
    y = y.to(feats.device)
    present = torch.bincount(y, minlength=k) > 0
    if int(present.sum()) < 2:
        raise SquigglesError("mahalanobis detectors need training data of at least two classes")
    means = torch.stack([feats[y == c].mean(0) for c in range(k) if present[c]])
    centred = feats - means[torch.cumsum(present.long(), 0)[y] - 1]
    cov = centred.T @ centred / len(feats)
    # A ridge of 1e-6 of the mean variance keeps the inverse finite when features are collinear (dead units).
    ridge = 1e-6 * float(cov.diagonal().mean().clamp_min(1e-12))
    eye = torch.eye(len(cov), dtype=cov.dtype, device=cov.device)
    return {"means": means, "precision": torch.linalg.inv(cov + ridge * eye)}


def _gaussian_score(fitted: dict[str, Tensor], feats: Tensor) -> Tensor:
    """Minus the smallest Mahalanobis distance to a class mean."""
    d = feats[:, None, :] - fitted["means"][None]  # B x K x D
    return -torch.einsum("bkd,de,bke->bk", d, fitted["precision"], d).amin(1)


def make_detector(model: nn.Module, method: str = "msp", *, temperature: float | None = None,
                  eps: float | None = None, k: int = 50, batch_size: int = 500) -> Detector:
    """An unfitted detector with the method's defaults (ODIN: T = 1000, eps = 0.0014; others: T = 1; knn: k = 50)."""
    if method not in METHODS:
        raise SquigglesError(f"unknown detector {method!r}; choose from: {', '.join(METHODS)}")
    t = temperature if temperature is not None else (1000.0 if method == "odin" else 1.0)
    e = eps if eps is not None else (0.0014 if method == "odin" else 0.0)
    if not t > 0 or not e >= 0:
        raise SquigglesError(f"the temperature must be > 0 and eps >= 0, got {t} and {e}")
    if k < 1:
        raise SquigglesError(f"knn: k must be >= 1, got {k}")
    if method in ("mahalanobis", "knn", "ensemble"):
        _last_linear(model)  # fail before any work
    return Detector(model, method, t, e, k, batch_size)


def fit_detector(model: nn.Module, train: Any, method: str = "msp", **options: Any) -> Detector:
    """``make_detector`` then ``fit`` on the training data: a `squiggles.data.Dataset` or an ``(x, y)`` pair.

    Example: ``detector = fit_detector(model, load_dataset("mnist", "train"), method="mahalanobis")``, then
    ``detector.score(x)`` for each incoming batch.
    """
    x, y = (train.x, train.y) if hasattr(train, "x") else train
    if getattr(train, "split", "train") not in ("train", "trainval", "all", "custom"):
        raise SquigglesError(f"detectors are fitted on training data; got the {train.split!r} split")
    det = make_detector(model, method, **options)
    return det.fit(x, y.to(_device(model)), getattr(train, "num_classes", None))


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _odin_step(model: nn.Module, x: Tensor, temperature: float, eps: float) -> Tensor:
    """ODIN's input pre-processing: a step of ``eps`` along the sign of the gradient of the log top softmax."""
    if eps == 0:
        return x
    x = x.detach().clone().requires_grad_(True)
    with eval_mode(model), torch.enable_grad():
        logits = model(x) / temperature
        top = logits.log_softmax(1).amax(1).sum()
        (grad,) = torch.autograd.grad(top, x)
    return (x + eps * grad.sign()).detach()


def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise SquigglesError("mahalanobis scores the input of the model's last nn.Linear layer (its penultimate "
                             "features), and this model has no nn.Linear; use msp, max-logit, energy or odin")
    return linears[-1]


@contextmanager
def _capture(layer: nn.Module) -> Iterator[list[Tensor]]:
    seen: list[Tensor] = []
    handle = layer.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().flatten(1)))
    try:
        yield seen
    finally:
        handle.remove()


def _penultimate(model: nn.Module, x: Tensor) -> Tensor:
    """The input of the model's last ``nn.Linear`` for each row of ``x``."""
    layer = _last_linear(model)
    with _capture(layer) as seen, torch.no_grad(), eval_mode(model):
        model(x)
    if not seen:
        raise SquigglesError("the model's last nn.Linear was not called in its forward pass; mahalanobis cannot "
                             "read its features")
    return seen[-1]


_ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Tanh, nn.Sigmoid)


def _stat_layers(model: nn.Module) -> list[nn.Module]:
    """The modules whose outputs layer-stats summarises: activations, else convolutions and hidden linears."""
    acts = [m for m in model.modules() if isinstance(m, _ACTIVATIONS)]
    if acts:
        return acts
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)][:-1]
    return [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Conv1d)] + linears


def _layer_stats(model: nn.Module, x: Tensor) -> Tensor:
    """Per-channel mean and standard deviation of every convolutional activation (N x C x ...), or, if the model
    has none, its hidden activations themselves."""
    layers = _stat_layers(model)
    if not layers:
        raise SquigglesError("layer-stats needs hidden layers to summarise; this model has none")
    seen: list[Tensor] = []
    handles = [m.register_forward_hook(lambda m, inp, out: seen.append(out.detach())) for m in layers]
    try:
        with torch.no_grad(), eval_mode(model):
            model(x)
    finally:
        for h in handles:
            h.remove()
    maps = [o for o in seen if o.dim() > 2]
    if maps:
        return torch.cat([torch.cat([o.flatten(2).mean(2), o.flatten(2).std(2)], 1) for o in maps], 1)
    return torch.cat([o.flatten(1) for o in seen[:-1] or seen], 1)
