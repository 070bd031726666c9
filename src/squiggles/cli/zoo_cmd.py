"""``squiggles zoo list|show|reproduce``: the shipped models, their cards, and rerunning their recipes."""

from __future__ import annotations

import argparse
import json
import shlex
from typing import Any

from squiggles.cli.common import positive_int, say

EXAMPLES = """examples:
  squiggles zoo list
  squiggles zoo show mnist-linf-0.3
  squiggles zoo show mnist-linf-0.3 --json
  squiggles zoo reproduce mnist-linf-0.3 --out runs/linf --epochs 1
  squiggles evaluate --model mnist-linf-0.3 --dataset mnist --eps 0.3 --out eval/linf.json
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "zoo",
        help="list, describe and reproduce the shipped models",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    zsub = p.add_subparsers(dest="zoo_command", metavar="ACTION", required=True, parser_class=type(p))
    zsub.add_parser("list", help="every zoo model: role, whether shipped, accuracy").set_defaults(run=run_list)
    show = zsub.add_parser("show", help="one zoo model's card: architecture, recipe, metrics")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print the card as JSON")
    show.set_defaults(run=run_show)
    rep = zsub.add_parser(
        "reproduce",
        help="rerun a zoo model's recipe and compare with the shipped card",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rep.add_argument("name")
    rep.add_argument("--out", required=True, help="new folder for the reproduced model (never replaced)")
    rep.add_argument("--epochs", type=positive_int, help="override the recipe's epochs, for a quick check")
    rep.add_argument("--data-dir", help="folder with the dataset's files, when they cannot be fetched")
    rep.add_argument("--resume", action="store_true", help="continue an interrupted reproduction in --out")
    rep.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default: auto)")
    rep.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    rep.set_defaults(run=run_reproduce)


def run_list(args: argparse.Namespace) -> int:
    from squiggles.zoo import is_shipped, list_entries, zoo_card

    rows = [("NAME", "ROLE", "SHIPPED", "CLEAN", "ROBUST", "SUMMARY")]
    for entry in list_entries():
        metrics = zoo_card(entry.name).metrics if is_shipped(entry.name) else {}
        shipped = "yes" if is_shipped(entry.name) else "no"
        clean, robust = _pct(metrics.get("clean_accuracy")), _pct(metrics.get("robust_accuracy"))
        rows.append((entry.name, entry.role, shipped, clean, robust, entry.summary))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:5], widths, strict=True)) + "  " + row[5])
    return 0


def run_show(args: argparse.Namespace) -> int:
    from squiggles.zoo import get_entry, is_shipped, zoo_card

    entry = get_entry(args.name)
    if args.json:
        print(json.dumps(zoo_card(entry.name).to_dict(), indent=2))
        return 0
    print(f"{entry.name} ({entry.role}): {entry.summary}")
    lines = _card_lines(entry.name) if is_shipped(entry.name) else _unshipped_lines(entry)
    width = max(len(label) for label, _ in lines) + 2
    for label, value in lines:
        print(f"  {label + ':':{width}s}{value}")
    return 0


def run_reproduce(args: argparse.Namespace) -> int:
    from squiggles.checkpoints import read_card
    from squiggles.zoo import compare, is_shipped, recipe_changes, reproduce, zoo_card

    extra = ["--device", args.device]
    extra += ["--epochs", str(args.epochs)] if args.epochs else []
    extra += ["--data-dir", args.data_dir] if args.data_dir else []
    extra += ["--resume"] if args.resume else []
    say(args, f"reproducing {args.name} into {args.out}")
    out = reproduce(args.name, args.out, extra_args=extra, progress=not args.quiet)
    new = read_card(out)
    if not is_shipped(args.name):
        print(f"reproduced {args.name} in {out}: clean accuracy {_pct(new.metrics.get('clean_accuracy'))}")
        print(f"(no shipped card for {args.name} in this build, so nothing to compare with)")
        return 0
    shipped = zoo_card(args.name)
    print(f"reproduced {args.name} in {out}; compared with the shipped card:")
    _print_comparison(compare(shipped, new))
    if "robust_accuracy" in shipped.metrics and "robust_accuracy" not in new.metrics:
        print(f"measure the robust accuracy with: {_evaluate_hint(str(out), shipped.dataset, shipped.metrics)}")
    changes = recipe_changes(shipped, new)
    if changes:
        listed = ", ".join(f"{k} {a} -> {b}" for k, a, b in ((k, *v) for k, v in changes.items()))
        print(f"note: the recipe differs from the shipped one ({listed}), so the figures need not match")
    return 0


def _card_lines(name: str) -> list[tuple[str, str]]:
    from squiggles.zoo import card_command, weights_dir, zoo_card

    card = zoo_card(name)
    kwargs = json.dumps(card.arch_kwargs, separators=(", ", ": "))
    lines = [
        ("weights", str(weights_dir(name))),
        ("arch", f"{card.arch} {kwargs}"),
        ("dataset", f"{card.dataset} (inputs in [{card.bounds[0]}, {card.bounds[1]}])"),
        ("recipe", card_command(card)),
        ("seed", str(card.seed)),
    ]
    lines += [(key.replace("_", " "), _figure(key, value)) for key, value in card.metrics.items() if key != "history"]
    lines.append(("wall time", f"{card.wall_time_s} s" if card.wall_time_s is not None else "not recorded"))
    lines.append(("versions", ", ".join(f"{k} {v}" for k, v in card.versions.items())))
    lines.append(("created", card.created))
    lines += [("note", note) for note in card.notes]
    return lines


def _unshipped_lines(entry: Any) -> list[tuple[str, str]]:
    from squiggles.zoo import train_command, weights_dir

    return [
        ("recipe", train_command(entry.train_args)),
        ("weights", f"not in this build (expected in {weights_dir(entry.name)})"),
        ("reproduce", f"squiggles zoo reproduce {entry.name} --out DIR"),
    ]


def _print_comparison(rows: dict[str, dict[str, Any]]) -> None:
    print(f"  {'':17s}{'shipped':>10s}{'reproduced':>12s}{'difference':>12s}")
    for key, row in rows.items():
        diff = row["difference"]
        cells = (_pct(row["shipped"]), _pct(row["reproduced"]), "-" if diff is None else f"{100 * diff:+.2f} pts")
        print(f"  {key.replace('_', ' '):17s}{cells[0]:>10s}{cells[1]:>12s}{cells[2]:>12s}")


def _evaluate_hint(model: str, dataset: str | None, metrics: dict[str, Any]) -> str:
    how = metrics.get("robust_eval") or {}
    args = ["squiggles", "evaluate", "--model", model, "--dataset", str(dataset or "mnist")]
    if how.get("norm") == "spatial":  # rotations and shifts: the spatial cascade, on the card's box
        box = how.get("threat") or {}
        args += ["--threat", "spatial"]
        args += [f"--{k.replace('_', '-')}={box[k]}" for k in ("max_rotation", "max_translation") if k in box]
        args += ["--n", str(how["points"])] if "points" in how else []
        return shlex.join([*args, "--out", "eval.json"])
    args += ["--norm", str(how.get("norm", "linf")), "--eps", str(how.get("eps", "EPS"))]
    args += ["--attacks", str(how["attacks"])] if "attacks" in how else []
    return shlex.join([*args, "--out", "eval.json"])


def _figure(key: str, value: Any) -> str:
    if key.endswith("accuracy") and isinstance(value, int | float):
        return _pct(value)
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.2f}%"
