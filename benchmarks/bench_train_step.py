"""Training-step benchmark: one adversarial training step (attack, loss, update) in float32 and under bfloat16
autocast (`squiggles train --precision bf16`), for `small-cnn` at several widths.

Usage:
    .venv/bin/python benchmarks/bench_train_step.py [--method trades] [--steps 10] [--widths 2 3 4] > step.json

Prints milliseconds per step (best of ``--repeats`` means over ``--reps`` steps) and the bf16 speed-up per width.
bfloat16 pays off on CPUs with AVX512-BF16 or AMX and on recent GPUs; elsewhere it can be slower.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _common import log, machine_info

from squiggles.models import build_model
from squiggles.train.loop import autocast
from squiggles.train.methods import StepContext, make_method


def step_ms(width: int, precision: str, args: argparse.Namespace) -> float:
    """Best over ``repeats`` of the mean wall time of one training step, in milliseconds."""
    torch.manual_seed(0)
    model = build_model("small-cnn", width=width)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    method = make_method(args.method, eps=0.3, steps=args.steps)
    x = torch.rand(args.batch_size, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch_size,))
    ctx = StepContext(epoch=0, progress=0.5, generator=torch.Generator().manual_seed(0), bounds=(0.0, 1.0))

    def one_step() -> None:
        model.train()
        with autocast(x.device, precision):
            loss, _ = method(model, x, y, ctx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):  # warm-up: oneDNN picks and caches its kernels on the first calls
        one_step()
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.reps):
            one_step()
        best = min(best, (time.perf_counter() - start) / args.reps)
    return 1e3 * best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=("trades", "pgd"), default="trades")
    parser.add_argument("--steps", type=int, default=10, help="attack steps per training step")
    parser.add_argument("--widths", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out: dict[str, object] = {"benchmark": "train_step", "method": args.method, "attack_steps": args.steps,
                              "batch_size": args.batch_size, **machine_info(args.threads), "widths": {}}
    for width in args.widths:
        row = {p: step_ms(width, p, args) for p in ("fp32", "bf16")}
        row["bf16_speedup"] = row["fp32"] / row["bf16"]
        out["widths"][str(width)] = row  # type: ignore[index]
        log(f"width {width}: fp32 {row['fp32']:.1f} ms, bf16 {row['bf16']:.1f} ms ({row['bf16_speedup']:.2f}x)")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
