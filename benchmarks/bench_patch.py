"""Universal patches and stickers on the zoo's models (no peer: see below).

* ``patch``: a universal targeted patch (Brown et al. 2017) trained on the MNIST training split, measured on the
  first ``--n`` test images not of the target class at random locations: success against the patch's share of
  the image (``--areas``), and against optimisation steps (the training curve) at ``--main-area``.
* ``stickers``: four 3 x 3 stickers per image (Eykholt et al. 2018) placed by saliency: per-image success.

There is no peer to run: ART 1.20.1's ``AdversarialPatchPyTorch`` needs torchvision, which has no CPU build on
these machines, and its ``AdversarialPatchNumpy`` fails in its constructor (``'AdversarialPatchNumpy' object
has no attribute 'patch'``); the figures are absolute. Prints one JSON object::

    python benchmarks/bench_patch.py > benchmarks/results/patch.json
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from _common import library_versions, log, machine_info

from squiggles.attacks.patch import patch_success, stickers, universal_patch
from squiggles.data import load_dataset
from squiggles.patches import Patch, Stickers
from squiggles.zoo import load_zoo_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["mnist-standard", "mnist-linf-0.3"])
    p.add_argument("--target", type=int, default=3)
    p.add_argument("--areas", type=float, nargs="+", default=[0.01, 0.02, 0.04, 0.08, 0.16])
    p.add_argument("--main-area", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--curve-steps", type=int, default=500, help="steps per patch of the area curve")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--sticker-n", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    train = load_dataset("mnist", "train", progress=False)
    test = load_dataset("mnist", "test", progress=False).subset(args.n)
    out: dict[str, Any] = {"benchmark": "patch", "machine": machine_info(args.threads),
                           "libraries": library_versions(), "args": vars(args), "models": {}}
    for name in args.models:
        model = load_zoo_model(name).eval()
        res: dict[str, Any] = {}
        patch = Patch.from_area(args.main_area, (28, 28))
        log(f"{name}: universal patch {patch.height} x {patch.width}, {args.steps} steps")
        trained = universal_patch(model, train.x, train.y, args.target, patch, steps=args.steps, progress=False)
        held = patch_success(model, test.x, test.y, trained)
        res["main"] = {"side": patch.height, "area": patch.area((28, 28)), "steps": args.steps,
                       "success_rate": held["success_rate"], "images": held["images"],
                       "train_curve": trained.history, "seconds": round(trained.wall_time_s, 1)}
        res["area_curve"] = []
        for area in args.areas:
            patch = Patch.from_area(area, (28, 28))
            log(f"{name}: area {area} ({patch.height} x {patch.width})")
            t = universal_patch(model, train.x, train.y, args.target, patch, steps=args.curve_steps, progress=False)
            h = patch_success(model, test.x, test.y, t)
            res["area_curve"].append({"area": area, "side": patch.height, "true_area": patch.area((28, 28)),
                                      "success_rate": h["success_rate"], "seconds": round(t.wall_time_s, 1)})
        log(f"{name}: stickers")
        start = time.perf_counter()
        s = stickers(model, test.x[: args.sticker_n], test.y[: args.sticker_n], Stickers(4, 3, 3))
        ok = s.clean_correct
        res["stickers"] = {"count": 4, "side": 3, "n": int(ok.sum()),
                           "success_rate": (s.success & ok).float().sum().item() / max(int(ok.sum()), 1),
                           "seconds": round(time.perf_counter() - start, 1)}
        out["models"][name] = res
        log(json.dumps(res)[:1500])
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
