"""Argument types and options shared by several subcommands."""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (plus where to look), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def nonneg_float(text: str) -> float:
    value = _number(text, float)
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _number(text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a valid {kind.__name__}: {text!r}") from None


def key_values(pairs: list[str] | None) -> dict[str, Any]:
    """``["hidden=[64,64]", "dropout=0.3"]`` -> dict, values parsed as JSON when they can be."""
    import json

    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def flag_options(args: argparse.Namespace, fn: Any, flags: dict[str, str], owner: str) -> dict[str, Any]:
    """Keyword options for ``fn`` from the flags the user gave (``flags``: flag dest -> keyword).

    A flag ``fn`` does not take is an error naming ``owner``, rather than a silently ignored option.
    """
    import inspect

    from squiggles.errors import SquigglesError

    accepted = inspect.signature(fn).parameters
    options = {}
    for dest, key in flags.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if key not in accepted:
            raise SquigglesError(f"{owner} takes no --{dest.replace('_', '-')}")
        options[key] = value
    return options


def add_common(parser: argparse.ArgumentParser, *, seed: bool = True) -> None:
    """Options nearly every command takes: device, seed, quiet."""
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default: auto)")
    if seed:
        parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")


def say(args: argparse.Namespace, message: str) -> None:
    """Progress messages go to stderr so stdout stays clean for results."""
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr)


def remove_state_files(state: Any) -> None:
    """A finished run's progress files (rank 0's and every other rank's) are no longer needed."""
    for path in state.parent.glob(state.stem + "*" + state.suffix):
        path.unlink(missing_ok=True)


# --- models and data from the command line ---------------------------------------------------------


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="a model folder (model.safetensors + card.json), a zoo name (squiggles zoo list), "
        "or your own package.module:factory",
    )
    parser.add_argument("--weights", help="weights (.safetensors) for a package.module:factory model")
    parser.add_argument(
        "--model-arg", action="append", metavar="KEY=VALUE", help="argument for your factory (repeatable)"
    )


def resolve_model(args: argparse.Namespace, any_callable: bool = False) -> tuple[Any, dict[str, Any]]:
    """Load ``--model`` (a folder, a zoo name, or a factory plus ``--weights``); return the model and its card.

    A folder of that name wins over a zoo name, so a user's own ``mnist-standard/`` is never shadowed.
    """
    from pathlib import Path

    from squiggles.checkpoints import load_model, load_user_model, read_card
    from squiggles.errors import SquigglesError
    from squiggles.models import is_import_path
    from squiggles.zoo import ZOO, load_zoo_model, zoo_card

    if is_import_path(args.model):
        try:
            kwargs = key_values(args.model_arg)
        except argparse.ArgumentTypeError as exc:
            raise SquigglesError(f"--model-arg: {exc}") from None
        model = load_user_model(args.model, args.weights, any_callable=any_callable, **kwargs)
        return model, {"arch": args.model, "arch_kwargs": kwargs, "weights": args.weights}
    if Path(args.model).exists():
        return load_model(args.model), read_card(args.model).to_dict()
    if args.model in ZOO:
        return load_zoo_model(args.model), zoo_card(args.model).to_dict()
    raise SquigglesError(
        f"--model {args.model!r}: no such folder (give a folder written by `squiggles train`, "
        f"a zoo name ({', '.join(ZOO)}), or package.module:factory with --weights)"
    )


def add_data_args(parser: argparse.ArgumentParser, split: str = "test") -> None:
    parser.add_argument(
        "--dataset",
        default="mnist",
        help="mnist, fashion-mnist, digits, spheres, or a .npz/.safetensors file with x and y",
    )
    parser.add_argument(
        "--split",
        default=split,
        choices=("train", "val", "trainval", "test"),
        help=f"split of a built-in dataset (default: {split})",
    )
    # --points is the same option under a name torchrun's own parser cannot mistake for one of its options.
    parser.add_argument("--n", "--points", dest="n", type=positive_int, help="use only the first N points")
    parser.add_argument("--data-dir", help="folder with the dataset's files, when they cannot be fetched")


def resolve_data(args: argparse.Namespace) -> Any:
    """The dataset the command runs on, cut to ``--n`` points."""
    from pathlib import Path

    from squiggles.data import DATASETS, is_builtin, load_dataset, load_tensors
    from squiggles.errors import SquigglesError

    name = args.dataset
    if name.endswith((".npz", ".safetensors")) or Path(name).is_file():
        data = load_tensors(name)
    elif is_builtin(name):
        data = load_dataset(name, args.split, data_dir=args.data_dir, progress=not getattr(args, "quiet", False))
    else:
        raise SquigglesError(
            f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)} (or a .npz/.safetensors file with x and y)"
        )
    return data.subset(min(args.n, len(data))) if args.n else data
