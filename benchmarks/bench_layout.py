"""Weight layout benchmark: a CNN's forward pass and its input gradient with contiguous (NCHW) weights and with
channels-last weights, as `squiggles.runtime.fast_layout` sets them for an evaluation; and the forward pass of
the frozen inference graph (`squiggles.frozen`) that the forward-only searches (label-only attacks, Square) use.

Usage:
    .venv/bin/python benchmarks/bench_layout.py [--model DIR] [--batch-size 235] [--threads 2] > layout.json

Prints microseconds per image for each layout (best of ``--repeats``) and the largest difference in logits.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
from _common import ensure_model, log, machine_info

from squiggles.checkpoints import read_card
from squiggles.frozen import inference_graph
from squiggles.runtime import fast_layout


def per_image_us(fn: Callable[[], object], n: int, repeats: int, reps: int) -> float:
    """Best over ``repeats`` of the mean time of ``reps`` calls, in microseconds per image."""
    fn()  # warm-up: oneDNN picks and caches its kernels on the first call
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - start) / reps)
    return 1e6 * best / n


def forward_backward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).sum(), x)
    return grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a squiggles model folder (default: the benchmark madry-cnn)")
    parser.add_argument("--batch-size", type=int, default=235, help="the robust points of one 250-point chunk")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, info = ensure_model(args.model)
    in_shape = read_card(info["dir"]).arch_kwargs.get("in_shape", (1, 28, 28))
    x = torch.rand(args.batch_size, *in_shape, generator=torch.Generator().manual_seed(0))
    out: dict[str, object] = {"benchmark": "layout", "model": info, "batch_size": args.batch_size,
                              **machine_info(args.threads)}
    with torch.no_grad():
        reference = model(x)
        out["forward_us_contiguous"] = per_image_us(lambda: model(x), len(x), args.repeats, 20)
    out["forward_backward_us_contiguous"] = per_image_us(lambda: forward_backward(model, x), len(x), args.repeats, 5)
    with fast_layout(model, x):
        with torch.no_grad():
            out["max_logit_difference"] = (model(x) - reference).abs().max().item()
            out["forward_us_channels_last"] = per_image_us(lambda: model(x), len(x), args.repeats, 20)
        out["forward_backward_us_channels_last"] = per_image_us(lambda: forward_backward(model, x), len(x),
                                                                args.repeats, 5)
        graph = inference_graph(model, x)
        out["frozen_graph_built"] = graph is not model
        with torch.no_grad():
            out["max_logit_difference_frozen"] = (graph(x) - reference).abs().max().item()
            out["forward_us_frozen"] = per_image_us(lambda: graph(x), len(x), args.repeats, 20)
    out["forward_speedup_frozen"] = out["forward_us_contiguous"] / out["forward_us_frozen"]
    log(f"forward: {out['forward_speedup_frozen']:.2f}x faster in the frozen graph")
    for kind in ("forward", "forward_backward"):
        out[f"{kind}_speedup"] = out[f"{kind}_us_contiguous"] / out[f"{kind}_us_channels_last"]
        log(f"{kind}: {out[f'{kind}_speedup']:.2f}x faster with channels-last weights")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
