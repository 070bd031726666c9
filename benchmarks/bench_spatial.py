"""Rotations and translations: our spatial attacks against Foolbox 3.3.4's ``SpatialAttack`` on the same points.

Per model (default: the zoo's ``mnist-standard``, a Madry CNN, and ``mnist-linf-0.3``), on the first ``--n``
MNIST test images, with Engstrom et al.'s MNIST box (rotations within +-30 degrees, shifts within +-3 pixels):

* ``grid``: our 775-transform grid (31 rotations x 5 x 5 shifts) beside Foolbox's ``SpatialAttack`` set to the
  same grid (``num_rotations=31, num_translations=5``), per-point robustness and wall time. The two interpolate
  differently (Foolbox samples with ``align_corners=True``, so its "3 pixels" are 3 x 27/28 of ours, and its
  shifts point the other way, which the symmetric grid absorbs), so a point on the edge may differ.
* ``ours``: worst-of-10, the first-order attack and the whole spatial cascade (grid, worst-of-10, first-order).
* ``linf``: robust accuracy at Linf ``--linf-eps`` by the ``quick`` cascade, to show how robustness to one
  threat carries (or does not) to the other.

Prints one JSON object to stdout (progress on stderr)::

    python benchmarks/bench_spatial.py --n 1000 > benchmarks/results/spatial.json
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from _common import library_versions, log, machine_info
from torch import Tensor, nn

from squiggles.attacks.spatial import spatial_fo, spatial_grid, spatial_random
from squiggles.data import load_dataset
from squiggles.evaluation import evaluate
from squiggles.threat import Linf
from squiggles.transforms import Spatial
from squiggles.zoo import load_zoo_model


def points(n: int) -> tuple[Tensor, Tensor]:
    data = load_dataset("mnist", "test", progress=False)
    return data.x[:n].contiguous(), data.y[:n].contiguous()


def foolbox_grid(model: nn.Module, x: Tensor, y: Tensor, rotations: int, translations: int,
                 batch: int) -> tuple[Tensor, float]:
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device="cpu")
    attack = fb.attacks.SpatialAttack(max_translation=3, max_rotation=30, num_translations=translations,
                                      num_rotations=rotations, grid_search=True)
    start = time.perf_counter()
    success = []
    for i in range(0, len(x), batch):
        _, _, ok = attack(fmodel, x[i : i + batch], fb.criteria.Misclassification(y[i : i + batch]))
        success.append(ok)
    return torch.cat(success), time.perf_counter() - start


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def model_part(name: str, x: Tensor, y: Tensor, args: argparse.Namespace) -> dict[str, Any]:
    model = load_zoo_model(name).eval()
    model.requires_grad_(False)
    box = Spatial(30, 3)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y)
    out: dict[str, Any] = {"n": len(x), "clean_accuracy": clean.float().mean().item()}
    log(f"{name}: our grid")
    ours, t_ours = timed(spatial_grid, model, x, y, box, rotations=args.rotations, translations=args.translations)
    ours_robust = clean & ~ours.success
    out["grid"] = {"transforms": args.rotations * args.translations**2,
                   "squiggles": {"robust_accuracy": ours_robust.float().mean().item(), "seconds": round(t_ours, 2)}}
    if not args.no_foolbox:
        log(f"{name}: foolbox SpatialAttack grid")
        fb_success, t_fb = foolbox_grid(model, x, y, args.rotations, args.translations, args.foolbox_batch)
        fb_robust = clean & ~fb_success
        out["grid"]["foolbox"] = {"robust_accuracy": fb_robust.float().mean().item(), "seconds": round(t_fb, 2),
                                  "batch": args.foolbox_batch}
        out["grid"]["gap_points"] = 100 * abs(ours_robust.float().mean().item() - fb_robust.float().mean().item())
        out["grid"]["per_point_disagreements"] = int((ours_robust != fb_robust).sum())
        out["grid"]["speedup"] = round(t_fb / t_ours, 2)
    log(f"{name}: worst-of-10, first-order, cascade")
    rnd, t_rnd = timed(spatial_random, model, x, y, box, k=10)
    fo, t_fo = timed(spatial_fo, model, x, y, box)
    casc, t_casc = timed(evaluate, model, (x, y), box, progress=False)
    out["worst_of_10"] = {"robust_accuracy": (clean & ~rnd.success).float().mean().item(), "seconds": round(t_rnd, 2)}
    out["first_order"] = {"robust_accuracy": (clean & ~fo.success).float().mean().item(), "seconds": round(t_fo, 2),
                          "config": fo.config}
    out["cascade"] = {"robust_accuracy": casc.robust_accuracy, "seconds": round(t_casc, 2),
                      "breakdown": casc.breakdown(0)}
    if args.linf_eps > 0:
        log(f"{name}: Linf {args.linf_eps} (quick)")
        lin, t_lin = timed(evaluate, model, (x[: args.linf_n], y[: args.linf_n]), Linf(args.linf_eps), "quick",
                           progress=False)
        out["linf"] = {"eps": args.linf_eps, "n": min(args.linf_n, len(x)), "robust_accuracy": lin.robust_accuracy,
                       "seconds": round(t_lin, 2)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["mnist-standard", "mnist-linf-0.3"])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--rotations", type=int, default=31)
    p.add_argument("--translations", type=int, default=5)
    p.add_argument("--foolbox-batch", type=int, default=500)
    p.add_argument("--no-foolbox", action="store_true")
    p.add_argument("--linf-eps", type=float, default=0.3)
    p.add_argument("--linf-n", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    x, y = points(args.n)
    out: dict[str, Any] = {"benchmark": "spatial", "machine": machine_info(args.threads),
                           "libraries": library_versions(), "args": vars(args), "models": {}}
    for name in args.models:
        out["models"][name] = model_part(name, x, y, args)
        log(json.dumps(out["models"][name], default=str)[:1500])
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
