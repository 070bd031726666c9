"""``squiggles certify``: certified accuracy by randomized smoothing or bound propagation, beside the attack's figure.

Under ``torchrun --nproc_per_node=N -m squiggles certify ...`` the points are shared out across the processes
and the merged result equals the single-process one; rank 0 writes it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from squiggles.cli.common import (
    add_common,
    add_data_args,
    add_model_args,
    nonneg_float,
    positive_int,
    remove_state_files,
    resolve_data,
    resolve_model,
    say,
)
from squiggles.errors import SquigglesError

EXAMPLES = """examples:
  squiggles certify --model mnist-smooth-0.25 --method smoothing --sigma 0.25 --n 500 --out cert/smooth.json
      # Cohen et al.'s CERTIFY: N0 = 100, N = 100,000, alpha = 0.001; L2 radii
  squiggles certify --model mnist-certified-0.3 --method ibp --eps 0.1 0.3 --n 1000 --out cert/ibp.json
  squiggles certify --model runs/mine --method crown --norm l2 --eps 0.5 --out cert/crown.json
  torchrun --nproc_per_node=2 -m squiggles certify --model runs/smooth --sigma 0.5 --out cert/sharded.json
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from squiggles.certify.run import CERTIFY_METHODS

    p = sub.add_parser("certify", help="certified accuracy (randomized smoothing, IBP, CROWN) beside the attack's",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--method", default="smoothing", choices=CERTIFY_METHODS,
                   help="smoothing (L2 radii of the smoothed classifier), or bounds on the model itself: ibp, "
                   "crown-ibp, crown (tightest, slowest); default smoothing")
    p.add_argument("--sigma", type=float, default=0.25, help="smoothing: the noise level (default 0.25)")
    p.add_argument("--n0", type=int, default=100, help="smoothing: selection draws per point (default 100)")
    p.add_argument("--samples", type=int, default=100_000,
                   help="smoothing: estimation draws per point, Cohen et al.'s N (default 100000)")
    p.add_argument("--alpha", type=float, default=0.001, help="smoothing: failure probability (default 0.001)")
    p.add_argument("--norm", default="linf", choices=("linf", "l2"), help="bounds: the ball (default linf)")
    p.add_argument("--eps", type=nonneg_float, nargs="+", help="bounds: one budget or several (required)")
    p.add_argument("--attacks", default="quick",
                   help="bounds: the evaluate cascade for the empirical figure beside (default quick)")
    p.add_argument("--no-empirical", action="store_true", help="skip the attack's figure beside the certificate")
    p.add_argument("--predict", action="store_true",
                   help="smoothing: run Cohen et al.'s PREDICT instead of CERTIFY: the smoothed classifier's "
                   "prediction from --samples draws, abstaining where a binomial test at --alpha cannot tell the top "
                   "two classes apart (give a smaller --samples, e.g. 1000)")
    p.add_argument("--batch-size", type=positive_int, default=2000,
                   help="smoothing: noisy inputs per forward pass (default 2000)")
    p.add_argument("--chunk", type=positive_int,
                   help="points per saved chunk (the unit of resuming and of sharing across processes; default: "
                   "about ten seconds of work)")
    p.add_argument("--state", help="progress file (default: OUT with .state.safetensors); rerun to resume")
    p.add_argument("--out", required=True, help="results JSON file (a curve plot is written beside it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing results file")
    add_common(p)
    p.set_defaults(run=run)


def _config(args: argparse.Namespace):  # noqa: ANN202
    from squiggles.certify.run import CertifyConfig

    if args.method != "smoothing" and not args.eps:
        raise SquigglesError(f"--method {args.method} needs --eps (one budget or several, e.g. --eps 0.1 0.3)")
    if args.method == "smoothing" and args.eps:
        raise SquigglesError("--eps is for bound propagation; smoothing certifies L2 radii (give --sigma instead)")
    return CertifyConfig(method=args.method, sigma=args.sigma, n0=args.n0, n=args.samples, alpha=args.alpha,
                         norm=args.norm, eps=sorted(set(args.eps or [])), batch_size=args.batch_size, chunk=args.chunk,
                         seed=args.seed)


def run(args: argparse.Namespace) -> int:
    from squiggles._io import ensure_writable_dir

    out = Path(args.out)
    if out.suffix != ".json":
        raise SquigglesError(f"--out {args.out!r}: give a .json file name for the results")
    config = _config(args)
    config.validate((0.0, 1.0) if config.method == "smoothing" else (-float("inf"), float("inf")))
    ensure_writable_dir(out.parent)
    if out.exists() and not args.overwrite:
        raise SquigglesError(f"{out} already exists; use --overwrite or another --out")
    from squiggles.distributed import torchrun_group

    if args.predict:
        if config.method != "smoothing":
            raise SquigglesError("--predict is randomized smoothing's PREDICT; it takes --method smoothing")
        return _predict_and_write(args, config, out)
    with torchrun_group(args.device) as rank:
        return _certify_and_write(args, config, out, rank)


def _predict_and_write(args: argparse.Namespace, config, out: Path) -> int:  # noqa: ANN001
    """Cohen et al.'s PREDICT on every point: the smoothed accuracy, counting an abstention as an error."""
    import time

    import torch

    from squiggles._io import write_json
    from squiggles.certify.smoothing import ABSTAIN, predict
    from squiggles.runtime import resolve_device

    start = time.perf_counter()
    device = resolve_device(args.device)
    model, card = resolve_model(args)
    model.to(device).eval()
    data = resolve_data(args)
    x, y = data.x.to(device), data.y.to(device)
    chunks = range(0, len(x), 100)  # a seed per chunk of 100 points, as CERTIFY's chunks
    pred = torch.cat([predict(model, x[i: i + 100], config.sigma, n=config.n, alpha=config.alpha,
                              batch_size=config.batch_size, seed=args.seed * 1_000_003 + i) for i in chunks])
    abstained = int((pred == ABSTAIN).sum())
    accuracy = float((pred == y).double().mean())
    report = {"kind": "certification", "method": "predict", "model": args.model, "model_card": card,
              "dataset": args.dataset, "split": args.split, "n": len(y), "sigma": config.sigma, "samples": config.n,
              "alpha": config.alpha, "smoothed_accuracy": accuracy, "abstentions": abstained,
              "prediction": pred.tolist(), "label": y.tolist(), "model_calls": len(y) * config.n,
              "wall_time_s": round(time.perf_counter() - start, 2), "curve": []}
    write_json(out, report)
    print(f"PREDICT (sigma {config.sigma:g}, {config.n} draws, alpha {config.alpha:g}): smoothed accuracy "
          f"{100 * accuracy:.2f}% on {len(y)} points, {abstained} abstained")
    say(args, f"results in {out}")
    return 0


def _certify_and_write(args: argparse.Namespace, config, out: Path, rank: int | None) -> int:  # noqa: ANN001
    from squiggles._io import write_json
    from squiggles.certify.empirical import bounds_empirical, smoothing_empirical
    from squiggles.certify.run import certify_points
    from squiggles.distributed import rank_device
    from squiggles.report.figures import eps_curve
    from squiggles.runtime import resolve_device

    device = resolve_device(rank_device(args.device))
    model, card = resolve_model(args)
    model.to(device).eval()
    data = resolve_data(args)
    config.validate(tuple(data.bounds))
    state = Path(args.state) if args.state else out.with_suffix(".state.safetensors")
    result = certify_points(model, data, config, state_path=state, progress=not args.quiet and not rank,
                            device=device)
    if rank:
        return 0
    if not args.no_empirical:
        say(args, "attacking the same points for the empirical figure beside the certificate ...")
        x, y = data.x.to(device), data.y.to(device)
        if config.method == "smoothing":
            radii = [r for r in result.budgets() if r > 0]
            rows = smoothing_empirical(model, x, y, config.sigma, radii, seed=args.seed, bounds=tuple(data.bounds))
        else:
            rows = bounds_empirical(model, data, config.norm, config.eps, args.attacks, args.seed, device)
        result.with_empirical(rows)
    report = {**result.to_json(), "model": args.model, "model_card": card, "dataset": args.dataset,
              "split": args.split}
    key = "radius" if config.method == "smoothing" else "eps"
    curves = {"certified": ([r[key] for r in result.curve()], [r["certified_accuracy"] for r in result.curve()])}
    if result.empirical:
        curves["empirical (attack)"] = ([r["budget"] for r in result.empirical],
                                        [r["robust_accuracy"] for r in result.empirical])
    plot = eps_curve(out.with_suffix(".curve.png"), curves, "l2" if config.method == "smoothing" else config.norm,
                     title=f"{Path(args.model).name}: {config.method}", ylabel="accuracy (%)")
    report["files"] = [plot.name]
    write_json(out, report)
    remove_state_files(state)
    print(result.table())
    if result.violations():
        say(args, "warning: a certified figure is above the attack's on the same points; this is a bug, please "
            "report it with the results file")
    say(args, f"results in {out}")
    return 0
