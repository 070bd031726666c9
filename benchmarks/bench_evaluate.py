"""Evaluation benchmark: squiggles' `quick` and `standard` cascades against AutoAttack (pyautoattack) on the
same points: robust accuracy, wall time, and points where the two disagree. Prints one JSON object.

    .venv/bin/python benchmarks/bench_evaluate.py --model runs/madry --eps 0.1 --n 1000 > eval-bench.json

AutoAttack comes from the `bench` extra (see benchmarks/README.md). Every robust accuracy is re-measured here
with one forward pass on the returned inputs, after checking they lie inside the budget and the bounds.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any

import torch

import squiggles
from squiggles.threat import make_threat


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def verified(model: torch.nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, threat: Any) -> dict:
    inside = bool((threat.norm(x_adv - x) <= threat.eps + 1e-5).all()) and bool(
        (x_adv >= threat.bounds[0]).all() and (x_adv <= threat.bounds[1]).all()
    )
    with torch.no_grad():
        robust = torch.cat([model(x_adv[i : i + 500]).argmax(1) for i in range(0, len(x), 500)]) == y
    return {"robust": robust, "inside": inside}


def run_squiggles(model, x, y, threat, ensemble: str, batch_size: int) -> dict[str, Any]:
    start = time.perf_counter()
    res = squiggles.evaluate(model, (x, y), threat, ensemble, batch_size=batch_size, progress=False, checks=False)
    seconds = time.perf_counter() - start
    check = verified(model, x, res.x_adv[0], y, threat)
    return {
        "seconds": round(seconds, 2),
        "robust_accuracy": res.robust_accuracy,
        "verified_robust_accuracy": check["robust"].float().mean().item(),
        "inside": check["inside"],
        "breakdown": res.breakdown(0),
        "model_calls": res.model_calls(),
        "_robust": check["robust"],
    }


def run_autoattack(model, x, y, threat, batch_size: int, seed: int) -> dict[str, Any]:
    try:
        from pyautoattack import AutoAttack
    except ImportError as exc:
        return {"skipped": f"not installed: {exc}"}
    norm = {"linf": "Linf", "l2": "L2", "l1": "L1"}[threat.name]
    adversary = AutoAttack(model, norm=norm, eps=float(threat.eps), version="standard", seed=seed, device="cpu")
    start = time.perf_counter()
    out = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    seconds = time.perf_counter() - start
    x_adv = out[0] if isinstance(out, tuple) else out
    check = verified(model, x, x_adv, y, threat)
    return {
        "seconds": round(seconds, 2),
        "robust_accuracy": check["robust"].float().mean().item(),
        "inside": check["inside"],
        "_robust": check["robust"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a squiggles model folder")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--norm", default="linf", choices=("linf", "l2"))
    p.add_argument("--eps", type=float, required=True)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--which", nargs="+", default=["quick", "standard", "autoattack"], choices=("quick", "standard", "autoattack")
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = squiggles.load_model(args.model)
    for q in model.parameters():
        q.requires_grad_(False)
    test = squiggles.load_dataset(args.dataset, "test").subset(args.n)
    threat = make_threat(args.norm, args.eps, test.bounds)
    report: dict[str, Any] = {
        "benchmark": "evaluate",
        "model": args.model,
        "dataset": args.dataset,
        "threat": threat.describe(),
        "n": args.n,
        "threads": args.threads,
        "torch": torch.__version__,
    }
    robust = {}
    for name in args.which:
        log(f"{name} ...")
        row = (
            run_autoattack(model, test.x, test.y, threat, args.batch_size, 0)
            if name == "autoattack"
            else run_squiggles(model, test.x, test.y, threat, name, args.batch_size)
        )
        if "_robust" in row:
            robust[name] = row.pop("_robust")
        report[name] = row
        log(f"{name}: {row.get('robust_accuracy')} in {row.get('seconds')} s")
        log(json.dumps({name: row}, default=str))  # each row as soon as it exists: long runs lose nothing
    if "autoattack" in robust:
        for name in ("quick", "standard"):
            if name in robust:
                report[f"{name}_vs_autoattack"] = {
                    "broken_only_by_autoattack": int((robust[name] & ~robust["autoattack"]).sum()),
                    "broken_only_by_squiggles": int((~robust[name] & robust["autoattack"]).sum()),
                    "time_ratio": round(report[name]["seconds"] / report["autoattack"]["seconds"], 3),
                }
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
