"""Sound bounds on a network's outputs over a whole input region: interval bounds (IBP) and CROWN.

- **IBP** (Gowal et al. 2018, arXiv 1810.12715): push the box through layer by layer; each affine map in
  centre-radius form (``c -> W c + b``, ``r -> |W| r``), each ReLU and max-pool on both ends. For a margin the
  last affine maps are folded into the specification, as in the paper ("elision"), which is exact for them.
- **CROWN** (Zhang et al. 2018, arXiv 1811.00866): pull a linear function of the output back to the input,
  bounding each unstable ReLU by its upper chord and an adaptive lower line (slope 1 where ``u > -l``, else 0),
  then minimise the resulting linear function over the region in closed form. ``crown`` tightens every
  intermediate layer the same way (intersected with IBP); ``crown-ibp`` (Zhang et al. 2020, arXiv 1906.06316)
  takes IBP's intermediate bounds and CROWN only for the last step, the cheap bound used in training. A max
  pool is bounded by its intervals (the backward pass stops there).

Regions: the Linf ball clipped to the data bounds, or the L2 ball (the first affine block is then bounded
exactly by the dual norm, and later layers as above). Every bound is differentiable in the parameters.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    >>> x, y = torch.rand(4, 2), torch.tensor([0, 1, 2, 0])
    >>> ibp = margin_bounds(net, x, y, "linf", 0.05, method="ibp")
    >>> crown = margin_bounds(net, x, y, "linf", 0.05, method="crown")
    >>> bool((crown >= ibp - 1e-6).all())      # CROWN is never looser than IBP here
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from squiggles.certify.layers import AFFINE, MaxPool, Op, Relu, Shape, chain_of, numel
from squiggles.errors import SquigglesError

METHODS = ("ibp", "crown-ibp", "crown")
# Elements of one backward coefficient tensor (batch x spec rows x layer size) before the spec is cut in chunks.
CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class Region:
    """The inputs a certificate covers: the Linf ball around ``center`` clipped to ``bounds``, or the L2 ball."""

    center: Tensor
    norm: str
    eps: float
    bounds: tuple[float, float] = (0.0, 1.0)

    def box(self) -> tuple[Tensor, Tensor]:
        lo, hi = self.bounds
        return (self.center - self.eps).clamp(lo, hi), (self.center + self.eps).clamp(lo, hi)

    def minimum(self, a: Tensor) -> Tensor:
        """min over the region of ``<a_s, x>`` for each spec row: ``a`` is B x S x input shape -> B x S."""
        if self.norm == "l2":
            flat = a.flatten(2)
            return (flat * self.center.flatten(1).unsqueeze(1)).sum(2) - self.eps * flat.norm(dim=2)
        lo, hi = self.box()
        return box_minimum(a, lo, hi)


def box_minimum(a: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """min over ``lo <= x <= hi`` of ``<a_s, x>``: ``a`` B x S x shape, ``lo``/``hi`` B x shape -> B x S."""
    flat = a.flatten(2)
    return (flat.clamp_min(0) * lo.flatten(1).unsqueeze(1) + flat.clamp_max(0) * hi.flatten(1).unsqueeze(1)).sum(2)


def check_region(norm: str, eps: float, bounds: tuple[float, float]) -> None:
    """Refuse a region bound propagation cannot take, with the fix."""
    if norm not in ("linf", "l2"):
        raise SquigglesError(f"bounds cover linf or l2 balls, not {norm!r}; use --norm linf or --norm l2")
    width = bounds[1] - bounds[0]
    if not eps >= 0:
        raise SquigglesError(f"--eps must be >= 0, got {eps:g}")
    if norm == "linf" and eps > width:
        raise SquigglesError(f"--eps {eps:g} is outside the input range {bounds}: give 0 <= eps <= {width:g}")


@dataclass
class _Pass:
    """Interval bounds at the input of every nonlinear op, tightened by CROWN where asked."""

    chain: list[Op]
    pre: dict[int, tuple[Tensor, Tensor]]
    out: tuple[Tensor, Tensor]


def _interval_pass(chain: list[Op], region: Region, method: str) -> _Pass:
    nonlinear = [i for i, op in enumerate(chain) if not isinstance(op, AFFINE)]
    pre: dict[int, tuple[Tensor, Tensor]] = {}
    if region.norm == "l2":
        start = nonlinear[0] if nonlinear else len(chain)
        lo, hi = _exact_affine_prefix(chain, start, region)
    else:
        start = 0
        lo, hi = region.box()
    c, r = (hi + lo) / 2, (hi - lo) / 2
    for i in range(start, len(chain)):
        op = chain[i]
        if isinstance(op, AFFINE):
            c, r = op.interval(c, r)
            continue
        lo, hi = c - r, c + r
        if method == "crown" and i != nonlinear[0]:
            lo, hi = _tighten(chain, i, pre, region, lo, hi)
        pre[i] = (lo, hi)
        if isinstance(op, Relu):
            lo, hi = lo.clamp_min(0), hi.clamp_min(0)
        else:
            lo, hi = op.forward(lo), op.forward(hi)
        c, r = (hi + lo) / 2, (hi - lo) / 2
    return _Pass(chain, pre, (c - r, c + r))


def _exact_affine_prefix(chain: list[Op], end: int, region: Region) -> tuple[Tensor, Tensor]:
    """Bounds at the input of op ``end`` when everything before it is affine (exact for any region)."""
    shape = chain[end - 1].out_shape if end else tuple(region.center.shape[1:])
    return _identity_bounds(chain, end, shape, {}, region, "crown")


def _tighten(chain: list[Op], i: int, pre: dict[int, tuple[Tensor, Tensor]], region: Region, lo: Tensor,
             hi: Tensor) -> tuple[Tensor, Tensor]:
    """CROWN bounds for the units IBP leaves unstable (``lo < 0 < hi``), intersected with IBP's; a stable unit's
    relaxation is exact already, so it needs no tighter bound (this is most of CROWN's saving)."""
    b = len(lo)
    unstable = ((lo < 0) & (hi > 0)).flatten(1)
    m = int(unstable.sum(1).max()) if b else 0
    if m == 0 or not isinstance(chain[i], Relu):
        return lo, hi  # a max pool's inputs come out of a ReLU whose bounds are tightened already
    # Each point's unstable units first (a stable sort keeps their order), padded with stable ones to m.
    order = torch.sort((~unstable).to(torch.int8), dim=1, stable=True).indices[:, :m]
    clo, chi = _unit_bounds(chain, i, chain[i].in_shape, order, pre, region)
    lo_flat, hi_flat = lo.flatten(1).clone(), hi.flatten(1).clone()
    lo_flat.scatter_(1, order, torch.maximum(lo_flat.gather(1, order), clo))
    hi_flat.scatter_(1, order, torch.minimum(hi_flat.gather(1, order), chi))
    return lo_flat.view_as(lo), hi_flat.view_as(hi)


def _unit_bounds(chain: list[Op], end: int, shape: Shape, units: Tensor, pre: dict[int, tuple[Tensor, Tensor]],
                 region: Region) -> tuple[Tensor, Tensor]:
    """CROWN lower and upper bounds of the chosen units (B x m flat indices) at the input of op ``end``."""
    b, m = units.shape
    n = numel(shape)
    rows = max(1, CHUNK_ELEMENTS // max(1, 2 * b * max(_widest(chain, end), n)))
    lows, highs = [], []
    for s in range(0, m, rows):
        idx = units[:, s : s + rows]
        k = idx.shape[1]
        spec = torch.zeros(b, k, n, dtype=region.center.dtype, device=region.center.device)
        spec.scatter_(2, idx.unsqueeze(2), 1.0)
        a = torch.cat([spec, -spec], 1).view(b, 2 * k, *shape)
        low = _backward(chain, end, a, pre, region, "crown")
        lows.append(low[:, :k])
        highs.append(-low[:, k:])
    return torch.cat(lows, 1), torch.cat(highs, 1)


def _identity_bounds(chain: list[Op], end: int, shape: Shape, pre: dict[int, tuple[Tensor, Tensor]],
                     region: Region, method: str) -> tuple[Tensor, Tensor]:
    """Lower and upper CROWN bounds of every unit at the input of op ``end``, in spec chunks that fit memory."""
    b, n = len(region.center), numel(shape)
    ref = region.center
    rows = max(1, CHUNK_ELEMENTS // max(1, b * max(_widest(chain, end), n)))
    lows, highs = [], []
    for s in range(0, n, rows):
        m = min(rows, n - s)
        eye = torch.zeros(m, n, dtype=ref.dtype, device=ref.device)
        eye[torch.arange(m), torch.arange(s, s + m)] = 1
        a = torch.cat([eye, -eye]).reshape(1, 2 * m, *shape).expand(b, 2 * m, *shape)
        low = _backward(chain, end, a, pre, region, method)
        lows.append(low[:, :m])
        highs.append(-low[:, m:])
    return torch.cat(lows, 1).reshape(b, *shape), torch.cat(highs, 1).reshape(b, *shape)


def _widest(chain: list[Op], end: int) -> int:
    return max([numel(op.in_shape) for op in chain[:end]] + [1])


def _backward(chain: list[Op], end: int, a: Tensor, pre: dict[int, tuple[Tensor, Tensor]], region: Region,
              method: str) -> Tensor:
    """Lower bound of ``<a, f_end(x)>`` over the region, where ``f_end`` is the chain up to op ``end``.

    IBP stops at the first nonlinear op it meets going back (elision of the trailing affine maps); CROWN relaxes
    each ReLU and stops only at a max pool. Where it stops, the interval there finishes the bound.
    """
    bias = a.new_zeros(a.shape[:2])
    for i in reversed(range(end)):
        op = chain[i]
        if isinstance(op, AFFINE):
            a, add = op.back(a)
            bias = bias + add
            continue
        lo, hi = pre[i]
        if isinstance(op, MaxPool) or method == "ibp":
            out_lo, out_hi = (lo.clamp_min(0), hi.clamp_min(0)) if isinstance(op, Relu) else (op.forward(lo),
                                                                                             op.forward(hi))
            return bias + box_minimum(a, out_lo, out_hi)
        a, add = _relu_back(a, lo, hi)
        bias = bias + add
    return bias + region.minimum(a)


def _relu_back(a: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """The ReLU's linear relaxation for a lower bound: positive coefficients take the lower line, negative ones
    the upper chord ``u (x - l) / (u - l)``."""
    lo, hi = lo.unsqueeze(1), hi.unsqueeze(1)
    active, dead = lo >= 0, hi <= 0
    unstable = ~(active | dead)
    span = torch.where(unstable, hi - lo, torch.ones_like(hi))
    upper = torch.where(active, torch.ones_like(hi), torch.where(unstable, hi / span, torch.zeros_like(hi)))
    lower = torch.where(active | (unstable & (hi > -lo)), torch.ones_like(hi), torch.zeros_like(hi))
    intercept = torch.where(unstable, -lo * upper, torch.zeros_like(hi))
    neg = a.clamp_max(0)
    return a.clamp_min(0) * lower + neg * upper, (neg * intercept).flatten(2).sum(2)


def check_method(method: str) -> None:
    if method not in METHODS:
        raise SquigglesError(f"unknown bound method {method!r}; choose one of {', '.join(METHODS)}")


def output_bounds(model: nn.Module | list[Op], x: Tensor, norm: str, eps: float, method: str = "ibp",
                  bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds of every output (logit) over the region around each row of ``x``."""
    check_method(method)
    check_region(norm, eps, bounds)
    chain = model if isinstance(model, list) else chain_of(model, tuple(x.shape[1:]))
    region = Region(x, norm, eps, bounds)
    run = _interval_pass(chain, region, method)
    if method == "ibp":
        return run.out
    out_shape = chain[-1].out_shape if chain else tuple(x.shape[1:])
    lo, hi = _identity_bounds(chain, len(chain), out_shape, run.pre, region, method)
    # Both are sound, so their intersection is: CROWN is never looser than IBP, even where its relaxation loses.
    return torch.maximum(lo, run.out[0]), torch.minimum(hi, run.out[1])


def spec_bounds(model: nn.Module | list[Op], x: Tensor, spec: Tensor, norm: str, eps: float, method: str = "ibp",
                bounds: tuple[float, float] = (0.0, 1.0)) -> Tensor:
    """Lower bounds of ``spec @ f(x')`` over the region: ``spec`` is B x S x outputs -> B x S."""
    check_method(method)
    check_region(norm, eps, bounds)
    chain = model if isinstance(model, list) else chain_of(model, tuple(x.shape[1:]))
    region = Region(x, norm, eps, bounds)
    run = _interval_pass(chain, region, method)
    spec = spec.to(x.dtype)
    low = _backward(chain, len(chain), spec, run.pre, region, method)
    if method != "ibp":  # both bounds are sound, so the larger is: never looser than IBP on the same pass
        low = torch.maximum(low, _backward(chain, len(chain), spec, run.pre, region, "ibp"))
    return low


def margin_spec(y: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Rows ``e_y - e_j`` for every class j (the row j = y is zero): B x K x K."""
    eye = torch.eye(num_classes, dtype=dtype, device=y.device)
    return eye[y].unsqueeze(1) - eye.unsqueeze(0)


def margin_bounds(model: nn.Module | list[Op], x: Tensor, y: Tensor, norm: str, eps: float, method: str = "ibp",
                  bounds: tuple[float, float] = (0.0, 1.0), num_classes: int | None = None) -> Tensor:
    """Lower bounds of ``f_y(x') - f_j(x')`` over the region for every class j (0 at j = y): B x K.

    A point is verified when every other class's bound is positive (`verified`).
    """
    chain = model if isinstance(model, list) else chain_of(model, tuple(x.shape[1:]))
    k = num_classes or numel(chain[-1].out_shape)
    return spec_bounds(chain, x, margin_spec(y, k, x.dtype), norm, eps, method, bounds)


def verified(margins: Tensor, y: Tensor) -> Tensor:
    """True where every margin bound except the label's own is positive."""
    others = margins.scatter(1, y.unsqueeze(1), float("inf"))
    return (others > 0).all(1)
