"""The ``squiggles`` command. Each subcommand lives in its own module with ``add_parser`` and ``run``.

User errors (bad names, bad numbers, missing files) end with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from squiggles import __version__
from squiggles.cli import (
    attack_cmd,
    backdoor_cmd,
    certify_cmd,
    data_cmd,
    demo_cmd,
    evaluate_cmd,
    experiment_cmd,
    monitor_cmd,
    patch_cmd,
    report_cmd,
    train_cmd,
    zoo_cmd,
)
from squiggles.cli.common import Parser
from squiggles.errors import SquigglesError

COMMANDS = (
    train_cmd, attack_cmd, evaluate_cmd, certify_cmd, monitor_cmd, backdoor_cmd, patch_cmd, data_cmd, zoo_cmd,
    demo_cmd, experiment_cmd, report_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="squiggles", description="Find adversarial examples in classifiers and iron them out.")
    parser.add_argument("--version", action="version", version=f"squiggles {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:  # answer without importing torch
        print(f"squiggles {__version__}")
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except SquigglesError as exc:
        print(f"squiggles {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"squiggles {args.command}: interrupted", file=sys.stderr)
        return 130
