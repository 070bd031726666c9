"""``squiggles patch``: train a universal targeted patch on a model (``train``), or measure a saved one on a
model and dataset (``apply``): the patch as an image and tensors, its success rate, and digits wearing it."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from squiggles.cli.common import (
    add_common,
    add_data_args,
    add_model_args,
    nonneg_float,
    positive_float,
    positive_int,
    resolve_data,
    resolve_model,
    say,
)
from squiggles.errors import SquigglesError

EXAMPLES = """examples:
  squiggles patch train --model mnist-standard --target 3 --patch-area 0.08 --steps 1000 --out patches/three
  squiggles patch apply --patch patches/three --model mnist-linf-0.3 --n 1000 --out patches/three-on-robust
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("patch", help="universal targeted patches: train one, or apply a saved one",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=type(p))
    train = actions.add_parser("train", help="train a patch that sends any image to --target (Brown et al. 2017)")
    add_model_args(train)
    add_data_args(train, split="train")
    train.add_argument("--target", type=int, required=True, help="the class every patched image should read as")
    train.add_argument("--patch-area", type=positive_float, default=0.08,
                       help="the square patch's share of the image (default 0.08: 8 x 8 on MNIST)")
    train.add_argument("--steps", type=positive_int, default=1000, help="optimisation steps (default 1000)")
    train.add_argument("--batch-size", type=positive_int, default=128)
    train.add_argument("--lr", type=positive_float, default=0.05, help="Adam's step on the content (default 0.05)")
    train.add_argument("--max-rotation", type=nonneg_float, default=10.0,
                       help="random rotation of the patch while training, in degrees (default 10)")
    train.add_argument("--test-data", help="held-out images (.npz/.safetensors); default: the dataset's test split")
    train.add_argument("--test-n", type=positive_int, default=1000,
                       help="held-out test images the success rate is measured on (default 1000)")
    train.add_argument("--out", required=True, help="output folder")
    train.add_argument("--overwrite", action="store_true", help="replace an earlier patch in --out")
    add_common(train)
    train.set_defaults(run=run_train)
    apply = actions.add_parser("apply", help="measure a saved patch on a model and dataset")
    apply.add_argument("--patch", required=True, help="a folder written by 'squiggles patch train'")
    add_model_args(apply)
    add_data_args(apply)
    apply.add_argument("--placements", type=positive_int, default=1, help="random locations per image (default 1)")
    apply.add_argument("--out", required=True, help="output folder")
    apply.add_argument("--overwrite", action="store_true")
    add_common(apply)
    apply.set_defaults(run=run_apply)


def run_train(args: argparse.Namespace) -> int:
    import torch

    from squiggles._io import ensure_writable_dir
    from squiggles.attacks.patch import patch_success, universal_patch
    from squiggles.patches import Patch
    from squiggles.runtime import resolve_device
    from squiggles.transforms import check_images

    out = _fresh(Path(args.out), args.overwrite)
    model, card = resolve_model(args)
    data = resolve_data(args)
    check_images(data.x[:1])
    if not 0 <= args.target < data.num_classes:
        raise SquigglesError(f"--target {args.target}: the dataset has classes 0 to {data.num_classes - 1}")
    patch = Patch.from_area(args.patch_area, tuple(data.x.shape[-2:]), data.bounds)
    device = resolve_device(args.device)
    if isinstance(model, torch.nn.Module):
        model.to(device)
    test = _held_out(args)
    out = ensure_writable_dir(out)
    trained = universal_patch(model, data.x.to(device), data.y.to(device), args.target, patch, steps=args.steps,
                              batch_size=args.batch_size, lr=args.lr, max_rotation=args.max_rotation,
                              seed=args.seed, progress=not args.quiet)
    held = patch_success(model, test.x.to(device), test.y.to(device), trained, seed=args.seed)
    _write(out, trained, held, args, card, "train")
    print(f"patch {patch.height} x {patch.width} ({100 * trained.config['area']:.1f}% of the image) -> class "
          f"{args.target}: {100 * held['success_rate']:.1f}% of {held['images']} held-out images -> {out}")
    return 0


def run_apply(args: argparse.Namespace) -> int:
    import torch

    from squiggles._io import ensure_writable_dir
    from squiggles.attacks.patch import patch_success
    from squiggles.runtime import resolve_device

    trained = load_patch(Path(args.patch))
    out = _fresh(Path(args.out), args.overwrite)
    model, card = resolve_model(args)
    data = resolve_data(args)
    trained.patch.check_fits(data.x[:1])
    if trained.content.shape[0] != data.x.shape[1]:
        raise SquigglesError(f"the patch has {trained.content.shape[0]} channels but the images have "
                             f"{data.x.shape[1]}; apply it to images like the ones it was trained on")
    device = resolve_device(args.device)
    if isinstance(model, torch.nn.Module):
        model.to(device)
    out = ensure_writable_dir(out)
    held = patch_success(model, data.x.to(device), data.y.to(device), trained, placements=args.placements,
                         seed=args.seed)
    _write(out, trained, held, args, card, "apply")
    print(f"patch -> class {trained.target}: {100 * held['success_rate']:.1f}% of {held['images']} images -> {out}")
    return 0


def load_patch(folder: Path) -> Any:
    """A patch saved by ``squiggles patch train`` (safetensors plus its JSON summary)."""
    import json

    from safetensors.torch import load_file

    from squiggles.attacks.patch import UniversalPatch
    from squiggles.patches import Patch

    tensors, summary = folder / "patch.safetensors", folder / "summary.json"
    if not tensors.exists() or not summary.exists():
        raise SquigglesError(f"--patch {folder}: no patch.safetensors and summary.json there; give a folder written "
                             "by 'squiggles patch train'")
    meta = json.loads(summary.read_text())
    content = load_file(str(tensors))["content"]
    patch = Patch(int(content.shape[1]), int(content.shape[2]), tuple(meta["patch"]["bounds"]))
    return UniversalPatch(content, int(meta["target"]), patch, meta.get("config", {}), meta.get("history", []))


def _fresh(out: Path, overwrite: bool) -> Path:
    if (out / "summary.json").exists() and not overwrite:
        raise SquigglesError(f"{out} already holds a patch result; use --overwrite or another --out folder")
    return out


def _held_out(args: argparse.Namespace) -> Any:
    """The held-out images the patch is measured on: ``--test-data``, else the built-in dataset's test split."""
    from squiggles.data import is_builtin, load_dataset, load_tensors

    if args.test_data:
        test = load_tensors(args.test_data)
    elif is_builtin(args.dataset):
        test = load_dataset(args.dataset, "test", data_dir=args.data_dir, progress=not args.quiet)
    else:
        raise SquigglesError("--test-data is required with your own --dataset: the patch is measured on held-out "
                             "images (.npz/.safetensors with x and y)")
    return test.subset(min(args.test_n, len(test)))


def _write(out: Path, trained: Any, held: dict[str, Any], args: argparse.Namespace, card: dict[str, Any],
           action: str) -> None:
    from squiggles._io import versions, write_json, write_safetensors
    from squiggles.report.figures import as_image, patch_figure, pyplot

    write_safetensors(out / "patch.safetensors", {"content": trained.content})
    plt = pyplot()
    plt.imsave(out / "patch.png", as_image(trained.content.cpu(), trained.patch.bounds), cmap="gray", vmin=0, vmax=1)
    patch_figure(out / "worn.png", trained.content.cpu(), held["examples"].cpu(), held["example_pred"].cpu(),
                 trained.target, trained.patch.bounds,
                 title=f"{100 * held['success_rate']:.1f}% read as {trained.target}")
    summary = {
        "kind": "patch", "action": action, "target": trained.target, "success_rate": held["success_rate"],
        "images": held["images"],
        "patch": trained.patch.describe(), "config": trained.config, "history": trained.history,
        "wall_time_s": round(trained.wall_time_s, 2), "model": args.model, "model_card": card,
        "dataset": args.dataset, "split": args.split, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": versions(), "files": ["patch.safetensors", "patch.png", "worn.png"],
    }
    write_json(out / "summary.json", summary)
    say(args, f"wrote {', '.join(summary['files'])} and summary.json to {out}")
