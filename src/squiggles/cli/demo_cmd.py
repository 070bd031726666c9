"""``squiggles demo``: the main job. Standard and robust models side by side, in numbers and pictures."""

from __future__ import annotations

import argparse
from typing import Any

from squiggles.cli.common import add_common, nonneg_float, positive_float, positive_int, say

EXAMPLES = """examples:
  squiggles demo                                   # MNIST with the shipped zoo; report in demo-out/report.html
  squiggles demo --out runs/demo --retrain         # train every zoo model from its recipe first
  squiggles demo --standard runs/madry --l2 runs/l2 --observer runs/obs1 --observer runs/obs2
  squiggles demo --dataset digits --standard A --robust B --l2 C --observer D --n 50 --eps 0.1 0.2 --budgets 1 2
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job: robust vs standard models, the squiggles figure, an HTML report",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo-out", help="results folder (default: demo-out; an earlier demo's is "
                   "rewritten, any other non-empty folder is refused)")
    p.add_argument("--dataset", default="mnist", help="mnist (default), another built-in dataset, or a .npz/"
                   ".safetensors file with x and y (then give every model)")
    p.add_argument("--data-dir", help="folder with the dataset's files, when they cannot be fetched")
    p.add_argument("--retrain", action="store_true", help="train every zoo model from its recipe, even if shipped")
    models = p.add_argument_group("models (a zoo name, a model folder, or package.module:factory@weights)")
    models.add_argument("--standard", default="mnist-standard", help="the standard model (default: mnist-standard)")
    models.add_argument("--robust", default="mnist-linf-0.3", help="the L-inf robust model (default: mnist-linf-0.3)")
    models.add_argument("--l2", default="mnist-l2-2.0", help="the L2 robust model (default: mnist-l2-2.0)")
    models.add_argument("--observer", action="append", help="an observer for the wormholes stage (repeatable; "
                        "default: the two zoo observers)")
    sizes = p.add_argument_group("how much work each stage does")
    sizes.add_argument("--n", "--points", dest="n", type=positive_int, default=100,
                       help="test points evaluated (default: 100)")
    sizes.add_argument("--eps", type=positive_float, nargs="+", default=[0.1, 0.15, 0.2, 0.3],
                       help="L-inf budgets of the evaluation curve (default: 0.1 0.15 0.2 0.3)")
    sizes.add_argument("--attacks", default="quick", help="evaluation ensemble (default: quick; standard is "
                       "stronger and much slower)")
    sizes.add_argument("--digits", type=positive_int, default=3, help="digits in the squiggles figure (default: 3)")
    sizes.add_argument("--budgets", type=positive_float, nargs="+", default=[1.0, 2.0, 3.0, 4.0],
                       help="L2 budgets of the squiggles figure (default: 1 2 3 4)")
    sizes.add_argument("--wormhole-n", type=positive_int, default=100,
                       help="test points in the wormholes stage (default: 100)")
    sizes.add_argument("--wormhole-budgets", type=nonneg_float, nargs="+", default=[0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
                       help="L2 budgets of the wormholes stage (default: 0 1 2 3 4 5)")
    add_common(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from squiggles.demo import DemoConfig, run_demo
    from squiggles.demo.models import DEFAULT_OBSERVERS

    config = DemoConfig(
        out=args.out, dataset=args.dataset, data_dir=args.data_dir,
        roles={"standard": args.standard, "robust": args.robust, "l2": args.l2},
        observers=list(args.observer or DEFAULT_OBSERVERS), retrain=args.retrain, eval_n=args.n,
        eval_eps=args.eps, attacks=args.attacks, digits=args.digits, budgets=args.budgets,
        wormhole_n=args.wormhole_n, wormhole_budgets=args.wormhole_budgets, seed=args.seed, device=args.device,
        progress=not args.quiet,
    )
    results = run_demo(config, log=lambda m: say(args, m))
    print(_summary(results))
    return 0


def _summary(results: dict[str, Any]) -> str:
    """The headline numbers on stdout: accuracy per model and budget, the wormholes verdict, where the page is."""
    ev = results["evaluation"]
    lines = [f"{'model':<24s} {'clean':>7s} " + " ".join(f"{'eps ' + format(c['eps'], 'g'):>9s}"
                                                        for c in next(iter(ev["roles"].values()))["curve"])]
    for role, res in ev["roles"].items():
        title = results["models"][role]["title"]
        lines.append(f"{title:<24s} {100 * res['clean_accuracy']:6.1f}% "
                     + " ".join(f"{100 * c['robust_accuracy']:8.1f}%" for c in res["curve"]))
    flags = sum(len(res["flags"]) for res in ev["roles"].values())
    lines.append(f"({ev['points']} test points, {results['config']['attacks']} cascade; {flags} sanity flag(s))")
    lines.append(results["wormholes"]["summary"])
    lines.append(f"report: {results['report']}  ({results['wall_time_s']:.0f}s)")
    return "\n".join(lines)
