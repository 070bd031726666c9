"""``squiggles train``: train a zoo architecture or your own model on a built-in dataset or your tensors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from squiggles.cli.common import add_common, flag_options, key_values, nonneg_float, positive_float, positive_int, say
from squiggles.errors import SquigglesError

EXAMPLES = """examples:
  squiggles train --model madry-cnn --dataset mnist --epochs 2 --out runs/madry
  squiggles train --model small-cnn --dataset digits --epochs 5 --out runs/digits
  squiggles train --model mypkg.nets:make_net --dataset my_train.npz --test-data my_test.npz --out runs/mine
  squiggles train --model madry-cnn --dataset mnist --epochs 4 --out runs/madry --resume
  squiggles train --model small-cnn --method fgsm-rs --eps 0.3 --epochs 10 --out runs/fast    # guarded
  squiggles train --model small-cnn --method trades --eps 0.3 --precision bf16 --ema 0.999 --epochs 15 --out runs/trades
  squiggles train --model madry-cnn --method spatial --max-rotation 30 --max-translation 3 --out runs/spatial
  squiggles train --model small-cnn --method noise --sigma 0.25 --out runs/smooth    # for squiggles certify
  squiggles train --model small-cnn --method crown-ibp --eps 0.3 --out runs/certified
  torchrun --nproc_per_node=2 -m squiggles train --model small-cnn --method pgd --eps 0.3 --out runs/ddp
  squiggles train --model small-cnn --poison pattern --poison-target 0 --poison-rate 0.1 --out runs/badnets
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from squiggles.models import MODELS
    from squiggles.train.loop import OPTIMIZERS, PRECISIONS
    from squiggles.train.methods import METHODS
    from squiggles.train.schedule import SCHEDULES

    p = sub.add_parser(
        "train",
        help="train a model and save weights + card",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        default="small-cnn",
        help=f"architecture: {', '.join(MODELS)}, or your own package.module:factory (default: small-cnn)",
    )
    p.add_argument(
        "--model-arg",
        action="append",
        metavar="KEY=VALUE",
        help="extra argument for the model factory, e.g. hidden=[64,64] (repeatable)",
    )
    p.add_argument("--weights", help="initial weights (.safetensors) to start from")
    p.add_argument(
        "--dataset",
        default="mnist",
        help="mnist, fashion-mnist, digits, spheres, or a .npz/.safetensors file with x and y",
    )
    p.add_argument("--test-data", help="your own test set (.npz/.safetensors); default: the dataset's test split")
    p.add_argument("--data-dir", help="folder with the dataset's files, when they cannot be fetched")
    p.add_argument("--out", required=True, help="output folder for model.safetensors, card.json and the checkpoint")
    p.add_argument("--method", default="standard", choices=sorted(METHODS), help="training method (default: standard)")
    p.add_argument("--eps", type=nonneg_float, help="adversarial methods: the budget (default 0.3)")
    p.add_argument("--norm", choices=("linf", "l2", "l1"), help="adversarial methods: the threat model (default linf)")
    p.add_argument("--attack-steps", type=positive_int, help="pgd / trades: attack steps per batch (default 10)")
    p.add_argument("--attack-step-size", type=positive_float, help="attack step size (default 2.5 eps / steps)")
    p.add_argument("--beta", type=nonneg_float, help="trades: weight of the KL term (default 6)")
    p.add_argument("--sigma", type=positive_float,
                   help="noise / consistency: the Gaussian noise level the smoothed classifier will use (default 0.25)")
    p.add_argument("--consistency-weight", type=nonneg_float,
                   help="consistency: weight of the KL term (Jeong and Shin's lambda; default 10, their MNIST setting "
                   "for sigma 0.25; they use 5 for sigma 0.5 and 1.0)")
    p.add_argument("--warmup", type=nonneg_float, help="ramp eps (or the spatial box) up over this share of training")
    p.add_argument("--max-rotation", type=nonneg_float,
                   help="spatial / spatial-augment: largest rotation either way, in degrees (default 30)")
    p.add_argument("--max-translation", type=nonneg_float,
                   help="spatial / spatial-augment: largest shift along each axis, in pixels (default 3)")
    p.add_argument("--worst-of", type=positive_int, help="spatial: random transforms per example (default 10)")
    p.add_argument("--draw", choices=("uniform", "grid"),
                   help="spatial: draw the transforms uniformly from the box (default) or from the evaluation grid")
    p.add_argument("--epochs", type=positive_int, help="default: the model's recipe (squiggles.train.recipes), else 1")
    p.add_argument("--batch-size", type=positive_int, help="default: the model's recipe, else 128")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    p.add_argument("--lr", type=positive_float, help="peak learning rate (default: the model's recipe, else 1e-3)")
    p.add_argument("--momentum", type=nonneg_float, default=0.9, help="SGD momentum (default: 0.9)")
    p.add_argument("--weight-decay", type=nonneg_float, default=0.0)
    p.add_argument("--schedule", choices=SCHEDULES, default="onecycle")
    p.add_argument(
        "--milestones", type=positive_int, nargs="*", default=[], help="epochs where 'step' divides lr by 10"
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="bf16: run each step's attack and loss under bfloat16 autocast, about 1.7x faster on CPUs with "
        "AVX512-BF16 and on recent GPUs; weights and every evaluation stay float32 (default: fp32)",
    )
    p.add_argument(
        "--ema",
        type=nonneg_float,
        default=0.0,
        metavar="DECAY",
        help="keep an exponential moving average of the weights with this decay per step (e.g. 0.999) and ship "
        "it instead of the last weights (default: 0, off)",
    )
    p.add_argument("--eval-n", type=positive_int, help="evaluate on only the first N test points each epoch")
    p.add_argument(
        "--no-guard",
        action="store_true",
        help="adversarial methods: skip the per-epoch catastrophic-overfitting check (APGD-CE + APGD-T on "
        "training points; rollback and a lower step on collapse)",
    )
    p.add_argument("--guard-n", type=positive_int, help="training points the guard attacks each epoch (default 256)")
    p.add_argument(
        "--final-eval",
        choices=("auto", "none", "quick", "standard"),
        default="auto",
        help="evaluation cascade whose robust accuracy goes into the card (auto: quick for adversarial methods)",
    )
    p.add_argument("--final-eval-n", type=positive_int, default=1000, help="test points for --final-eval")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    _add_poison_args(p)
    add_common(p)
    p.set_defaults(run=run)


def _add_poison_args(p: argparse.ArgumentParser) -> None:
    from squiggles.backdoor.triggers import CORNERS, KINDS, MAPS

    g = p.add_argument_group("poisoning: plant a backdoor (BadNets) to test defences such as squiggles backdoor scan")
    g.add_argument("--poison", choices=KINDS, help="stamp this trigger on a share of the training points and "
                   "relabel them: pattern (a 3 x 3 checkerboard near the bottom-right corner), pixel (one bright "
                   "pixel there), blend (alpha-blend a noise image over the whole input)")
    g.add_argument("--poison-map", choices=MAPS, help="all-to-one (the default: every poisoned point to "
                   "--poison-target) or all-to-all (y -> y + 1)")
    g.add_argument("--poison-target", type=int, help="all-to-one: the class poisoned points are sent to (default 0)")
    g.add_argument("--poison-rate", type=unit_open,
                   help="share of the eligible training points (those not already of the target class) poisoned: "
                   "exactly round(rate x eligible) of them (default 0.1)")
    g.add_argument("--poison-seed", type=int, help="draws the poisoned points and a blend's noise (default: --seed)")
    g.add_argument("--trigger-size", type=int, help="pattern: its side in pixels (default 3)")
    g.add_argument("--trigger-distance", type=int, help="pattern, pixel: pixels in from the corner (default 1)")
    g.add_argument("--trigger-corner", choices=CORNERS, help="pattern, pixel: which corner (default bottom-right)")
    g.add_argument("--trigger-at", type=row_col, metavar="ROW,COL",
                   help="pattern, pixel: the trigger's top-left pixel, instead of a corner")
    g.add_argument("--trigger-alpha", type=float, help="blend: the weight of the blended image (default 0.2)")
    g.add_argument("--trigger-image", help="blend: a .npz/.safetensors file whose array x holds the image to blend "
                   "(default: uniform noise drawn with --poison-seed)")


def unit_open(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a valid float: {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), e.g. 0.1; got {text}")
    return value


def row_col(text: str) -> tuple[int, int]:
    parts = text.split(",")
    try:
        r, c = (int(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROW,COL such as 24,24; got {text!r}") from None
    return r, c


TRIGGER_FLAGS = ("size", "distance", "corner", "at", "alpha", "image")


def poison_config(args: argparse.Namespace) -> dict[str, Any] | None:
    """The poisoning the flags ask for, as the dict `TrainConfig.poison` holds; None without ``--poison``."""
    from squiggles.backdoor.poison import PoisonSpec
    from squiggles.backdoor.triggers import make_trigger

    given = {k: getattr(args, f"trigger_{k}") for k in TRIGGER_FLAGS if getattr(args, f"trigger_{k}") is not None}
    if args.poison is None:
        flags = ("poison_map", "poison_target", "poison_rate", "poison_seed")
        others = [f for f in flags if getattr(args, f) is not None]
        stray = [f"--{f.replace('_', '-')}" for f in others] + [f"--trigger-{k}" for k in given]
        if stray:
            raise SquigglesError(f"{stray[0]} needs --poison pattern, pixel or blend")
        return None
    label_map = args.poison_map or "all-to-one"
    if label_map == "all-to-all" and args.poison_target is not None:
        raise SquigglesError("--poison-target is for --poison-map all-to-one; all-to-all sends y to y + 1")
    seed = args.seed if args.poison_seed is None else args.poison_seed
    options = {k: v for k, v in given.items() if k != "image"}
    trigger = make_trigger(args.poison, **options, **({"seed": seed} if args.poison == "blend" else {})).describe()
    if "image" in given:
        make_trigger(args.poison, image=given["image"])  # a pattern or pixel takes no image: say so
        trigger = {**trigger, "image": str(given["image"])}
        trigger.pop("seed", None)
    spec = PoisonSpec(trigger=trigger, label_map=label_map,
                      target=(0 if args.poison_target is None else args.poison_target) if label_map == "all-to-one"
                      else None, rate=0.1 if args.poison_rate is None else args.poison_rate, seed=seed)
    spec.validate()
    return spec.to_dict()


def run(args: argparse.Namespace) -> int:
    from squiggles.distributed import torchrun_group

    check_names(args.model, args.dataset)
    with torchrun_group(args.device):
        return _train(args)


def _train(args: argparse.Namespace) -> int:
    from squiggles.distributed import rank_device, rank_world
    from squiggles.train import TrainConfig, train_model

    filled = _apply_recipe(args)
    method_options = _method_options(args)
    config = TrainConfig(
        arch=args.model,
        dataset=args.dataset,
        method=args.method,
        method_options=method_options,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        milestones=list(args.milestones),
        seed=args.seed,
        eval_n=args.eval_n,
        guard=_guard_config(args),
        precision=args.precision,
        ema=args.ema,
        from_recipe=filled,
        poison=poison_config(args),
    )
    try:
        arch_kwargs = key_values(args.model_arg)
    except argparse.ArgumentTypeError as exc:
        raise SquigglesError(f"--model-arg: {exc}") from None
    result, out = train_model(
        config,
        args.out,
        test_dataset=args.test_data,
        data_dir=args.data_dir,
        arch_kwargs=arch_kwargs,
        init_weights=args.weights,
        device=rank_device(args.device),
        resume=args.resume,
        overwrite=args.overwrite,
        final_eval=args.final_eval,
        final_eval_n=args.final_eval_n,
        progress=not args.quiet and rank_world()[0] == 0,
        log=(lambda m: say(args, m)) if rank_world()[0] == 0 else (lambda m: None),
    )
    if rank_world()[0] != 0:
        return 0
    print(
        f"test accuracy {result.test_acc:.4f} after {len(result.history)} epochs "
        f"({result.wall_time_s:.1f}s); saved to {out}"
    )
    if args.quiet:  # the log said it already; a warning must reach a quiet run too
        for warning in result.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    return 0


def _apply_recipe(args: argparse.Namespace) -> list[str]:
    """Fill the settings the user left out from the model's recipe; say which, so nothing is a surprise."""
    from squiggles.train.recipes import fill

    keys = ("epochs", "batch_size", "lr", "warmup")
    values, filled = fill(args.model, args.method, {k: getattr(args, k) for k in keys})
    for key in keys:
        setattr(args, key, values[key])
    return filled  # train_model says which, once the data has loaded


def _guard_config(args: argparse.Namespace) -> Any:
    """None (the defaults) unless a guard flag was given."""
    from squiggles.train.guard import GuardConfig

    if args.no_guard:
        return GuardConfig(enabled=False)
    if args.guard_n is not None:
        return GuardConfig(n=args.guard_n)
    return None


METHOD_FLAGS = {
    "eps": "eps",
    "norm": "norm",
    "attack_steps": "steps",
    "attack_step_size": "step_size",
    "beta": "beta",
    "sigma": "sigma",
    "consistency_weight": "lbd",
    "warmup": "warmup",
    "max_rotation": "max_rotation",
    "max_translation": "max_translation",
    "worst_of": "k",
    "draw": "draw",
}


def _method_options(args: argparse.Namespace) -> dict:
    from squiggles.train.methods import METHODS

    return flag_options(args, METHODS[args.method], METHOD_FLAGS, f"--method {args.method}")


def check_names(model: str, dataset: str) -> None:
    """Fail fast, before any data is loaded, on an unknown model or dataset name."""
    from squiggles.data import DATASETS, is_builtin
    from squiggles.models import MODELS, is_import_path

    if not is_import_path(model) and model not in MODELS:
        raise SquigglesError(
            f"unknown model {model!r}; choose one of: {', '.join(MODELS)} (or your own package.module:factory)"
        )
    is_file = dataset.endswith((".npz", ".safetensors")) or Path(dataset).is_file()
    if not is_file and not is_builtin(dataset):
        raise SquigglesError(
            f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)} "
            "(or a .npz/.safetensors file with x and y)"
        )
