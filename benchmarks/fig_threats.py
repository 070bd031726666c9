"""The pictures of the threats beyond the norm ball, for the README (docs/images/threats-*.png).

* ``threats-spatial.png``: the first test digits, then each model's worst rotation and translation of the
  31 x 5 x 5 grid (Engstrom et al. 2019), with the label the model gave and the transform (degrees, px right, down).
* ``threats-stickers.png``: four 3 x 3 stickers per digit placed by saliency (Eykholt et al. 2018), per model.
* ``threats-patch-area.png``: from a ``bench_patch.py`` result, robust accuracy under a per-image patch and the
  universal patch's success, against the patch's share of the image, per model.
* ``threats-universal.png``: the main universal patch of that result and test digits wearing it.

    python benchmarks/fig_threats.py --models mnist-standard mnist-linf-0.3 runs/spatial \\
        --patch-json benchmarks/results/patch-2026-12-03.json --out docs/images
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from _common import log
from torch import nn

from squiggles.attacks.patch import UniversalPatch, patch_success, stickers
from squiggles.attacks.spatial import spatial_grid
from squiggles.checkpoints import load_model
from squiggles.data import load_dataset
from squiggles.patches import Patch, Stickers
from squiggles.report.figures import eps_curve, gallery, patch_figure
from squiggles.transforms import Spatial
from squiggles.zoo import load_zoo_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["mnist-standard", "mnist-linf-0.3"],
                   help="zoo names or folders written by `squiggles train`")
    p.add_argument("--patch-json", help="a bench_patch.py result, for the area curves and the universal patch")
    p.add_argument("--n", type=int, default=8, help="digits per row")
    p.add_argument("--out", default="docs/images")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    test = load_dataset("mnist", "test", progress=False)
    x, y = test.x[: args.n], test.y[: args.n]
    models = {Path(m).name: (load_model(m) if Path(m).is_dir() else load_zoo_model(m)).eval() for m in args.models}
    clean_row = ("clean", x, [f"label {int(v)}" for v in y], [False] * len(y))
    log("spatial grid")
    gallery(out / "threats-spatial.png", [clean_row] + [_spatial_row(n, m, x, y) for n, m in models.items()],
            title="worst of the 775 rotations (+-30 deg) and shifts (+-3 px): label (deg, right, down)")
    log("stickers")
    gallery(out / "threats-stickers.png", [clean_row] + [_sticker_row(n, m, x, y) for n, m in models.items()],
            title="four 3 x 3 stickers per digit, placed by saliency")
    if args.patch_json:
        bench = json.loads(Path(args.patch_json).read_text())
        _area_curves(out / "threats-patch-area.png", bench["models"])
        first = next(iter(bench["models"]))
        if first in models:
            _universal(out / "threats-universal.png", models[first], bench, first, test)


def _spatial_row(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, ...]:
    res = spatial_grid(model, x, y, Spatial())
    captions = [f"{int(p)} ({a:+.0f},{dx:+.0f},{dy:+.0f})" for p, (a, dx, dy) in zip(res.pred, res.params.tolist(),
                                                                                  strict=True)]
    return name, res.x_adv, captions, (res.pred != y).tolist()


def _sticker_row(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, ...]:
    res = stickers(model, x, y, Stickers(4, 3, 3))
    return name, res.x_adv, [f"pred {int(p)}" for p in res.pred], (res.pred != y).tolist()


def _area_curves(path: Path, results: dict[str, Any]) -> None:
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for name, r in results.items():
        per = r["per_image"]["curve"]
        curves[f"{name}: per-image patch (robust accuracy)"] = ([c["area"] for c in per],
                                                                 [c["robust_accuracy"] for c in per])
        uni = r["universal"]["area_curve"]
        curves[f"{name}: universal patch (success)"] = ([c["true_area"] for c in uni],
                                                         [c["success_rate"] for c in uni])
    eps_curve(path, curves, "patch", title="patches against their share of the image", ylabel="%")


def _universal(path: Path, model: nn.Module, bench: dict[str, Any], name: str, test: Any) -> None:
    main = bench["models"][name]["universal"]["main"]
    content = torch.tensor(main["content"]).unsqueeze(0)
    trained = UniversalPatch(content, bench["args"]["target"], Patch(main["side"], main["side"]))
    held = patch_success(model, test.x[:200], test.y[:200], trained, keep_examples=8)
    patch_figure(path, content, held["examples"], held["example_pred"], trained.target,
                 title=f"{name}: universal patch toward {trained.target} ({100 * main['area']:.1f}% of the image); "
                 f"{100 * main['success_rate']:.1f}% of held-out digits read as {trained.target}")


if __name__ == "__main__":
    main()
