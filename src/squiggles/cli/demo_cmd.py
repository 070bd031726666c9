"""``squiggles demo``: the main job. For now: train a small CNN on MNIST for one epoch and report accuracy."""

from __future__ import annotations

import argparse

from squiggles.cli.common import add_common, say


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job: train and evaluate a small MNIST model")
    p.add_argument("--out", default="demo-out", help="folder for the demo's model (rewritten each run)")
    p.add_argument("--dataset", default="mnist", help="dataset to run on (default: mnist)")
    p.add_argument("--epochs", type=int, default=1)
    add_common(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from squiggles.train import TrainConfig, train_model

    say(args, f"training small-cnn on {args.dataset} for {args.epochs} epoch(s) -> {args.out}")
    # The one-epoch recipe chosen on the validation split (see README, Results).
    config = TrainConfig(
        arch="small-cnn", dataset=args.dataset, epochs=args.epochs, batch_size=16, lr=5e-3, seed=args.seed
    )
    # The demo folder is the demo's own: it is rewritten on every run.
    result, out = train_model(
        config, args.out, device=args.device, overwrite=True, progress=not args.quiet, log=lambda m: say(args, m)
    )
    print(
        f"small-cnn on {args.dataset}: test accuracy {100 * result.test_acc:.2f}% "
        f"after {len(result.history)} epoch(s) in {result.wall_time_s:.1f}s (model in {out})"
    )
    return 0
