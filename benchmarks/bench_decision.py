"""Decision-based (label-only) attacks: squiggles against Foolbox 3.3.4 and ART 1.20.1 on the same points.

Three parts, per model (default: the zoo's ``mnist-standard`` and ``mnist-linf-0.3``), on the first ``--n``
MNIST test images the model classifies correctly:

* ``hsja``: median L2 against model calls per example for our `hsja`, Foolbox's ``HopSkipJumpAttack`` and ART's
  ``HopSkipJump``, all from the same starting points (uniform noise the model misclassifies, drawn once), beside
  FMN's white-box minimal L2 on the same points. Foolbox and ART take a number of iterations, not of calls, so
  each runs once per budget with the most iterations whose calls fit in it; their calls are counted by a
  wrapper around the model (calls / points, as both query every point alike) and ours is read at exactly those
  counts from its trace (one run to the largest budget). ART's ``HopSkipJump`` hands the model float64 arrays,
  so its PyTorch model is wrapped to cast them to float32 first (ART 1.20.1 does not).
* ``boundary``: the same for our `boundary` and Foolbox's ``BoundaryAttack`` at the smaller budgets.
* ``rays``: Linf robust accuracy of RayS with ``--rays-queries`` calls per point, label-only, against the
  white-box ``standard`` cascade on the same ``--rays-n`` points.

Speed: each run's wall time per 1,000 calls per example (all points together), on the same points and work.
Prints one JSON object to stdout (progress on stderr)::

    python benchmarks/bench_decision.py --n 20 --rays-n 50 > benchmarks/results/decision.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import numpy as np
import torch
from _common import library_versions, log, machine_info, seed_global_rngs
from torch import Tensor, nn

from squiggles.attacks.boundary import boundary
from squiggles.attacks.hsja import hsja
from squiggles.attacks.minimal import fmn
from squiggles.data import load_dataset
from squiggles.evaluation import evaluate
from squiggles.threat import L2, Linf
from squiggles.zoo import load_zoo_model

RAYS_EPS = {"mnist-standard": 0.1, "mnist-linf-0.3": 0.3}


class Counted(nn.Module):
    """The model with every input row counted, and float64 input cast to float32 (ART sends float64)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rows = 0

    def forward(self, x: Tensor) -> Tensor:
        self.rows += len(x)
        return self.model(x.float())


def points(model: nn.Module, n: int) -> tuple[Tensor, Tensor]:
    data = load_dataset("mnist", "test", progress=False)
    x, y = data.x[: 4 * n], data.y[: 4 * n]
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return x[ok][:n].contiguous(), y[ok][:n].contiguous()


def noise_starts(model: nn.Module, x: Tensor, y: Tensor, seed: int = 0) -> Tensor:
    """Uniform noise the model misclassifies, one per point (not counted against anyone's budget)."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.rand(x.shape, generator=g)
    for _ in range(100):
        with torch.no_grad():
            bad = model(starts).argmax(1) == y
        if not bad.any():
            return starts
        starts[bad] = torch.rand(starts[bad].shape, generator=g)
    raise SystemExit("could not draw misclassified noise for every point")


def median(norms: Tensor) -> float:
    return float(norms.sort().values[(len(norms) - 1) // 2])


def hsja_iterations(budget: int, per_iteration_extra: int = 18) -> int:
    """The most HSJA iterations (100 sqrt(t+1) probes each, plus a bisection and a step search) within a budget
    (a first guess: each run then drops iterations until its counted calls fit)."""
    used, t = per_iteration_extra, 0
    while True:
        cost = int(100 * math.sqrt(t + 1)) + per_iteration_extra
        if used + cost > budget:
            return max(t, 1)
        used, t = used + cost, t + 1


def run_foolbox_hsja(model: nn.Module, x: Tensor, y: Tensor, starts: Tensor, budget: int) -> dict[str, Any]:
    import foolbox as fb

    counted = Counted(model).eval()
    fmodel = fb.PyTorchModel(counted, bounds=(0, 1), device="cpu")
    steps = hsja_iterations(budget)
    while True:  # fewer iterations until its calls fit the budget
        counted.rows = 0
        seed_global_rngs(0)
        start = time.perf_counter()
        adv = fb.attacks.HopSkipJumpAttack(steps=steps).run(fmodel, x, fb.criteria.Misclassification(y),
                                                             starting_points=starts)
        seconds = time.perf_counter() - start
        calls = counted.rows / len(x)
        if calls <= budget * 1.02 or steps == 1:
            break
        steps -= 1
    return _row(x, adv, calls, seconds, {"steps": steps})


def run_art_hsja(model: nn.Module, x: Tensor, y: Tensor, starts: Tensor, budget: int) -> dict[str, Any]:
    from art.attacks.evasion import HopSkipJump
    from art.estimators.classification import PyTorchClassifier

    counted = Counted(model).eval()
    clf = PyTorchClassifier(model=counted, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                            nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")
    iters = hsja_iterations(budget)
    while True:
        counted.rows = 0
        seed_global_rngs(0)
        attack = HopSkipJump(clf, norm=2, max_iter=iters, max_eval=10_000, init_eval=100, init_size=100,
                             verbose=False, batch_size=256)
        start = time.perf_counter()
        adv = attack.generate(x.numpy(), y=np.eye(10)[y.numpy()], x_adv_init=starts.numpy())
        seconds = time.perf_counter() - start
        calls = counted.rows / len(x)
        if calls <= budget * 1.02 or iters == 1:
            break
        iters -= 1
    return _row(x, torch.from_numpy(adv).float(), calls, seconds, {"max_iter": iters})


def run_foolbox_boundary(model: nn.Module, x: Tensor, y: Tensor, starts: Tensor, budget: int) -> dict[str, Any]:
    import foolbox as fb

    counted = Counted(model).eval()
    fmodel = fb.PyTorchModel(counted, bounds=(0, 1), device="cpu")
    steps = int(budget / 1.1)  # one call per step, and one more every 10th step (the statistics)
    while True:
        counted.rows = 0
        seed_global_rngs(0)
        start = time.perf_counter()
        adv = fb.attacks.BoundaryAttack(steps=steps).run(fmodel, x, fb.criteria.Misclassification(y),
                                                         starting_points=starts)
        seconds = time.perf_counter() - start
        calls = counted.rows / len(x)
        if calls <= budget * 1.02:
            break
        steps = int(steps * budget / calls)
    return _row(x, adv, calls, seconds, {"steps": steps})


def _row(x: Tensor, adv: Tensor, calls: float, seconds: float, settings: dict[str, Any]) -> dict[str, Any]:
    norms = (adv - x).flatten(1).norm(dim=1)
    return {"calls_per_point": round(calls, 1), "median_l2": median(norms), "seconds": round(seconds, 2),
            "seconds_per_1k_calls": round(seconds / (calls / 1000), 3), "settings": settings}


def ours(attack: Any, model: nn.Module, x: Tensor, y: Tensor, starts: Tensor, at: list[int]) -> dict[str, Any]:
    start = time.perf_counter()
    res = attack(model, x, y, L2(math.inf), queries=max(at), starts=starts, curve_at=at)
    seconds = time.perf_counter() - start
    curve = res.norm_curve()
    calls = float(res.queries.float().mean())
    return {"curve": dict(zip(curve["queries"], curve["median_norm"], strict=True)), "seconds": round(seconds, 2),
            "calls_per_point": round(calls, 1), "seconds_per_1k_calls": round(seconds / (calls / 1000), 3),
            "config": res.config}


def hsja_part(name: str, model: nn.Module, x: Tensor, y: Tensor, budgets: list[int]) -> dict[str, Any]:
    starts = noise_starts(model, x, y)
    peers: dict[str, list[dict[str, Any]]] = {"foolbox": [], "art": []}
    for budget in budgets:
        log(f"{name}: foolbox HSJA at {budget} calls")
        peers["foolbox"].append({"budget": budget, **run_foolbox_hsja(model, x, y, starts, budget)})
        log(f"{name}: ART HopSkipJump at {budget} calls")
        peers["art"].append({"budget": budget, **run_art_hsja(model, x, y, starts, budget)})
    at = sorted({*budgets, *(int(r["calls_per_point"]) for rs in peers.values() for r in rs)})
    log(f"{name}: squiggles hsja to {max(at)} calls")
    mine = ours(hsja, model, x, y, starts, at)
    ref = {}
    for steps in (100, 1000):
        res = fmn(model, x, y, L2(math.inf), steps=steps)
        ref[f"fmn_{steps}_steps"] = median(torch.where(res.success, res.norms, torch.full_like(res.norms, math.inf)))
    rows = []
    for lib, runs in peers.items():
        for r in runs:
            q = int(r["calls_per_point"])
            rows.append({"budget": r["budget"], "library": lib, "calls_per_point": r["calls_per_point"],
                         "their_median_l2": r["median_l2"], "our_median_l2": mine["curve"][q],
                         "ratio": mine["curve"][q] / r["median_l2"], "their_s_per_1k": r["seconds_per_1k_calls"]})
    return {"peers": peers, "squiggles": mine, "fmn": ref, "comparison": rows,
            "ours_over_fmn_at_largest": mine["curve"][max(budgets)] / ref["fmn_1000_steps"]}


def boundary_part(name: str, model: nn.Module, x: Tensor, y: Tensor, budgets: list[int]) -> dict[str, Any]:
    starts = noise_starts(model, x, y)
    peers = []
    for budget in budgets:
        log(f"{name}: foolbox BoundaryAttack at {budget} calls")
        peers.append({"budget": budget, **run_foolbox_boundary(model, x, y, starts, budget)})
    at = sorted({*budgets, *(int(r["calls_per_point"]) for r in peers)})
    log(f"{name}: squiggles boundary to {max(at)} calls")
    mine = ours(boundary, model, x, y, starts, at)
    rows = [{"budget": r["budget"], "calls_per_point": r["calls_per_point"], "their_median_l2": r["median_l2"],
             "our_median_l2": mine["curve"][int(r["calls_per_point"])],
             "ratio": mine["curve"][int(r["calls_per_point"])] / r["median_l2"]} for r in peers]
    return {"foolbox": peers, "squiggles": mine, "comparison": rows}


def rays_part(name: str, model: nn.Module, x: Tensor, y: Tensor, queries: int) -> dict[str, Any]:
    eps = RAYS_EPS.get(name, 0.3)
    log(f"{name}: RayS ({queries} calls) and standard at Linf {eps} on {len(x)} points")
    t = time.perf_counter()
    label = evaluate(model, (x, y), Linf(eps), access="labels", queries=queries, progress=False)
    t_label = time.perf_counter() - t
    t = time.perf_counter()
    white = evaluate(model, (x, y), Linf(eps), "standard", progress=False)
    t_white = time.perf_counter() - t
    return {"eps": eps, "n": len(x), "queries": queries, "rays_robust_accuracy": label.robust_accuracy,
            "standard_robust_accuracy": white.robust_accuracy,
            "gap_points": 100 * (label.robust_accuracy - white.robust_accuracy),
            "rays_seconds": round(t_label, 1), "standard_seconds": round(t_white, 1),
            "per_point_disagreements": int((label.robust[0] & ~white.robust[0]).sum())}


def _save_partial(path: str | None, out: dict[str, Any]) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(out, f, indent=2, default=str)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["mnist-standard", "mnist-linf-0.3"])
    p.add_argument("--n", type=int, default=200, help="points for the HSJA and Boundary comparisons")
    p.add_argument("--budgets", type=int, nargs="+", default=[1000, 5000, 20_000])
    p.add_argument("--boundary-budgets", type=int, nargs="+", default=[1000, 5000])
    p.add_argument("--rays-n", type=int, default=200)
    p.add_argument("--rays-queries", type=int, default=10_000)
    p.add_argument("--parts", nargs="+", default=["hsja", "boundary", "rays"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--partial", help="also write the results so far to this file after every part")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"benchmark": "decision", "machine": machine_info(args.threads),
                           "libraries": library_versions(), "args": vars(args), "models": {}}
    for name in args.models:
        model = load_zoo_model(name).eval()
        model.requires_grad_(False)
        res: dict[str, Any] = {}
        x, y = points(model, args.n)
        out["models"][name] = res
        if "hsja" in args.parts:
            res["hsja"] = hsja_part(name, model, x, y, args.budgets)
            _save_partial(args.partial, out)
        if "boundary" in args.parts:
            res["boundary"] = boundary_part(name, model, x, y, args.boundary_budgets)
            _save_partial(args.partial, out)
        if "rays" in args.parts:
            xr, yr = points(model, args.rays_n)
            res["rays"] = rays_part(name, model, xr, yr, args.rays_queries)
            _save_partial(args.partial, out)
        log(json.dumps(res, default=str)[:2000])
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
