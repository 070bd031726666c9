"""Universal patches, per-image patches and stickers on the zoo's models and any trained folder (no peer: see below).

* ``universal``: a targeted universal patch (Brown et al. 2017) trained on the MNIST training split, measured on
  the first ``--n`` test images not of the target class at random locations, at ``--main-area`` (with the
  training success against optimisation steps) and at each of ``--areas``.
* ``ceiling``: at the same area, a patch optimised for each image separately at one random location per image,
  toward the same target. No universal patch, one content for all images, can send more images to the target
  at such placements than per-image contents do, so this is (up to the per-image optimiser's strength) the most
  a universal patch could reach in this protocol.
* ``per_image``: robust accuracy under ``evaluate --threat patch`` (one patch per image anywhere, placed by
  saliency, then at 8 random positions) at each of ``--areas``, on the first ``--eval-n`` test images.
* ``stickers``: four 3 x 3 stickers per image (Eykholt et al. 2018) placed by saliency: per-image success.

There is no peer to run: ART 1.20.1's ``AdversarialPatchPyTorch`` needs torchvision, which has no CPU build on
these machines, and its ``AdversarialPatchNumpy`` fails in its constructor (``'AdversarialPatchNumpy' object
has no attribute 'patch'``); the figures are absolute. Prints one JSON object (the main universal patch's
content included, for the figures)::

    python benchmarks/bench_patch.py --models mnist-standard mnist-linf-0.3 runs/spatial > results/patch.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from _common import library_versions, log, machine_info
from torch import Tensor, nn

from squiggles.attacks.patch import patch_attack, patch_success, stickers, universal_patch
from squiggles.checkpoints import load_model
from squiggles.data import Dataset, load_dataset
from squiggles.evaluation import evaluate
from squiggles.goals import Targeted
from squiggles.patches import Patch, PatchArea, Stickers
from squiggles.zoo import load_zoo_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["mnist-standard", "mnist-linf-0.3"],
                   help="zoo names or folders written by `squiggles train`")
    p.add_argument("--target", type=int, default=3)
    p.add_argument("--areas", type=float, nargs="+", default=[0.01, 0.02, 0.04, 0.08, 0.16])
    p.add_argument("--main-area", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--curve-steps", type=int, default=500, help="steps per universal patch of the area curve")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--eval-n", type=int, default=500, help="test images for the per-image patch evaluation")
    p.add_argument("--sticker-n", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    train = load_dataset("mnist", "train", progress=False)
    test = load_dataset("mnist", "test", progress=False).subset(args.n)
    out: dict[str, Any] = {"benchmark": "patch", "machine": machine_info(args.threads),
                           "libraries": library_versions(), "args": vars(args), "models": {}}
    for name in args.models:
        model = (load_model(name) if Path(name).is_dir() else load_zoo_model(name)).eval()
        res = {"universal": _universal(model, train, test, args), "ceiling": _ceiling(model, test, args),
               "per_image": _per_image(model, test.subset(args.eval_n), args), "stickers": _stickers(model, test, args)}
        out["models"][Path(name).name] = res
        log(f"{name}: " + json.dumps({k: v for k, v in res.items() if k != "universal"})[:1500])
    print(json.dumps(out, indent=2))


def _universal(model: nn.Module, train: Dataset, test: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    patch = Patch.from_area(args.main_area, (28, 28))
    log(f"universal patch {patch.height} x {patch.width}, {args.steps} steps")
    trained = universal_patch(model, train.x, train.y, args.target, patch, steps=args.steps, progress=False)
    held = patch_success(model, test.x, test.y, trained)
    main = {"side": patch.height, "area": patch.area((28, 28)), "steps": args.steps,
            "success_rate": held["success_rate"], "images": held["images"], "train_curve": trained.history,
            "seconds": round(trained.wall_time_s, 1), "content": trained.content.squeeze(0).tolist()}
    curve = []
    for area in args.areas:
        patch = Patch.from_area(area, (28, 28))
        log(f"universal patch, area {area} ({patch.height} x {patch.width})")
        t = universal_patch(model, train.x, train.y, args.target, patch, steps=args.curve_steps, progress=False)
        h = patch_success(model, test.x, test.y, t)
        curve.append({"area": area, "side": patch.height, "true_area": patch.area((28, 28)),
                      "success_rate": h["success_rate"], "seconds": round(t.wall_time_s, 1)})
    return {"main": main, "area_curve": curve}


def _ceiling(model: nn.Module, test: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    """Per-image targeted patches at one random location each: the most a universal patch could reach."""
    keep = test.y != args.target
    x = test.x[keep]
    goal = Targeted(torch.full((len(x),), args.target, dtype=torch.long))
    start = time.perf_counter()
    log(f"ceiling: per-image patches of area {args.main_area} at random locations")
    res = patch_attack(model, x, goal, PatchArea(args.main_area), placement="random", steps=200, seed=0)
    return {"area": args.main_area, "images": len(x), "steps": 200, "success_rate": _rate(res.success),
            "seconds": round(time.perf_counter() - start, 1)}


def _per_image(model: nn.Module, test: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    log(f"per-image patch evaluation on {len(test)} points at areas {args.areas}")
    ev = evaluate(model, test, PatchArea(args.areas[0]), eps=args.areas, progress=False, keep_adv=False)
    return {"n": ev.n, "clean_accuracy": ev.clean_accuracy,
            "curve": [{"area": c["eps"], "robust_accuracy": c["robust_accuracy"]} for c in ev.curve()],
            "seconds": round(ev.wall_time_s, 1)}


def _stickers(model: nn.Module, test: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    log("stickers: 4 of 3 x 3")
    start = time.perf_counter()
    s = stickers(model, test.x[: args.sticker_n], test.y[: args.sticker_n], Stickers(4, 3, 3))
    ok = s.clean_correct
    return {"count": 4, "side": 3, "n": int(ok.sum()), "success_rate": _rate(s.success[ok]),
            "seconds": round(time.perf_counter() - start, 1)}


def _rate(flags: Tensor) -> float:
    return flags.float().mean().item() if len(flags) else float("nan")


if __name__ == "__main__":
    main()
