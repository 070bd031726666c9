"""The maths of Adversarial Spheres (Gilmer et al. 2018, arXiv 1801.02774): the ellipsoid of a quadratic
network, its error rate (analytic, and sampled cheaply), the exact distance to its nearest error, the attack
that stays on the sphere, and the experiment's figures.

A quadratic network with its readout fixed to 1 is f(x) = |W x|² + b. With M = W^T W / (-b) = V diag(α) V^T it
says "outer sphere" iff x^T M x > 1: the decision boundary is an ellipsoid whose axis i is weighted by α_i. On
the inner sphere (|x| = 1) x^T M x takes every value in [min α, max α], on the outer sphere (|x| = R) every value
in R² [min α, max α], so the classifier is perfect iff every α_i lies in the band [1/R², 1].

Errors as Gaussian quadratic forms: a uniform point of the sphere of radius r is x = r g / |g| with g ~ N(0, I),
and in the eigenbasis V^T g is again N(0, I). So an inner point is misclassified iff Σ (α_i - 1) g_i² > 0 and
an outer point iff Σ (1 - R² α_i) g_i² > 0: both are P[Σ c_i g_i² > 0] for a weight vector c (`error_weights`).

Example:
    >>> import torch
    >>> alpha = torch.tensor([1.2, 0.9, 0.8, 0.5], dtype=torch.float64)
    >>> bad_axes(alpha, 1.3)
    {'bad_axes': 2, 'above_band': 1, 'below_band': 1}
    >>> inner, outer = error_weights(alpha, 1.3)
    >>> [round(v, 2) for v in inner.tolist()]
    [0.2, -0.1, -0.2, -0.5]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from squiggles.errors import SquigglesError
from squiggles.report.figures import pyplot


def sphere_points(
    n: int, dim: int, radius: float | Tensor, gen: torch.Generator, device: torch.device | str = "cpu"
) -> Tensor:
    """``n`` points uniform on the sphere(s) of ``radius`` (a number, or one radius per point) in R^dim."""
    g = torch.randn(n, dim, generator=gen, device=device)
    r = radius.view(-1, 1) if isinstance(radius, Tensor) else radius
    return r * g / g.norm(dim=1, keepdim=True)


def ellipsoid(weight: Tensor, bias: float) -> tuple[Tensor, Tensor]:
    """Axis weights α (descending) and axes V (columns) of x^T M x = 1, M = W^T W / (-b): the normalisation of
    the paper, in which the network says "outer" iff Σ α_i (v_i · x)² > 1. Needs b < 0 (else no inner class)."""
    if not bias < 0:
        raise SquigglesError(
            f"the quadratic net's bias is {bias:.3g}: it calls every point outer and has no "
            "ellipsoid; train it with a smaller lr"
        )
    w = weight.detach().to("cpu", torch.float64)
    alpha, axes = torch.linalg.eigh(w.T @ w / -bias)
    return alpha.flip(0), axes.flip(1)


def band(radius: float) -> tuple[float, float]:
    """The axis weights of a perfect classifier: [1/R², 1] (Gilmer et al. 2018, Section 5)."""
    return 1.0 / radius**2, 1.0


def bad_axes(alpha: Tensor, radius: float) -> dict[str, int]:
    """How many α_i fall outside [1/R², 1]: above it (inner-sphere errors) and below it (outer-sphere ones)."""
    low, high = band(radius)
    above, below = int((alpha > high).sum()), int((alpha < low).sum())
    return {"bad_axes": above + below, "above_band": above, "below_band": below}


def error_weights(alpha: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """c for each sphere such that a point of it is misclassified iff Σ c_i g_i² > 0 (module docstring)."""
    alpha = alpha.to(torch.float64)
    return alpha - 1.0, 1.0 - radius**2 * alpha


def normal_tail(c: Tensor) -> float:
    """P[Σ c_i g_i² > 0] by the normal approximation (the paper's Eq. 3 as corrected): S = Σ c_i g_i² has mean
    μ = Σ c_i and variance σ² = 2 Σ c_i², so P ≈ 1 - Φ(-μ/σ) = Φ(μ/σ). Poor far in the tail (see saddlepoint)."""
    mu, sigma = float(c.sum()), math.sqrt(2.0 * float((c**2).sum()))
    return 0.5 * math.erfc(-mu / sigma / math.sqrt(2.0)) if sigma > 0 else float(mu > 0)


def saddlepoint_tail(c: Tensor, iters: int = 200) -> float:
    """P[Σ c_i g_i² > 0] by the Lugannani-Rice saddle-point formula, accurate deep in the tail where the normal
    approximation is not. Exactly 0 when every c_i <= 0 (no error exists on that sphere).

    The cumulant generating function is K(t) = -½ Σ log(1 - 2 t c_i); the saddle point K'(t) = 0 lies in
    (0, 1/(2 max c)) when Σ c_i < 0, and the tail is 1 - Φ(w) + φ(w) (1/u - 1/w), w = √(-2K), u = t √K''.
    """
    c = c.to(torch.float64)
    top, mu = float(c.max()), float(c.sum())
    if top <= 0:
        return 0.0
    if mu >= 0:  # the error is not in the tail (50 % or more): the normal approximation is good enough here
        return normal_tail(c)
    lo, hi = 0.0, 0.5 / top
    for _ in range(iters):  # K' increases from μ < 0 at t = 0 to +inf at 1/(2 max c)
        t = 0.5 * (lo + hi)
        lo, hi = (t, hi) if float((c / (1 - 2 * t * c)).sum()) < 0 else (lo, t)
    t = 0.5 * (lo + hi)
    k = -0.5 * float(torch.log1p(-2 * t * c).sum())
    k2 = float((2 * c**2 / (1 - 2 * t * c) ** 2).sum())
    w, u = math.sqrt(max(-2.0 * k, 0.0)), t * math.sqrt(k2)
    if w < 1e-6:
        return 0.5
    density = math.exp(-0.5 * w * w) / math.sqrt(2 * math.pi)
    return max(0.5 * math.erfc(w / math.sqrt(2.0)) + density * (1 / u - 1 / w), 0.0)


@torch.no_grad()
def sampled_errors(
    alpha: Tensor,
    radius: float,
    n_points: int,
    gen: torch.Generator,
    device: torch.device | str = "cpu",
    chunk: int = 20_000,
) -> tuple[int, int]:
    """Misclassified points among ``n_points`` fresh uniform points of each sphere: (inner, outer).

    In the eigenbasis the network's decision on x = r g/|g| depends only on h = V^T g ~ N(0, I), so a point costs
    d operations instead of the d² of x^T M x (or the d·hidden of the network). Each direction g is put on both
    spheres: each sphere's points are independent and uniform, and the Gaussian draws (the cost) are halved."""
    c = torch.stack(error_weights(alpha, radius), 1).to(device, torch.float32)  # d x 2: inner, outer
    errors = torch.zeros(2, dtype=torch.int64, device=device)
    for start in range(0, n_points, chunk):
        h2 = torch.randn(min(chunk, n_points - start), len(c), generator=gen, device=device).square_()
        errors += (h2 @ c > 0).sum(0)
    return int(errors[0]), int(errors[1])


def upper95(errors: int, n: int) -> float:
    """One-sided 95 % upper bound on an error rate from ``errors`` in ``n`` (exact for 0: 1 - 0.05^(1/n))."""
    if errors == 0:
        return -math.expm1(math.log(0.05) / n)
    p = errors / n  # Wilson score bound, good enough once errors are seen
    z = 1.6449
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min((centre + spread) / (1 + z * z / n), 1.0)


def nearest_error(c: Tensor, u: Tensor, iters: int = 200) -> tuple[Tensor, Tensor]:
    """The exact nearest error to unit points ``u`` (rows, eigenbasis coordinates) on the unit sphere, for the
    error set {v : |v| = 1, Σ c_i v_i² >= 0}: the angle to it (radians; inf when the set is empty) and the point.

    The nearest point is v(t) ∝ (I + t C)^{-1} u with t in (-1/max c, 0) where Σ c_i v_i² = 0 (bisection: that
    sum decreases in t). It is the global optimum: with λ = u·v and H = λ (I + t C) positive definite, any
    feasible v' has u·v' = v^T H v' <= (v'^T H v' + v^T H v) / 2 <= λ, since v'^T C v' >= 0 = v^T C v.
    """
    c, u = c.to(torch.float64), u.to(torch.float64)
    top = float(c.max())
    if top <= 0:
        return torch.full((len(u),), math.inf, dtype=torch.float64), torch.full_like(u, math.nan)
    lo = torch.full((len(u), 1), -1.0 / top, dtype=torch.float64)
    hi = torch.zeros_like(lo)
    for _ in range(iters):
        t = 0.5 * (lo + hi)
        inside = (c * (u / (1 + t * c)) ** 2).sum(1, keepdim=True) < 0  # still correct: move t down
        hi, lo = torch.where(inside, t, hi), torch.where(inside, lo, t)
    v = u / (1 + lo * c)  # lo: the error side of the boundary
    v = v / v.norm(dim=1, keepdim=True)
    return torch.arccos((v * u).sum(1).clamp(-1.0, 1.0)), v


def cap_angle(mu: float, dim: int, grid: int = 40_000) -> float:
    """The median distance (radians) from the unit sphere in R^dim to a spherical cap of measure ``mu``.

    By the isoperimetric inequality no error set of measure ``mu`` is farther away than that cap (Gilmer et al.
    2018, Theorem 5.1: d(E) <= O(Φ^-1(μ)/√n)). The cap is {x_1 >= s} with P[x_1 >= s] = μ, where x_1 has the
    density ∝ (1 - t²)^((dim-3)/2) on [-1, 1]; the median point has x_1 = 0, so the distance is arcsin(s).
    """
    if mu >= 0.5:
        return 0.0
    t = torch.linspace(-1.0, 1.0, grid + 1, dtype=torch.float64)[1:-1]
    log_density = 0.5 * (dim - 3) * torch.log1p(-t * t)
    log_tail = torch.logcumsumexp((log_density - torch.logsumexp(log_density, 0)).flip(0), 0).flip(0)
    beyond = (log_tail <= math.log(max(mu, 1e-300))).nonzero()
    return math.asin(float(t[beyond[0, 0]])) if len(beyond) else math.pi / 2


def chord(angle: Tensor | float, radius: float) -> Tensor | float:
    """The L2 distance between two points of the sphere of ``radius`` at ``angle`` radians apart."""
    half = angle / 2
    return 2 * radius * (half.sin() if isinstance(half, Tensor) else math.sin(half))


# --- the attack that stays on the sphere ----------------------------------------------------------------


@dataclass
class ManifoldAttack:
    """Per start point: whether an error was found on its own sphere, the point, and its distance."""

    found: Tensor
    x_error: Tensor
    distance: Tensor  # L2 from the start
    angle: Tensor  # radians from the start


def wrong_margin(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """> 0 exactly where ``model`` misclassifies (the logit pushed toward the other sphere's sign)."""
    return (1 - 2 * y.to(x.dtype)) * model(x)


def manifold_attack(
    model: nn.Module, x: Tensor, y: Tensor, *, steps: int, step: float, refine: int = 30
) -> ManifoldAttack:
    """Gradient ascent on the wrong-class margin, every step projected back onto the point's own sphere
    (x ← r x/|x|), stopping at the first misclassified iterate; the crossing is then refined by bisection
    along the arc, so the distance is that of the first error on the ascent path (an upper bound on the
    nearest one). Gradients are taken on the input only."""
    r = x.norm(dim=1, keepdim=True)
    cur, before, after = x.clone(), x.clone(), x.clone()
    found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for _ in range(steps):
        live = (~found).nonzero().squeeze(1)
        if len(live) == 0:
            break
        xa = cur[live].detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(wrong_margin(model, xa, y[live]).sum(), xa)
        grad = grad - (grad * xa).sum(1, keepdim=True) * xa / r[live] ** 2  # along the sphere only
        nxt = xa.detach() + step * r[live] * grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-30)
        nxt = r[live] * nxt / nxt.norm(dim=1, keepdim=True)
        with torch.no_grad():
            hit = wrong_margin(model, nxt, y[live]) > 0
        before[live[hit]], after[live[hit]] = xa.detach()[hit], nxt[hit]
        cur[live], found[live[hit]] = nxt, True
    with torch.no_grad():
        for _ in range(refine):  # the crossing between the last correct and the first wrong iterate
            mid = before + after
            mid = r * mid / mid.norm(dim=1, keepdim=True)
            wrong = (wrong_margin(model, mid, y) > 0).unsqueeze(1)
            after, before = torch.where(wrong, mid, after), torch.where(wrong, before, mid)
    cos = ((after * x).sum(1) / r.squeeze(1) ** 2).clamp(-1, 1)
    nan = torch.full_like(cos, math.nan)
    return ManifoldAttack(
        found, after, torch.where(found, (after - x).norm(dim=1), nan), torch.where(found, torch.arccos(cos), nan)
    )


def attack_rows(
    model: nn.Module,
    name: str,
    x: Tensor,
    y: Tensor,
    *,
    steps: int,
    step: float,
    radius: float,
    exact: Tensor | None = None,
) -> list[dict[str, Any]]:
    """One row per sphere: how often the manifold attack finds an error from a correctly classified point and
    the median distance to it; for the quadratic net also the exact nearest-error angle from the same points."""
    with torch.no_grad():
        correct = wrong_margin(model, x, y) < 0
    found_all = manifold_attack(model, x[correct], y[correct], steps=steps, step=step)
    rows = []
    for label, sphere in enumerate(("inner", "outer")):
        mine = y[correct] == label
        found = found_all.found[mine]
        row: dict[str, Any] = {
            "net": name,
            "dim": x.shape[1],
            "sphere": sphere,
            "starts": int(mine.sum()),
            "found": int(found.sum()),
            "success_rate": _mean(found.float()),
            "median_l2": rounded(_median(found_all.distance[mine][found])),
            "median_angle_deg": degrees(_median(found_all.angle[mine][found])),
        }
        if exact is not None:
            angles = exact[((y == label) & correct).cpu()]
            reachable = angles[torch.isfinite(angles)]
            row["errors_exist"] = len(reachable) > 0
            row["exact_median_angle_deg"] = degrees(_median(reachable))
            r = radius if label else 1.0
            row["exact_median_l2"] = rounded(chord(_median(reachable), r)) if len(reachable) else None
        rows.append(row)
    return rows


def _mean(t: Tensor) -> float | None:
    return round(float(t.mean()), 4) if len(t) else None


def _median(t: Tensor) -> float | None:
    return float(t.median()) if len(t) else None


def degrees(radians: float | None) -> float | None:
    return None if radians is None or not math.isfinite(radians) else round(math.degrees(radians), 2)


def rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


# --- figures --------------------------------------------------------------------------------------------

CAPTIONS = {
    "alphas": "Sorted axis weights α_i of each trained quadratic net (log scale); the classifier is perfect iff all "
    "lie in the shaded band [1/R², 1].",
    "scan": "Left: share of axis weights outside [1/R², 1] against n. Right: median angle from correctly classified "
    "points to the nearest error on their own sphere: exact (quadratic net), found by the manifold attack, and the "
    "spherical-cap bound of Theorem 5.1 at the inner sphere's saddle-point error rate.",
    "outputs": "The nets' outputs on {n:,} fresh points of each sphere at n = {dim}, and their decision thresholds.",
}


def draw_alphas(path: Path, alphas: dict[int, Tensor], radius: float) -> None:
    """The sorted axis weights of each n against the band [1/R², 1]."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.axhspan(*band(radius), color="tab:green", alpha=0.15, label="[1/R², 1]: perfect")
    for n, alpha in alphas.items():
        label = f"n = {n}: {bad_axes(alpha, radius)['bad_axes']} bad"
        ax.plot((torch.arange(n) + 0.5) / n, alpha.numpy(), label=label)
    ax.set(xlabel="axis rank / n", ylabel="axis weight α_i", yscale="log", title="The quadratic nets' ellipsoids")
    ax.legend(fontsize=8)
    _save(plt, fig, path)


def draw_scan(path: Path, scan: list[dict[str, Any]]) -> None:
    """Bad axes (left) and the median angle to the nearest error (right) against n."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    curves = {"bad_axes": "all bad", "above_band": "α > 1 (inner errors)", "below_band": "α < 1/R² (outer errors)"}
    for (key, name), style in zip(curves.items(), ("o-", "s--", "^--"), strict=True):
        left.plot([r["dim"] for r in scan], [r[key] / r["dim"] for r in scan], style, label=name)
    left.set(xscale="log", xlabel="n", ylabel="fraction of axes", title="Bad axes")
    curves = {
        "exact_inner_angle_deg": "exact nearest (inner)",
        "attack_inner_angle_deg": "manifold attack (inner)",
        "exact_outer_angle_deg": "exact nearest (outer)",
        "attack_outer_angle_deg": "manifold attack (outer)",
        "cap_bound_angle_deg": "cap bound at the inner error rate",
    }
    for (key, name), style in zip(curves.items(), ("o-", "s--", "^-", "v--", "k:"), strict=True):
        points = [(r["dim"], r[key]) for r in scan if r.get(key) is not None]
        if points:
            right.plot(*zip(*points, strict=True), style, label=name)
    right.set(xscale="log", xlabel="n", ylabel="median angle (degrees)", title="Distance to the nearest error")
    if perfect := [str(r["dim"]) for r in scan if r["bad_axes"] == 0]:
        right.text(0.02, 0.02, f"no error exists at n = {', '.join(perfect)}", transform=right.transAxes, fontsize=8)
    dims = [r["dim"] for r in scan]
    for ax in (left, right):
        ax.set_xticks(dims, [str(d) for d in dims])
        ax.minorticks_off()
        ax.legend(fontsize=8)
    _save(plt, fig, path)


def draw_outputs(path: Path, outputs: dict[str, tuple[Tensor, Tensor, float]]) -> None:
    """Histograms of each net's output on fresh points of the two spheres, with its decision threshold."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(outputs), figsize=(5 * len(outputs), 3.6), squeeze=False)
    for ax, (name, (inner, outer, threshold)) in zip(axes[0], outputs.items(), strict=True):
        ax.hist(inner.cpu().numpy(), bins=80, alpha=0.6, label="inner sphere")
        ax.hist(outer.cpu().numpy(), bins=80, alpha=0.6, label="outer sphere")
        ax.axvline(threshold, color="k", lw=1, label="decision threshold")
        ax.set(title=name, xlabel="output", ylabel="points")
        ax.legend(fontsize=8)
    _save(plt, fig, path)


def _save(plt: Any, fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
