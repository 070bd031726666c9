"""Shared pieces of the benchmarks: logging to stderr, machine facts, the model under test, the data,
timing, and the versions of the optional third-party libraries.

Benchmarks print one JSON object to stdout and their progress to stderr, so ``> result.json`` keeps the
numbers clean.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import squiggles
from squiggles.checkpoints import WEIGHTS, load_model, read_card
from squiggles.data import load_dataset

DEFAULT_MODEL_DIR = Path.home() / ".cache" / "squiggles" / "bench-models" / "madry-cnn-mnist-2ep"

# pip name and import name of each library the benchmarks compare against (the `bench` extra).
LIBRARIES = {
    "torchattacks": ("torchattacks", "torchattacks"),
    "foolbox": ("foolbox", "foolbox"),
    "art": ("adversarial-robustness-toolbox", "art"),
    "autoattack": ("pyautoattack", "pyautoattack"),
}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def machine_info(threads: int) -> dict[str, Any]:
    """What the timings depend on. The load average tells whether someone else was using the CPU."""
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "threads_requested": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "squiggles": squiggles.__version__,
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    with contextlib.suppress(ImportError):
        import numpy

        info["numpy"] = numpy.__version__
    return info


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def library_versions() -> dict[str, str]:
    """Each library's version, or ``"not installed: <reason>"`` (the import error says why)."""
    out = {}
    for key, (dist, module) in LIBRARIES.items():
        try:
            mod = importlib.import_module(module)
        except Exception as exc:  # any import failure means "cannot compare", whatever its kind
            out[key] = f"not installed: {type(exc).__name__}: {exc} (pip install --no-deps {dist})"
            continue
        out[key] = str(getattr(mod, "__version__", "unknown"))
    return out


def ensure_model(model_dir: str | None) -> tuple[nn.Module, dict[str, Any]]:
    """The model under test (eval mode) and facts about it.

    Without ``--model`` a madry-cnn trained for 2 epochs on MNIST is used, trained once into a cache folder.
    """
    path = Path(model_dir) if model_dir else DEFAULT_MODEL_DIR
    if model_dir is None and not (path / WEIGHTS).exists():
        from squiggles.train import TrainConfig, train_model

        log(f"no --model given: training madry-cnn on MNIST for 2 epochs into {path} (once)")
        config = TrainConfig(arch="madry-cnn", dataset="mnist", epochs=2, batch_size=128, seed=0)
        train_model(config, path, overwrite=True, progress=False, log=log)
    card = read_card(path)
    model = load_model(path).eval()
    info = {
        "dir": str(path),
        "arch": card.arch,
        "dataset": card.dataset,
        "bounds": list(card.bounds),
        "card_clean_accuracy": card.metrics.get("clean_accuracy"),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return model, info


def eval_data(dataset: str, n: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` test points (always the same ones, so runs compare)."""
    data = load_dataset(dataset, "test", progress=False)
    if n > len(data):
        raise SystemExit(f"--n {n} is larger than the {dataset} test set ({len(data)} points)")
    return data.x[:n].contiguous(), data.y[:n].contiguous()


def batches(x: Tensor, y: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    for i in range(0, len(x), batch_size):
        yield x[i : i + batch_size], y[i : i + batch_size]


def seed_global_rngs(seed: int = 0) -> None:
    """Libraries draw their random starts from the global RNGs (torch's, numpy's); seed both."""
    torch.manual_seed(seed)
    with contextlib.suppress(ImportError):
        import numpy

        numpy.random.seed(seed)


def interleaved_batches(
    fns: dict[str, Callable[[Tensor, Tensor], Any]],
    x: Tensor,
    y: Tensor,
    batch_size: int,
    repeats: int,
    warmup: int = 16,
) -> dict[str, tuple[list[Any], float]]:
    """Like `timed_batches` for several methods at once: batch by batch, each method in turn (the order rotating
    with the repeat), every batch ``repeats`` times; each method's time is the sum over batches of its best time
    on that batch, and its outputs are those of the first repeat.

    Interleaving at the batch level puts every method under the same drift of a shared machine, and the
    per-batch minimum drops the calls a neighbour disturbed (as `timeit` does).
    """
    for fn in fns.values():
        fn(x[:warmup], y[:warmup])
    names = list(fns)
    outs: dict[str, list[Any]] = {name: [] for name in names}
    best: dict[str, list[float]] = {name: [] for name in names}
    for b, (xb, yb) in enumerate(batches(x, y, batch_size)):
        for r in range(repeats):
            shift = (b + r) % len(names)
            for name in names[shift:] + names[:shift]:
                seed_global_rngs(b)
                start = time.perf_counter()
                out = fns[name](xb, yb)
                seconds = time.perf_counter() - start
                if r == 0:
                    outs[name].append(out)
                    best[name].append(seconds)
                else:
                    best[name][b] = min(best[name][b], seconds)
    return {name: (outs[name], sum(best[name])) for name in names}


def timed_batches(
    fn: Callable[[Tensor, Tensor], Any],
    x: Tensor,
    y: Tensor,
    batch_size: int,
    warmup: int = 16,
) -> tuple[list[Any], float]:
    """Run ``fn`` on every batch after one untimed warm-up call on ``warmup`` points; outputs and seconds.

    Only the calls are timed (slicing the data is not), summed over the batches. The global RNGs are
    seeded after the warm-up, so results do not depend on what the warm-up drew.
    """
    fn(x[:warmup], y[:warmup])
    seed_global_rngs(0)
    outs, seconds = [], 0.0
    for xb, yb in batches(x, y, batch_size):
        start = time.perf_counter()
        outs.append(fn(xb, yb))
        seconds += time.perf_counter() - start
    return outs, seconds


@contextlib.contextmanager
def frozen(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Parameters with ``requires_grad=False`` for the block (restored after), so a backward pass does no
    weight-gradient work; squiggles does this itself, the libraries are given the same advantage."""
    flags = [p.requires_grad for p in model.parameters()]
    if enabled:
        model.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)


@torch.no_grad()
def robust_accuracy(model: nn.Module, x_adv: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Accuracy on ``x_adv``, measured by us with one forward pass, whatever the library reported."""
    right = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in batches(x_adv, y, batch_size))
    return right / len(y)


def rate(n: int, seconds: float) -> float | None:
    return round(n / seconds, 2) if seconds > 0 else None
