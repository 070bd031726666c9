"""``squiggles experiment NAME``: reproduce a landmark experiment, with the published figure beside ours."""

from __future__ import annotations

import argparse
from typing import Any

from squiggles.cli.common import add_common, key_values, say

EXAMPLES = """examples:
  squiggles experiment list                                  # what there is, with the papers
  squiggles experiment fgsm-linear --out runs/fgsm           # Goodfellow et al. 2014 on MNIST
  squiggles experiment spheres --quick --out runs/spheres    # a smaller run in a minute
  squiggles experiment spheres --set dims=[50,100] --out runs/spheres-scan
  squiggles experiment transfer --model runs/a --model mypkg.nets:wide@wide.safetensors --robust mnist-linf-0.3
  squiggles experiment nonrobust --dataset mine.npz --test-dataset mine-test.npz --model runs/mine
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from squiggles.experiments import EXPERIMENTS

    p = sub.add_parser(
        "experiment",
        help="reproduce a landmark experiment (results.json, figures, report.html)",
        description="Reproduce a landmark experiment: its figures and numbers beside the paper's, "
        "in OUT/results.json, OUT/figures/ and OUT/report.html.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "name", metavar="NAME", choices=[*EXPERIMENTS, "list"], help=f"one of: {', '.join(EXPERIMENTS)}; or 'list'"
    )
    p.add_argument(
        "--out",
        help="results folder (default: experiments/NAME; an earlier run of the same "
        "experiment is rewritten, any other non-empty folder is refused)",
    )
    p.add_argument("--quick", action="store_true", help="a small run (about a minute) with the same outputs")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        default=[],
        help="change one setting (repeatable; 'squiggles experiment list' shows them)",
    )
    p.add_argument(
        "--dataset",
        help="a built-in dataset, or a .npz/.safetensors file with x and y (default: the experiment's, usually mnist)",
    )
    p.add_argument("--test-dataset", help="a .npz/.safetensors test file for a --dataset file (default: its last 10%%)")
    p.add_argument("--data-dir", help="folder with the dataset's files, when they cannot be fetched")
    p.add_argument(
        "--model",
        action="append",
        metavar="REF",
        help="a model to use instead of the trained "
        "ones: a zoo name, a model folder, or package.module:factory@weights.safetensors (repeatable)",
    )
    p.add_argument("--robust", action="append", metavar="REF", help="a robust model (transfer; repeatable)")
    add_common(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from squiggles.experiments import make_config, run_experiment

    if args.name == "list":
        print(_listing())
        return 0
    overrides = _overrides(args)
    make_config(args.name, quick=args.quick, overrides=overrides)  # refuse bad settings before any work
    results = run_experiment(
        args.name,
        args.out or f"experiments/{args.name}",
        quick=args.quick,
        overrides=overrides,
        dataset=args.dataset,
        test_dataset=args.test_dataset,
        data_dir=args.data_dir,
        seed=args.seed,
        device=args.device,
        progress=not args.quiet,
        log=lambda m: say(args, m),
    )
    print(_summary(results))
    return 0


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``--set`` values, plus ``--model``/``--robust`` as the ``models``/``robust_models`` settings."""
    from squiggles.errors import SquigglesError
    from squiggles.experiments import get_experiment

    try:
        overrides = key_values(args.set)
    except argparse.ArgumentTypeError as exc:
        raise SquigglesError(f"--set: {exc}") from None
    fields = get_experiment(args.name).Config.__dataclass_fields__
    for flag, key in (("model", "models"), ("robust", "robust_models")):
        refs = getattr(args, flag)
        if refs:
            if key not in fields:
                raise SquigglesError(f"{args.name} takes no --{flag}")
            overrides[key] = refs
    return overrides


def _listing() -> str:
    """Each experiment with its paper and its settings (defaults)."""
    import dataclasses

    from squiggles.experiments import EXPERIMENTS, get_experiment

    lines = []
    for name in EXPERIMENTS:
        module = get_experiment(name)
        lines.append(f"{name:<12s} {module.TITLE} ({module.PAPER})")
        settings = ", ".join(
            f"{f.name}={getattr(module.Config(), f.name)!r}" for f in dataclasses.fields(module.Config)
        )
        lines.append(f"{'':<12s} settings: {settings}")
    return "\n".join(lines)


def _summary(results: dict[str, Any]) -> str:
    """The headline on stdout: the summary, the paper-beside-ours table, where the page is."""
    lines = [results.get("summary", "")]
    for row in results.get("published", []):
        lines.append(f"  {row['quantity']}: ours {_fmt(row['ours'])}, published {_fmt(row['published'])}")
    lines.append(f"report: {results['report']}  ({results['wall_time_s']:.0f}s)")
    return "\n".join(line for line in lines if line)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "n/a" if value is None else str(value)
