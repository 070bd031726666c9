"""`evaluate`: the batched evaluation loop around the cascade.

The points are cut into fixed chunks of ``batch_size``. Each chunk runs the whole cascade at every budget
with seeds fixed by (seed, chunk, budget), so the result of a chunk does not depend on which process runs it
or when: that is what makes an evaluation resumable from its state file and shardable across processes
(``torchrun``) with exactly the single-process result.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from squiggles._io import versions
from squiggles.access import as_labels, check_access, predicted_labels
from squiggles.attacks._core import attack_mode, check_inputs
from squiggles.distributed import rank_world
from squiggles.errors import SquigglesError
from squiggles.evaluation import state as state_io
from squiggles.evaluation.cascade import CLEAN_ERROR, REUSED, ROBUST, StageStats, run_cascade, stage_seed
from squiggles.evaluation.ensembles import Stage, resolve_stages
from squiggles.evaluation.result import EvalResult
from squiggles.runtime import fast_layout
from squiggles.threat import ThreatModel

Model = Callable[[Tensor], Tensor]


def evaluate(
    model: Model, data: Any, threat: ThreatModel, attacks: str | Sequence[str] | tuple[Stage, ...] = "standard", *,
    eps: float | Sequence[float] | None = None, n: int | None = None, batch_size: int = 500, seed: int = 0,
    reuse_minimal: bool | None = None, state_path: str | Path | None = None, checks: bool = True,
    keep_adv: bool = True, progress: bool = True, device: str | torch.device | None = None, remedies: bool = True,
    access: str = "gradients", queries: int | None = None,
) -> EvalResult:
    """Robust accuracy of ``model`` on ``data`` under ``threat`` by the attack cascade ``attacks``.

    ``eps``: one budget or a list (an accuracy-versus-eps curve in one call; a point broken at a smaller budget
    is broken at every larger one, and with ``reuse_minimal`` a minimal-norm pre-pass (FMN) settles every budget
    above each point's minimal norm without attacking it again). ``state_path``: a file to save progress in
    after every chunk; an interrupted call with the same arguments continues from it. ``remedies``: when a
    sanity check fires for a cause with a known remedy (probability outputs, randomness, masked gradients), the
    points still robust are attacked again through it and the headline is the worst case of both
    (`squiggles.evaluation.remedied`); the figures before the remedies stay in the result.

    ``access``: what the attacks may read of the model (`squiggles.access`). ``"labels"``: the model may be any
    callable returning scores or labels, and the cascade is label-only (RayS for Linf, HSJA for L2, ``queries``
    calls per point and budget); ``"scores"``: Square only. The sanity checks and remedies need gradients, so they
    run only under ``"gradients"``.

    Example:
        >>> import squiggles                                            # doctest: +SKIP
        >>> from squiggles.threat import Linf
        >>> res = squiggles.evaluate(model, test, Linf(0.3), "quick", n=1000)
        >>> print(res.table())
    """
    start = time.perf_counter()
    x, y = _tensors(data, n)
    # The state and the result live on the CPU; each chunk goes to the model's device as it is attacked.
    x, y = x.detach().cpu(), y.cpu()
    budgets = _budgets(threat, eps)
    check_access(access)
    stages = resolve_stages(attacks if not isinstance(attacks, list) else tuple(attacks), access, threat.name, queries)
    beyond_ball = threat.name in ("spatial", "patch")  # threats on images, not norm balls
    checks = checks and access == "gradients" and not beyond_ball  # the checks and remedies are the norm balls'
    if batch_size < 1:
        raise SquigglesError(f"batch_size must be >= 1, got {batch_size}")
    dev = torch.device(device) if device is not None else _device_of(model, x)
    x = check_inputs(x, threat)
    if beyond_ball:
        from squiggles.transforms import check_images

        check_images(x)
    reuse = _reuse_minimal(reuse_minimal, budgets, threat, access)
    config = {"attacks": [s.describe() for s in stages], "eps": budgets, "n": len(x), "batch_size": batch_size,
              "seed": seed, "reuse_minimal": reuse, "threat": threat.describe(),
              "remedies": bool(checks and remedies), "access": access}
    fingerprint = _fingerprint(config, x, y)
    rank, world = rank_world()
    chunks = list(range(0, len(x), batch_size))
    st = state_io.load_or_new(state_path, rank, fingerprint, len(x), len(budgets), len(stages), len(chunks),
                              x.shape[1:], x.dtype, keep_adv)
    mine = [c for c in range(len(chunks)) if c % world == rank and not st.done[c]]
    done = int(st.done.sum())
    if progress and done and rank == 0:
        tqdm.write(f"resuming from {state_path}: {done} of {len(chunks)} chunks already done", file=sys.stderr)
    # Every pass of the evaluation, the final verification included, runs in the one (faster) weight layout.
    with fast_layout(model, x):
        bar = tqdm(mine, desc="evaluate", unit="chunk", disable=not progress)
        for c in bar:
            lo, hi = chunks[c], min(chunks[c] + batch_size, len(x))
            _run_chunk(model, x[lo:hi].to(dev), y[lo:hi].to(dev), threat, stages, budgets, reuse, seed, c, st, lo,
                       hi)
            st.done[c] = True
            state_io.save(state_path, rank, st, fingerprint)
            if progress:
                robust = st.robust[-1][st.chunk_mask(chunks, batch_size)].float().mean().item()
                bar.set_postfix(robust=f"{robust:.4f}")
        bar.close()
        st = state_io.gather(st, world, chunks, batch_size)
        result = _finish(model, x, y, threat, stages, budgets, st, dev, config, seed)
        if checks:
            from squiggles.evaluation.checks import run_checks

            result.flags = run_checks(model, x, y, threat, result, dev, seed)
    if checks and remedies:
        _remedy(model, x, y, threat, budgets, stages, result, dev, seed, batch_size, keep_adv, progress)
    result.wall_time_s = time.perf_counter() - start
    return result


def _remedy(
    model: Model, x: Tensor, y: Tensor, threat: ThreatModel, budgets: list[float], stages: tuple[Stage, ...],
    result: EvalResult, dev: torch.device, seed: int, batch_size: int, keep_adv: bool, progress: bool,
) -> None:
    from squiggles.evaluation.remedied import apply_remedies, plan_remedies

    plans = plan_remedies(model, result.flags, stages, x[: min(len(x), 16)].to(dev), threat.name)

    def run(remedied: Model, xs: Tensor, ys: Tensor, remedy_stages: tuple[Stage, ...]) -> EvalResult:
        return evaluate(remedied, (xs, ys), threat, remedy_stages, eps=budgets, batch_size=batch_size,
                        seed=seed + 1, reuse_minimal=False, checks=False, keep_adv=keep_adv, progress=progress,
                        device=dev, remedies=False)

    apply_remedies(result, x, y, plans, run)


def _run_chunk(
    model: Model, x: Tensor, y: Tensor, threat: ThreatModel, stages: tuple[Stage, ...], budgets: list[float],
    reuse: bool, seed: int, chunk: int, st: state_io.State, lo: int, hi: int,
) -> None:
    with attack_mode(model):
        with torch.no_grad():
            correct = as_labels(model(x), len(x)) == y
    st.clean_correct[lo:hi] = correct.cpu()
    x_min, min_norm = _minimal_pass(model, x, y, threat, seed, chunk, st.prepass) if reuse else (None, None)
    if min_norm is not None:
        st.min_norms[lo:hi] = min_norm.cpu()
    robust, x_adv = correct.clone(), x.clone()
    for k, eps in enumerate(budgets):
        broken_by = torch.where(robust, ROBUST, CLEAN_ERROR)
        broken_by[correct & ~robust] = REUSED
        if min_norm is not None:
            settled = robust & (min_norm <= eps)
            robust[settled], x_adv[settled], broken_by[settled] = False, x_min[settled], REUSED
        stats = [StageStats() for _ in stages]
        queries = torch.zeros(len(x), dtype=torch.long, device=x.device)
        run_cascade(model, x, y, threat.with_eps(eps), stages, robust, x_adv, broken_by,
                    stage_seed(seed, chunk, k), stats, queries)
        st.queries[k, lo:hi] = queries.cpu()
        st.robust[k, lo:hi] = robust.cpu()
        st.broken_by[k, lo:hi] = broken_by.cpu()
        if st.x_adv is not None:
            st.x_adv[k, lo:hi] = x_adv.cpu()
        for si, s in enumerate(stats):
            st.add_stats(k, si, s)


def _minimal_pass(model: Model, x: Tensor, y: Tensor, threat: ThreatModel, seed: int, chunk: int,
                  stats: StageStats) -> tuple[Tensor, Tensor]:
    """Per-point minimal adversarial norms by FMN (inf where none was found) and the inputs that reach them."""
    from squiggles.attacks.registry import get_attack

    res = get_attack("fmn")(model, x, y, threat.with_eps(math.inf), seed=stage_seed(seed, chunk, 999))
    stats.add(res.forwards, res.backwards, res.wall_time_s)
    norms = torch.where(res.success & res.clean_correct, res.norms, torch.full_like(res.norms, math.inf))
    return res.x_adv, norms


def _finish(
    model: Model, x: Tensor, y: Tensor, threat: ThreatModel, stages: tuple[Stage, ...], budgets: list[float],
    st: state_io.State, dev: torch.device, config: dict[str, Any], seed: int,
) -> EvalResult:
    """Re-verify every returned input with a final forward pass; a point is robust only if both agree."""
    disagreements = []
    robust = st.robust.clone()
    for k in range(len(budgets)):
        inputs = st.x_adv[k] if st.x_adv is not None else x
        pred = predicted_labels(model, inputs.to(dev)).cpu()
        verified = pred == y
        if st.x_adv is None:  # without the inputs only the clean points can be re-checked
            verified = torch.where(st.broken_by[k] == ROBUST, verified, st.robust[k])
        disagreements.append(int((verified != st.robust[k]).sum()))
        robust[k] &= verified
    stats = [[s.__dict__.copy() for s in per_eps] for per_eps in st.stats]
    return EvalResult(
        eps=budgets, threat=threat.describe(), stages=[s.describe() for s in stages], labels=y.cpu(),
        clean_correct=st.clean_correct, robust=robust, broken_by=st.broken_by, x_adv=st.x_adv,
        min_norms=st.min_norms if config["reuse_minimal"] else None, stage_stats=stats,
        prepass_stats=st.prepass.__dict__.copy() if config["reuse_minimal"] else None,
        disagreements=disagreements, config=config, seed=seed, provenance={"versions": versions()},
        queries=st.queries,
    )


def _tensors(data: Any, n: int | None) -> tuple[Tensor, Tensor]:
    if hasattr(data, "x") and hasattr(data, "y"):
        x, y = data.x, data.y
    elif isinstance(data, tuple | list) and len(data) == 2:
        x, y = data
    else:
        raise SquigglesError("data must be a squiggles Dataset or a tuple (x, y) of tensors")
    if not isinstance(y, Tensor) or y.shape != (len(x),):
        raise SquigglesError(f"labels must be a tensor of shape ({len(x)},)")
    if n is not None:
        if n < 1:
            raise SquigglesError(f"n must be >= 1, got {n}")
        x, y = x[:n], y[:n]
    if len(x) == 0:
        raise SquigglesError("no points to evaluate")
    return x, y.long()


def _budgets(threat: ThreatModel, eps: float | Sequence[float] | None) -> list[float]:
    if eps is None:
        if isinstance(threat.eps, Tensor):
            raise SquigglesError("evaluate takes one budget or a list of budgets, not per-example eps")
        values = [float(threat.eps)]
    else:
        values = [float(e) for e in (eps if isinstance(eps, Sequence) else [eps])]
    if not values or any(not e >= 0 for e in values):
        raise SquigglesError(f"eps must be a non-empty list of values >= 0, got {values}")
    return sorted(set(values))


def _reuse_minimal(flag: bool | None, budgets: list[float], threat: ThreatModel, access: str) -> bool:
    from squiggles.attacks.registry import ATTACKS

    if access != "gradients":
        if flag:
            raise SquigglesError(f"reuse_minimal needs FMN's gradients, which --access {access} does not give")
        return False
    spec = ATTACKS.get("fmn")
    supported = spec is not None and threat.name in spec.norms
    if flag and not supported:
        raise SquigglesError(f"reuse_minimal needs FMN, which does not support the {threat.name} norm")
    return supported and (len(budgets) > 1 if flag is None else flag)


def _fingerprint(config: dict[str, Any], x: Tensor, y: Tensor) -> str:
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    h.update(x[: min(len(x), 64)].detach().cpu().contiguous().numpy().tobytes())
    h.update(y.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _device_of(model: Model, x: Tensor) -> torch.device:
    params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
    return params[0].device if params else x.device


