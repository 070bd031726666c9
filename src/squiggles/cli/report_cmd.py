"""``squiggles report``: render a results folder (or one results JSON) as one self-contained HTML page."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """examples:
  squiggles report adv/pgd                      # attack results -> adv/pgd/report.html
  squiggles report runs/madry                   # a training folder (card.json)
  squiggles report eval/linf.json               # one evaluation -> eval/linf.html
  squiggles report eval --out pages/eval.html   # every evaluation JSON in eval/
  squiggles report results/exp1 --overwrite     # replace a report.html squiggles did not write
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="render a results folder as one self-contained HTML page",
        description="Render results (results.json, summary.json, card.json or evaluation *.json) as one HTML "
        "page with tables, flags, model cards and figures inlined; it opens anywhere, offline.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", metavar="DIR", help="results folder, or one results .json file")
    p.add_argument("--out", help="HTML file to write (default: DIR/report.html, or FILE.html beside a .json)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out file that squiggles did not write"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from squiggles.report.html import write_report

    out = write_report(Path(args.path), Path(args.out) if args.out else None, overwrite=args.overwrite)
    print(out)
    return 0
