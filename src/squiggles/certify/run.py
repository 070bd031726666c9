"""Certify a dataset: chunks of points, saved after each so a rerun resumes, shared out across torchrun processes.

`certify_points` runs randomized smoothing or bound propagation over ``data`` and returns a `CertifyResult`.
Each chunk draws its noise from a generator seeded by ``(seed, chunk)``, so the figures do not depend on how
the chunks were split across processes or across interrupted runs: a sharded or resumed run equals a single
uninterrupted one.

Example:
    >>> from squiggles.certify.run import CertifyConfig, certify_points          # doctest: +SKIP
    >>> res = certify_points(model, test.subset(500), CertifyConfig("smoothing", sigma=0.25))
    >>> res.curve()[:2]
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from squiggles._io import read_state, write_state
from squiggles.certify.bounds import check_method, check_region, margin_bounds, verified
from squiggles.certify.layers import chain_of
from squiggles.certify.result import CertifyResult
from squiggles.certify.smoothing import certify as smoothing_certify
from squiggles.certify.smoothing import check_smoothing
from squiggles.distributed import rank_world
from squiggles.errors import SquigglesError

BOUND_METHODS = ("ibp", "crown-ibp", "crown")
CERTIFY_METHODS = ("smoothing", *BOUND_METHODS)


@dataclass
class CertifyConfig:
    """What a certification computes. ``eps`` (bounds): the budgets to verify; ``radii`` (smoothing): where the
    curve is read off (default: a grid up to the largest radius N draws can certify)."""

    method: str = "smoothing"
    sigma: float = 0.25
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    norm: str = "linf"
    eps: list[float] = field(default_factory=lambda: [0.1])
    batch_size: int = 2000
    chunk: int | None = None
    seed: int = 0

    def validate(self, bounds: tuple[float, float]) -> None:
        if self.method not in CERTIFY_METHODS:
            raise SquigglesError(f"unknown certification method {self.method!r}; choose one of "
                                 f"{', '.join(CERTIFY_METHODS)}")
        if self.method == "smoothing":
            check_smoothing(self.sigma, self.n0, self.n, self.alpha)
        else:
            check_method(self.method)
            if not self.eps:
                raise SquigglesError("--eps is required for bound propagation (one budget or several)")
            for e in self.eps:
                check_region(self.norm, e, bounds)
        if self.batch_size < 1:
            raise SquigglesError(f"--batch-size must be >= 1, got {self.batch_size}")

    def chunk_size(self) -> int:
        if self.chunk:
            return self.chunk
        # About ten seconds of work per chunk on a laptop CPU, so an interruption loses little.
        return max(1, 2_000_000 // (self.n0 + self.n)) if self.method == "smoothing" else 100


def certify_points(model: Any, data: Any, config: CertifyConfig, *, state_path: str | Path | None = None,
                   progress: bool = True, device: torch.device | None = None) -> CertifyResult:
    """Certificates for every point of ``data`` (a `squiggles.data.Dataset` or an ``(x, y)`` pair)."""
    start = time.perf_counter()
    x, y, bounds = _tensors(data)
    config.validate(bounds)
    device = device or _device_of(model)
    if config.method != "smoothing":
        chain_of(model, tuple(x.shape[1:]))  # name an unsupported layer before any work
    size = config.chunk_size()
    chunks = -(-len(x) // size)
    fingerprint = _fingerprint(config, x, y)
    rank, world = rank_world()
    state = _load(state_path, rank, fingerprint, _empty(config, len(x), chunks))
    mine = [c for c in range(chunks) if c % world == rank and not state["done"][c]]
    bar = tqdm(total=len(x), desc=f"certify ({config.method})", unit="pt", disable=not progress, leave=False)
    bar.update(int(state["done"].sum()) * size if chunks else 0)
    for c in mine:
        sl = slice(c * size, min((c + 1) * size, len(x)))
        t0 = time.perf_counter()
        out = _certify_chunk(model, x[sl].to(device), y[sl].to(device), config, c, bounds)
        for key, value in out.items():
            state[key][..., sl] = value.cpu()
        state["seconds"][c] = time.perf_counter() - t0
        state["done"][c] = True
        _save(state_path, rank, state, fingerprint)
        bar.update(sl.stop - sl.start)
    bar.close()
    state = _gather(state, world, size)
    return CertifyResult.build(config, y, state, bounds, time.perf_counter() - start)


def _certify_chunk(model: Any, x: Tensor, y: Tensor, config: CertifyConfig, chunk: int,
                   bounds: tuple[float, float]) -> dict[str, Tensor]:
    if config.method == "smoothing":
        gen = torch.Generator(device=x.device).manual_seed(config.seed * 1_000_003 + chunk)
        cert = smoothing_certify(model, x, config.sigma, n0=config.n0, n=config.n, alpha=config.alpha,
                                 batch_size=config.batch_size, seed=gen)
        with torch.no_grad():
            clean = model(x).argmax(1)
        calls = torch.full((len(x),), config.n0 + config.n + 1, dtype=torch.long)
        return {"prediction": cert.prediction, "radius": cert.radius, "p_lower": cert.p_lower,
                "count": cert.count, "clean": clean, "calls": calls}
    flags, worst = [], []
    with torch.no_grad():
        clean = model(x).argmax(1)
        for eps in config.eps:
            margins = margin_bounds(model, x, y, config.norm, eps, config.method, bounds)
            flags.append(verified(margins, y) & (clean == y))
            worst.append(margins.scatter(1, y.unsqueeze(1), float("inf")).amin(1))
    return {"verified": torch.stack(flags), "margin": torch.stack(worst), "clean": clean,
            "calls": torch.ones(len(x), dtype=torch.long)}


def _empty(config: CertifyConfig, n: int, chunks: int) -> dict[str, Tensor]:
    common = {"done": torch.zeros(chunks, dtype=torch.bool), "seconds": torch.zeros(chunks, dtype=torch.float64),
              "clean": torch.full((n,), -1, dtype=torch.long), "calls": torch.zeros(n, dtype=torch.long)}
    if config.method == "smoothing":
        return common | {"prediction": torch.full((n,), -1, dtype=torch.long), "radius": torch.zeros(n),
                         "p_lower": torch.zeros(n), "count": torch.zeros(n, dtype=torch.long)}
    k = len(config.eps)
    return common | {"verified": torch.zeros(k, n, dtype=torch.bool), "margin": torch.zeros(k, n)}


def _tensors(data: Any) -> tuple[Tensor, Tensor, tuple[float, float]]:
    if isinstance(data, tuple):
        x, y = data
        return x, y, (0.0, 1.0)
    return data.x, data.y, tuple(data.bounds)


def _device_of(model: Any) -> torch.device:
    if isinstance(model, nn.Module):
        p = next(model.parameters(), None)
        if p is not None:
            return p.device
    return torch.device("cpu")


def _fingerprint(config: CertifyConfig, x: Tensor, y: Tensor) -> str:
    h = hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode())
    h.update(x.contiguous().cpu().numpy().tobytes())
    h.update(y.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _path(state_path: str | Path | None, rank: int) -> Path | None:
    if state_path is None:
        return None
    p = Path(state_path)
    return p if rank == 0 else p.with_name(f"{p.stem}.rank{rank}{p.suffix}")


def _load(state_path: str | Path | None, rank: int, fingerprint: str, fresh: dict[str, Tensor]) -> dict[str, Tensor]:
    path = _path(state_path, rank)
    if path is None or not path.exists():
        return fresh
    tensors, header = read_state(path, "certification state")
    if header.get("fingerprint") != fingerprint or set(tensors) != set(fresh):
        raise SquigglesError(f"certification state {path} belongs to a run with other settings or data; "
                             "use another --state file or delete this one")
    return tensors


def _save(state_path: str | Path | None, rank: int, state: dict[str, Tensor], fingerprint: str) -> None:
    path = _path(state_path, rank)
    if path is not None:
        write_state(path, state, {"fingerprint": fingerprint})


def _gather(state: dict[str, Tensor], world: int, size: int) -> dict[str, Tensor]:
    """Each process filled its own chunks; the others are zeros there. Merge by taking each chunk from its owner."""
    if world == 1:
        return state
    import torch.distributed as dist

    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, state)
    merged = {k: v.clone() for k, v in parts[0].items()}
    chunks = len(merged["done"])
    n = merged["clean"].shape[-1]
    for r, other in enumerate(parts[1:], start=1):
        for c in range(r, chunks, world):
            if not other["done"][c]:
                continue
            sl = slice(c * size, min((c + 1) * size, n))
            for key, value in other.items():
                if key in ("done", "seconds"):
                    merged[key][c] = value[c]
                else:
                    merged[key][..., sl] = value[..., sl]
    return merged
