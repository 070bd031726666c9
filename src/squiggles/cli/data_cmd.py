"""``squiggles data list|info|fetch``: what datasets exist, where they come from, and fetching them."""

from __future__ import annotations

import argparse
import json

from squiggles.cli.common import say


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="list, describe and fetch datasets")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True, parser_class=type(p))
    dsub.add_parser("list", help="the built-in datasets and whether each is cached").set_defaults(run=run_list)
    info = dsub.add_parser("info", help="shape, classes, splits, sources and cache of one dataset")
    info.add_argument("name")
    info.set_defaults(run=run_info)
    fetch = dsub.add_parser("fetch", help="download (or find offline) and cache a dataset")
    fetch.add_argument("name")
    fetch.add_argument("--data-dir", help="folder holding the four IDX files (.gz or not) to use instead; for mnist-c, "
                       "the folder holding the published mnist_c.zip")
    fetch.add_argument("--quiet", action="store_true")
    fetch.set_defaults(run=run_fetch)


def run_list(args: argparse.Namespace) -> int:
    from squiggles.data import DATASETS, dataset_info

    for name in DATASETS:
        info = dataset_info(name)
        state = info.get("origin") or ("cached" if info["cached"] else "not cached (squiggles data fetch " + name + ")")
        print(f"{name:15s} {str(tuple(info['shape'])):15s} {info['num_classes']:3d} classes  {state}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from squiggles.data import dataset_info

    print(json.dumps(dataset_info(args.name), indent=2, default=str))
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from squiggles.data import fetch

    path = fetch(args.name, data_dir=args.data_dir, progress=not args.quiet)
    say(args, f"{args.name} is ready")
    print(path)
    return 0
