"""Attack benchmarks: squiggles' PGD against the cheapest possible gradient loop and against torchattacks,
foolbox and ART; and APGD-CE against PGD with restarts. Prints one JSON object to stdout, progress to stderr.

    python benchmarks/bench_attacks.py --model /path/to/model-folder > attacks.json
    python benchmarks/bench_attacks.py --n 100 --batch-size 50 --which floor apgd

Sections (``--which``):
  floor      40 x (forward + backward to the input) of the bare model vs squiggles PGD-40 on the same
             batches; ``ratio`` = floor time / our time (the share of the hardware's speed we keep).
  libraries  PGD-40 in squiggles, torchattacks, foolbox and ART: throughput at Linf 0.3 (step 0.01), robust
             accuracy at Linf 0.1 and L2 1.0 (step 2.5 eps / 40). Lower robust accuracy = stronger attack.
  apgd       APGD-CE (100 steps) vs PGD-40 with 10 restarts at Linf 0.1: robust accuracy, time, model calls.

See benchmarks/README.md for installing the libraries (the ``bench`` extra) and reading the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from _common import (
    batches,
    ensure_model,
    eval_data,
    frozen,
    interleaved_batches,
    library_versions,
    log,
    machine_info,
    rate,
    robust_accuracy,
    timed_batches,
)
from torch import Tensor, nn

from squiggles.attacks import pgd
from squiggles.results import AttackResult
from squiggles.runtime import fast_layout
from squiggles.threat import ThreatModel, make_threat

STEPS = 40
FLOOR_EPS, FLOOR_STEP = 0.3, 0.01
ROBUST = [("linf", 0.1), ("l2", 1.0)]  # PGD-40 with step 2.5 * eps / 40, as in Madry et al.
APGD_EPS, APGD_STEPS, PGD_RESTARTS = 0.1, 100, 10
SECTIONS = ("floor", "libraries", "apgd")

Runner = Callable[[Tensor, Tensor], Tensor | AttackResult]


@dataclass
class Setup:
    model: nn.Module
    bounds: tuple[float, float]
    num_classes: int
    batch_size: int
    library_params: str  # "frozen" or "trainable": how the libraries get the model's parameters


def rel_step(eps: float) -> float:
    return 2.5 * eps / STEPS


# --- the methods: each builds fn(x, y) -> x_adv (or our AttackResult) ---------------------------------
def ours(s: Setup, threat: ThreatModel, step: float, **options: Any) -> Runner:
    return lambda x, y: pgd(s.model, x, y, threat, steps=STEPS, step_size=step, seed=0, **options)


def floor_loop(s: Setup, channels_last: bool = False) -> Runner:
    """The cheapest loop that gives PGD its gradients: no step, no projection, no bookkeeping.

    ``channels_last``: the same loop with the weights in the layout squiggles' attacks use on the CPU
    (`fast_layout`), so the share of the hardware's speed is also measured against the faster floor.
    """

    def run(x: Tensor, y: Tensor) -> Tensor:
        with fast_layout(s.model, x) if channels_last else contextlib.nullcontext():
            for _ in range(STEPS):
                xi = x.detach().requires_grad_(True)
                loss = F.cross_entropy(s.model(xi), y, reduction="sum")
                torch.autograd.grad(loss, xi)
        return x

    return run


def torchattacks_pgd(s: Setup, threat: ThreatModel, step: float) -> Runner:
    import torchattacks

    if s.bounds != (0.0, 1.0):
        raise NotImplementedError("torchattacks assumes inputs in [0, 1]")
    cls = torchattacks.PGD if threat.name == "linf" else torchattacks.PGDL2
    attack = cls(s.model, eps=float(threat.eps), alpha=step, steps=STEPS, random_start=True)
    return lambda x, y: attack(x, y)


def foolbox_pgd(s: Setup, threat: ThreatModel, step: float) -> Runner:
    import foolbox as fb

    fmodel = fb.PyTorchModel(s.model, bounds=s.bounds, device="cpu")
    cls = fb.attacks.LinfPGD if threat.name == "linf" else fb.attacks.L2PGD
    attack = cls(abs_stepsize=step, steps=STEPS, random_start=True)

    def run(x: Tensor, y: Tensor) -> Tensor:
        _, clipped, _ = attack(fmodel, x, y, epsilons=float(threat.eps))
        return clipped

    return run


def art_pgd(s: Setup, threat: ThreatModel, step: float) -> Runner:
    import numpy as np
    from art.attacks.evasion import ProjectedGradientDescentPyTorch
    from art.estimators.classification import PyTorchClassifier

    classifier: Any = None
    attack: Any = None

    def run(x: Tensor, y: Tensor) -> Tensor:
        nonlocal classifier, attack
        if classifier is None:  # ART wants the input shape, known at the first call
            classifier = PyTorchClassifier(
                model=s.model,
                loss=nn.CrossEntropyLoss(),
                input_shape=tuple(x.shape[1:]),
                nb_classes=s.num_classes,
                clip_values=s.bounds,
                device_type="cpu",
            )
            attack = ProjectedGradientDescentPyTorch(
                classifier,
                norm=np.inf if threat.name == "linf" else 2,
                eps=float(threat.eps),
                eps_step=step,
                max_iter=STEPS,
                num_random_init=1,
                batch_size=s.batch_size,
                verbose=False,
            )
        return torch.from_numpy(attack.generate(x.numpy(), y.numpy()))

    return run


LIBRARIES: dict[str, Callable[[Setup, ThreatModel, float], Runner]] = {
    "squiggles": ours,
    "torchattacks": torchattacks_pgd,
    "foolbox": foolbox_pgd,
    "art": art_pgd,
}


# --- measuring one method ---------------------------------------------------------------------------
def measure(name: str, fn: Runner, s: Setup, x: Tensor, y: Tensor, threat: ThreatModel | None) -> dict[str, Any]:
    """Time ``fn`` over the batches (after a warm-up), then check and score its adversarial examples."""
    log(f"  {name} ...")
    outs, seconds = timed_batches(fn, x, y, s.batch_size)
    return score(name, outs, seconds, x, y, s, threat)


def score(
    name: str, outs: list[Any], seconds: float, x: Tensor, y: Tensor, s: Setup, threat: ThreatModel | None
) -> dict[str, Any]:
    """Seconds and throughput; with a threat model, also robust accuracy (re-measured here), budget, bounds, calls."""
    row: dict[str, Any] = {"seconds": round(seconds, 3), "images_per_s": rate(len(x), seconds)}
    if threat is None:
        return row
    results = [o for o in outs if isinstance(o, AttackResult)]
    x_adv = torch.cat([o.x_adv if isinstance(o, AttackResult) else o.detach().float().cpu() for o in outs])
    norms = threat.norm(x_adv - x)
    lo, hi = threat.bounds
    row["robust_accuracy"] = robust_accuracy(s.model, x_adv, y)
    row["max_norm"] = norms.max().item()
    row["within_budget"] = bool((norms <= float(threat.eps) * (1 + 1e-5) + 1e-6).all())
    row["within_bounds"] = bool(((x_adv >= lo - 1e-6) & (x_adv <= hi + 1e-6)).all())
    if results:
        joined = AttackResult.cat(results)
        row["forwards"], row["backwards"] = joined.forwards, joined.backwards
        row["forwards_per_image"] = joined.forwards / len(x)
        row["backwards_per_image"] = joined.backwards / len(x)
    log(f"  {name}: {row['seconds']} s, robust accuracy {row['robust_accuracy']:.4f}")
    return row


def measure_interleaved(
    runners: dict[str, Runner], s: Setup, x: Tensor, y: Tensor, threat: ThreatModel, repeats: int
) -> dict[str, dict[str, Any]]:
    """Time several methods batch by batch in turn, best of ``repeats`` per batch (see `interleaved_batches`)."""
    log(f"  {', '.join(runners)} interleaved, {repeats} repeat(s) per batch ...")
    timed = interleaved_batches(runners, x, y, s.batch_size, repeats)
    return {
        name: score(name, outs, seconds, x, y, s, threat if not name.startswith("floor") else None)
        for name, (outs, seconds) in timed.items()
    }


# --- sections ---------------------------------------------------------------------------------------
def bench_floor(s: Setup, x: Tensor, y: Tensor, repeats: int) -> dict[str, Any]:
    """Floor and PGD interleaved batch by batch, best of ``repeats`` per batch: the least disturbed measurement."""
    threat = make_threat("linf", FLOOR_EPS, s.bounds)
    log("floor: the bare gradient loop against squiggles PGD-40")
    with frozen(s.model):
        rows = measure_interleaved(
            {
                "floor": floor_loop(s),
                "floor_channels_last": floor_loop(s, channels_last=True),
                "squiggles": ours(s, threat, FLOOR_STEP),
            },
            s, x, y, threat, repeats,
        )
    floor_s, fast_s, ours_s = (rows[k]["seconds"] for k in ("floor", "floor_channels_last", "squiggles"))
    ratio = floor_s / ours_s if ours_s > 0 else None
    ratio_fast = fast_s / ours_s if ours_s > 0 else None
    return {
        "setting": {
            "norm": "linf",
            "eps": FLOOR_EPS,
            "step_size": FLOOR_STEP,
            "steps": STEPS,
            "random_start": True,
            "repeats": repeats,
        },
        "floor": rows["floor"],
        "squiggles": rows["squiggles"],
        "floor_channels_last": rows["floor_channels_last"],
        "ratio_ours_over_floor": round(ratio, 4) if ratio is not None else None,
        "ratio_ours_over_floor_channels_last": round(ratio_fast, 4) if ratio_fast is not None else None,
        "target": 0.95,
        "meets_target": ratio is not None and ratio >= 0.95,
    }


def library_runners(
    s: Setup, threat: ThreatModel, step: float, versions: dict[str, str], x: Tensor, y: Tensor
) -> tuple[dict[str, Runner], dict[str, Any]]:
    """The runnable methods, each tried once on a few points; the others as rows saying why they are missing."""
    runners: dict[str, Runner] = {}
    missing: dict[str, Any] = {}
    for name, build in LIBRARIES.items():
        if name != "squiggles" and versions.get(name, "").startswith("not installed"):
            missing[name] = {"skipped": versions[name]}
            continue
        try:
            runner = build(s, threat, step)
            runner(x[:4], y[:4])
            runners[name] = runner
        except Exception as exc:  # a broken library is a result to report, not a reason to stop
            log(f"  {name} failed: {type(exc).__name__}: {exc}")
            missing[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return runners, missing


def bench_libraries(s: Setup, x: Tensor, y: Tensor, versions: dict[str, str], repeats: int) -> dict[str, Any]:
    """Throughput interleaved batch by batch (best of ``repeats`` per batch); strength from one run each."""
    settings = [("throughput_linf_0.3", "linf", FLOOR_EPS, FLOOR_STEP, repeats)]
    settings += [(f"robust_{norm}_{eps}", norm, eps, rel_step(eps), 1) for norm, eps in ROBUST]
    out: dict[str, Any] = {
        "versions": {k: v for k, v in versions.items() if k != "autoattack"},
        "library_params": s.library_params,
    }
    checks: dict[str, Any] = {}
    for key, norm, eps, step, reps in settings:
        threat = make_threat(norm, eps, s.bounds)
        log(f"libraries: {key} (PGD-{STEPS}, step {step:g}, random start)")
        rows: dict[str, Any] = {"setting": {"norm": norm, "eps": eps, "step_size": step, "steps": STEPS}}
        # squiggles freezes the parameters itself; the libraries get them as --library-params says
        with frozen(s.model, s.library_params == "frozen"):
            runners, missing = library_runners(s, threat, step, versions, x, y)
            rows.update(measure_interleaved(runners, s, x, y, threat, reps))
        rows.update(missing)
        out[key] = rows
        ours_acc = rows["squiggles"].get("robust_accuracy")
        checks[key] = {
            name: {
                "ours_at_least_as_strong": ours_acc <= row["robust_accuracy"],
                "difference": round(row["robust_accuracy"] - ours_acc, 4),
                "difference_examples": round((row["robust_accuracy"] - ours_acc) * len(x)),
            }
            for name, row in rows.items()
            if name not in ("setting", "squiggles") and "robust_accuracy" in row and ours_acc is not None
        }
    out["checks"] = checks
    return out


def bench_apgd(s: Setup, x: Tensor, y: Tensor, versions: dict[str, str]) -> dict[str, Any]:
    try:
        from squiggles.attacks.apgd import apgd
    except ImportError as exc:
        log(f"apgd: skipped ({exc})")
        return {"skipped": f"squiggles.attacks.apgd is not importable yet: {exc}"}
    threat = make_threat("linf", APGD_EPS, s.bounds)
    # Both run every example for their whole budget (no early stop), so the cost comparison is fair.
    wanted = {"steps": APGD_STEPS, "loss": "ce", "early_stop": False}
    params = inspect.signature(apgd).parameters
    options = {k: v for k, v in wanted.items() if k in params}
    out: dict[str, Any] = {
        "setting": {
            "norm": "linf",
            "eps": APGD_EPS,
            "apgd_options": options,
            "pgd_steps": STEPS,
            "pgd_restarts": PGD_RESTARTS,
            "pgd_early_stop": False,
            "pgd_step_size": rel_step(APGD_EPS),
        }
    }
    with frozen(s.model):
        log(f"apgd: APGD-CE {APGD_STEPS} steps vs PGD-{STEPS} x {PGD_RESTARTS} restarts at Linf {APGD_EPS}")
        try:
            out["apgd_ce"] = measure(
                "squiggles apgd-ce", lambda a, b: apgd(s.model, a, b, threat, seed=0, **options), s, x, y, threat
            )
        except TypeError as exc:
            return {**out, "error": f"apgd's signature changed? {exc}"}
        out["pgd_restarts"] = measure(
            f"squiggles pgd x{PGD_RESTARTS}",
            ours(s, threat, rel_step(APGD_EPS), restarts=PGD_RESTARTS, early_stop=False),
            s,
            x,
            y,
            threat,
        )
        if not versions.get("autoattack", "").startswith("not installed"):
            try:
                out["reference_autoattack_apgd_ce"] = measure(
                    "pyautoattack apgd-ce", _autoattack_apgd(s), s, x, y, threat
                )
            except Exception as exc:  # reference only: report and go on
                out["reference_autoattack_apgd_ce"] = {"error": f"{type(exc).__name__}: {exc}"}
    a, p = out["apgd_ce"], out["pgd_restarts"]
    out["checks"] = {
        "apgd_at_least_as_strong": a["robust_accuracy"] <= p["robust_accuracy"],
        "apgd_faster": a["seconds"] < p["seconds"],
        "apgd_fewer_backwards": a.get("backwards", 0) < p.get("backwards", 0),
    }
    return out


def _autoattack_apgd(s: Setup) -> Runner:
    """The reference implementation (Croce & Hein 2020), one restart of 100 steps, as a yardstick."""
    from pyautoattack.autopgd_base import APGDAttack

    attack = APGDAttack(
        s.model,
        n_iter=APGD_STEPS,
        n_restarts=1,
        norm="Linf",
        eps=APGD_EPS,
        loss="ce",
        seed=0,
        device="cpu",
        verbose=False,
    )
    return lambda x, y: attack.perturb(x, y)


# --- main -------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model",
        help="a squiggles model folder (default: a madry-cnn trained 2 epochs on MNIST, "
        "cached under ~/.cache/squiggles/bench-models)",
    )
    p.add_argument("--dataset", help="test set to attack (default: the model card's dataset)")
    p.add_argument("--n", type=int, default=1000, help="test points (default 1000)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--which", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    p.add_argument("--repeats", type=int, default=1, help="floor, throughput: timed repeats per batch, best kept")
    p.add_argument(
        "--library-params",
        choices=("frozen", "trainable"),
        default="frozen",
        help="give the libraries the model with frozen parameters (like squiggles does itself; "
        "default) or as trained (foolbox and ART then also compute weight gradients)",
    )
    args = p.parse_args(argv)
    if args.n < 1 or args.batch_size < 1 or args.threads < 1 or args.repeats < 1:
        p.error("--n, --batch-size, --threads and --repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    machine = machine_info(args.threads)
    model, model_info = ensure_model(args.model)
    dataset = args.dataset or model_info["dataset"]
    if dataset is None:
        raise SystemExit("the model card names no dataset; pass --dataset")
    x, y = eval_data(dataset, args.n)
    with torch.no_grad():
        clean = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in batches(x, y, 1000)) / len(y)
        num_classes = int(model(x[:1]).shape[1])
    s = Setup(model, tuple(model_info["bounds"]), num_classes, args.batch_size, args.library_params)
    versions = library_versions()
    log(
        f"model {model_info['dir']} on {dataset}: clean accuracy {clean:.4f} on {len(y)} points; "
        f"{args.threads} threads; libraries {versions}"
    )
    report: dict[str, Any] = {
        "benchmark": "attacks",
        "machine": machine,
        "settings": {
            "n": args.n,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "dataset": dataset,
            "which": args.which,
            "repeats": args.repeats,
            "library_params": args.library_params,
        },
        "model": {**model_info, "clean_accuracy": clean},
        "libraries_installed": versions,
    }
    if "floor" in args.which:
        report["floor"] = bench_floor(s, x, y, args.repeats)
    if "libraries" in args.which:
        report["libraries"] = bench_libraries(s, x, y, versions, args.repeats)
    if "apgd" in args.which:
        report["apgd"] = bench_apgd(s, x, y, versions)
    machine["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report["wall_time_s"] = round(time.perf_counter() - start, 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
