"""The landmark experiments of the field, reproduced: ``squiggles experiment NAME --out DIR``.

Each experiment lives in its own module (``NAME``, ``TITLE``, ``PAPER``, ``Config`` with ``quick()``,
``run(ctx, config)``), writes ``results.json`` with the published figure beside ours, its figures, and
``report.html``. See `squiggles.experiments.base` for the common results fields.

Example:
    >>> from squiggles.experiments import EXPERIMENTS, run_experiment
    >>> sorted(EXPERIMENTS)
    ['fgsm-linear', 'nonrobust', 'spheres', 'transfer']
    >>> results = run_experiment("spheres", "runs/spheres", quick=True)   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from squiggles.errors import SquigglesError
from squiggles.experiments.base import Context, Logger, apply_overrides, check_out

# name -> module; imported only when the experiment runs, so `squiggles experiment --help` stays fast.
EXPERIMENTS: dict[str, str] = {
    "fgsm-linear": "squiggles.experiments.fgsm_linear",
    "spheres": "squiggles.experiments.spheres",
    "nonrobust": "squiggles.experiments.nonrobust",
    "transfer": "squiggles.experiments.transfer",
}


def get_experiment(name: str) -> ModuleType:
    if name not in EXPERIMENTS:
        raise SquigglesError(f"unknown experiment {name!r}; choose one of: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name])


def make_config(name: str, *, quick: bool = False, overrides: dict[str, Any] | None = None) -> Any:
    """The experiment's settings: its defaults (or ``--quick``'s), with ``overrides`` applied and checked."""
    module = get_experiment(name)
    config = module.Config.quick() if quick else module.Config()
    config = apply_overrides(config, overrides or {})
    if hasattr(config, "check"):
        config.check()
    return config


def run_experiment(
    name: str,
    out: str | Path,
    *,
    quick: bool = False,
    overrides: dict[str, Any] | None = None,
    dataset: str | None = None,
    test_dataset: str | None = None,
    data_dir: str | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    log: Logger = print,
) -> dict[str, Any]:
    """Run experiment ``name`` into ``out``; returns the results written to ``out/results.json``."""
    from squiggles.experiments.base import finish
    from squiggles.runtime import resolve_device

    start = time.perf_counter()
    module = get_experiment(name)
    config = make_config(name, quick=quick, overrides=overrides)
    out = Path(out)
    check_out(out, name)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(
        out=out,
        device=resolve_device(device),
        seed=seed,
        dataset=dataset or getattr(module, "DEFAULT_DATASET", "mnist"),
        test_dataset=test_dataset,
        data_dir=data_dir,
        quick=quick,
        progress=progress,
        log=log,
    )
    log(f"{module.TITLE} ({module.PAPER}){' [quick]' if quick else ''}")
    try:
        results = module.run(ctx, config)
    except BaseException:
        if created and not any(out.iterdir()):  # a run refused before writing anything leaves no folder behind
            out.rmdir()
        raise
    return finish(ctx, module, config, results, start)


__all__ = ["EXPERIMENTS", "Context", "get_experiment", "make_config", "run_experiment"]
