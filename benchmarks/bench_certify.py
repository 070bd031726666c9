"""Certificates: squiggles against ART 1.20.1 on the same model, points and settings, in one run.

Two parts:

* ``smoothing``: Cohen et al.'s CERTIFY (N0 = 100 selection draws, N estimation draws, alpha = 0.001) on the
  first ``--n`` MNIST test images, ours (`squiggles.certify.smoothing.certify`) against ART's
  ``PyTorchRandomizedSmoothing(sample_size=N0).certify(x, n=N)``: points per second, and the certified
  accuracy at each radius of both (they draw different noise, so the figures agree only statistically).
* ``ibp``: interval bounds on the logits at Linf ``--eps``: ours (`output_bounds`, method ``ibp``) against ART's
  ``PyTorchIBPClassifier.predict_intervals`` on the same weights. ART accepts only Conv2d, Linear and ReLU and
  infers the reshape between them, so the model is rebuilt without `nn.Flatten` for ART. Largest difference of
  the bounds, and the wall time of each on the same points.

Prints one JSON object to stdout (progress on stderr)::

    python benchmarks/bench_certify.py --smoothing-model runs/noise-0.25 --sigma 0.25 --n 20 \
        --ibp-model mnist-linf-0.3 > benchmarks/results/certify.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import library_versions, log, machine_info, seed_global_rngs
from torch import nn

from squiggles.certify.bounds import output_bounds
from squiggles.certify.smoothing import certified_accuracy, certify
from squiggles.checkpoints import load_model
from squiggles.data import load_dataset
from squiggles.zoo import ZOO, load_zoo_model


def _load(name: str) -> nn.Module:
    return (load_zoo_model(name) if name in ZOO and not Path(name).exists() else load_model(name)).eval()


def smoothing_part(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: float, n: int,
                   batch_size: int) -> dict[str, Any]:
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing

    radii = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    log(f"smoothing: ours on {len(x)} points, N = {n}")
    t = time.perf_counter()
    ours = certify(model, x, sigma, n0=100, n=n, alpha=0.001, batch_size=batch_size, seed=0)
    ours_s = time.perf_counter() - t
    art = PyTorchRandomizedSmoothing(model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                     nb_classes=10, clip_values=(0.0, 1.0), sample_size=100, scale=sigma,
                                     alpha=0.001, device_type="cpu")
    log(f"smoothing: ART on {len(x)} points, N = {n}")
    t = time.perf_counter()
    art_pred, art_radius = art.certify(x.numpy(), n=n, batch_size=batch_size)
    art_s = time.perf_counter() - t
    art_pred_t, art_radius_t = torch.from_numpy(art_pred).long(), torch.from_numpy(art_radius).float()
    return {
        "points": len(x), "sigma": sigma, "n0": 100, "n": n, "alpha": 0.001, "batch_size": batch_size,
        "ours": {"seconds": round(ours_s, 2), "points_per_second": round(len(x) / ours_s, 4),
                 "certified_accuracy": dict(zip(map(str, radii), certified_accuracy(ours.prediction, ours.radius, y,
                                                                                    radii), strict=True))},
        "art": {"seconds": round(art_s, 2), "points_per_second": round(len(x) / art_s, 4),
                "certified_accuracy": dict(zip(map(str, radii), certified_accuracy(art_pred_t, art_radius_t, y,
                                                                                   radii), strict=True))},
        "speedup_vs_art": round(art_s / ours_s, 3),
        "radius_mean_abs_difference": float((ours.radius - art_radius_t).abs().mean()),
    }


class _NoFlatten(nn.Module):
    """The same layers and weights with no `nn.Flatten` module: the reshape happens inside ``forward`` (ART infers
    it between the last convolution and the first dense layer)."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        for i, layer in enumerate(layers):  # direct children: ART hooks the model's children to find its layers
            self.add_module(f"layer{i}", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.children():
            if isinstance(layer, nn.Linear) and x.dim() > 2:
                x = x.flatten(1)
            x = layer(x)
        return x


def _without_flatten(model: nn.Module) -> nn.Module:
    from squiggles.certify.layers import _leaves

    keep = [m for _, m in _leaves(model, "") if not isinstance(m, (nn.Flatten, nn.Identity, nn.Dropout))]
    for m in keep:
        if not isinstance(m, (nn.Conv2d, nn.Linear, nn.ReLU)):
            raise SystemExit(f"ART's IBP takes only Conv2d, Linear and ReLU; this model has {type(m).__name__}")
    return _NoFlatten(keep).eval()


def ibp_part(model: nn.Module, x: torch.Tensor, eps: float, repeats: int) -> dict[str, Any]:
    from art.estimators.certification.interval import PyTorchIBPClassifier

    with contextlib.redirect_stdout(sys.stderr):  # ART prints what it inferred; stdout carries only the JSON
        art = PyTorchIBPClassifier(model=_without_flatten(model), loss=nn.CrossEntropyLoss(),
                                   input_shape=tuple(x.shape[1:]), nb_classes=10, clip_values=(0.0, 1.0),
                                   device_type="cpu")
    ours_t, art_t = [], []
    for _ in range(repeats):  # interleaved, so a change of machine load hits both
        t = time.perf_counter()
        with torch.no_grad():
            lo, hi = output_bounds(model, x, "linf", eps, "ibp")
        ours_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        theirs = art.predict_intervals(x.numpy(), bounds=eps, limits=[0.0, 1.0], batch_size=len(x))
        art_t.append(time.perf_counter() - t)
    theirs_t = torch.from_numpy(theirs)
    diff = max(float((lo - theirs_t[:, 0]).abs().max()), float((hi - theirs_t[:, 1]).abs().max()))
    # float32 sums in another order differ in the last bits: relative to the size of the bound.
    scale = torch.maximum(torch.stack([lo, hi], 1).abs(), torch.ones(1))
    rel = float(((torch.stack([lo, hi], 1) - theirs_t).abs() / scale).max())
    return {
        "points": len(x), "eps": eps, "repeats": repeats,
        "max_abs_difference": diff, "max_relative_difference": rel, "equal_to_1e-5_absolute": diff <= 1e-5,
        "equal_to_1e-5_relative": rel <= 1e-5,
        "ours_seconds_median": round(float(np.median(ours_t)), 4),
        "art_seconds_median": round(float(np.median(art_t)), 4),
        "speedup_vs_art": round(float(np.median(art_t) / np.median(ours_t)), 3),
        "mean_interval_width": float((hi - lo).mean()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoothing-model", help="a noise-trained model folder (or zoo name); omit to skip")
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--n", type=int, default=20, help="points for smoothing")
    p.add_argument("--samples", type=int, default=100_000, help="N, estimation draws per point")
    p.add_argument("--batch-size", type=int, default=1000, help="noisy inputs per forward pass, both libraries")
    p.add_argument("--ibp-model", help="a model of Conv2d/Linear/ReLU/Flatten layers; omit to skip")
    p.add_argument("--ibp-n", type=int, default=1000)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    seed_global_rngs(0)
    test = load_dataset("mnist", "test")
    out: dict[str, Any] = {"machine": machine_info(args.threads), "libraries": library_versions()}
    if args.smoothing_model:
        x, y = test.x[: args.n], test.y[: args.n]
        out["smoothing"] = {"model": args.smoothing_model, **smoothing_part(_load(args.smoothing_model), x, y,
                                                                            args.sigma, args.samples, args.batch_size)}
    if args.ibp_model:
        out["ibp"] = {"model": args.ibp_model, **ibp_part(_load(args.ibp_model), test.x[: args.ibp_n], args.eps,
                                                          args.repeats)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
