"""``run_demo``: the main job, stage by stage, into one results folder.

Stages: load (or train) the models; evaluate the standard and robust models with the cascade over a range of
budgets; the squiggles figure; the wormholes experiment; the report. Every stage is timed and its numbers go
to ``OUT/results.json``, its pictures to ``OUT/figures/``, and the page to ``OUT/report.html``.

Example:
    >>> from squiggles.demo import DemoConfig, run_demo   # doctest: +SKIP
    >>> results = run_demo(DemoConfig(out="demo-out"))     # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from squiggles.demo.models import DEFAULT_OBSERVERS, DEFAULT_ROLES, Cast, load_cast
from squiggles.errors import SquigglesError

SCHEMA_VERSION = 1
ROLE_NAMES = {"standard": "standard model", "robust": "robust model (L-inf)", "l2": "robust model (L2)"}


@dataclass
class DemoConfig:
    """What the demo runs on and how much work each stage does (defaults: MNIST, about 2 minutes on 2 cores)."""

    out: str | Path = "demo-out"
    dataset: str = "mnist"
    data_dir: str | None = None
    roles: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ROLES))
    observers: list[str] = field(default_factory=lambda: list(DEFAULT_OBSERVERS))
    retrain: bool = False
    # Evaluation: the standard and L-inf robust models, `quick` cascade, an L-inf curve on the first test points.
    eval_n: int = 100
    eval_eps: list[float] = field(default_factory=lambda: [0.1, 0.15, 0.2, 0.3])
    attacks: str = "quick"
    # The squiggles figure: targeted L2 attacks on a few digits toward every other class.
    digits: int = 3
    budgets: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0, 4.0])
    squiggle_steps: int = 60
    # Wormholes: targeted L2 attacks on test points after the evaluation's, shown to the observers.
    wormhole_n: int = 100
    wormhole_budgets: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    wormhole_steps: int = 40
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def check(self) -> None:
        """Refuse settings that cannot work before spending any time."""
        missing = [r for r in ("standard", "robust", "l2") if r not in self.roles]
        if missing:
            raise SquigglesError(f"the demo needs a model for each role; missing: {', '.join(missing)}")
        if not self.observers:
            raise SquigglesError("the wormholes stage needs at least one observer model")
        for name, value in (("eval_n", self.eval_n), ("digits", self.digits), ("wormhole_n", self.wormhole_n)):
            if value < 1:
                raise SquigglesError(f"{name} must be >= 1, got {value}")
        if not self.eval_eps or any(e <= 0 for e in self.eval_eps):
            raise SquigglesError(f"eval eps must be positive, got {self.eval_eps}")
        if not self.budgets or any(b <= 0 for b in self.budgets):
            raise SquigglesError(f"squiggles budgets must be positive, got {self.budgets}")
        if any(b < 0 for b in self.wormhole_budgets) or not self.wormhole_budgets:
            raise SquigglesError(f"wormhole budgets must be >= 0, got {self.wormhole_budgets}")


class _Stages:
    """Numbered stage headers with their timings, on the log."""

    def __init__(self, total: int, log: Callable[[str], None]) -> None:
        self.total, self.log, self.k, self.seconds = total, log, 0, {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        self.k += 1
        self.log(f"[{self.k}/{self.total}] {name}")
        start = time.perf_counter()
        out = fn()
        self.seconds[name] = round(time.perf_counter() - start, 2)
        self.log(f"[{self.k}/{self.total}] {name}: done in {self.seconds[name]:.1f}s")
        return out


def run_demo(config: DemoConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every stage; write ``results.json``, the figures and ``report.html`` into ``config.out``."""
    from squiggles._io import versions, write_json
    from squiggles.runtime import resolve_device

    config.check()
    start = time.perf_counter()
    out = Path(config.out)
    _check_out(out)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    stages = _Stages(5, log)
    test, cast = stages.run("data and models", lambda: (_load_data(config), load_cast(
        config.roles, config.observers, out / "models", retrain=config.retrain, device=device, log=log,
        progress=config.progress)))
    _check_fit(cast, test, device)
    results: dict[str, Any] = {"schema": SCHEMA_VERSION, "kind": "demo", "name": f"squiggles demo on {config.dataset}",
                               "dataset": config.dataset,
                               "config": _config_json(config), "models": _model_json(cast)}
    results["evaluation"] = stages.run("evaluation", lambda: _evaluation(config, cast, test, device, figures))
    results["squiggles"] = stages.run("squiggles figure", lambda: _squiggles(config, cast, test, device, figures))
    results["wormholes"] = stages.run("wormholes", lambda: _wormholes(config, cast, test, device, figures))
    # The page is rendered from results.json, so the report stage's own time is not in it.
    results.update(stage_seconds=dict(stages.seconds), wall_time_s=round(time.perf_counter() - start, 2),
                   versions=versions(), device=str(device))
    write_json(out / "results.json", results)
    from squiggles.report.html import write_report

    results["report"] = str(stages.run("report", lambda: write_report(out, overwrite=False)))
    return results


def _check_out(out: Path) -> None:
    """The demo rewrites its own folder, never someone else's: a non-empty folder must hold an earlier demo."""
    import json

    if not out.exists() or not any(out.iterdir()):
        return
    try:
        kind = json.loads((out / "results.json").read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        kind = None
    if kind != "demo":
        raise SquigglesError(f"{out} is not empty and holds no earlier demo (results.json of kind 'demo'); "
                             "give an empty or new --out folder")


def _check_fit(cast: Cast, test: Any, device: torch.device) -> None:
    """Each model must take the dataset's inputs and give one score per class, before any time is spent."""
    x = test.x[:2].to(device)
    models = {**cast.models, **{f"observer-{k + 1}": m for k, m in enumerate(cast.observers)}}
    for role, model in models.items():
        ref = cast.sources[role]["ref"]
        try:
            with torch.no_grad():
                out = model(x)
        except RuntimeError as exc:
            raise SquigglesError(f"the {role} model ({ref}) cannot take {test.name} inputs of shape "
                                 f"{tuple(test.x.shape[1:])} ({str(exc).splitlines()[0]}); give a model trained "
                                 f"on this data with --{role.split('-')[0]}") from None
        if out.dim() != 2 or out.shape[1] != test.num_classes:
            raise SquigglesError(f"the {role} model ({ref}) gives outputs of shape {tuple(out.shape[1:])}, "
                                 f"not {test.num_classes} class scores for {test.name}")


def _load_data(config: DemoConfig) -> Any:
    from squiggles.data import load_dataset, load_tensors

    if config.dataset.endswith((".npz", ".safetensors")) or Path(config.dataset).is_file():
        return load_tensors(config.dataset)
    return load_dataset(config.dataset, "test", data_dir=config.data_dir, progress=config.progress)


def _config_json(config: DemoConfig) -> dict[str, Any]:
    data = asdict(config)
    data["out"] = str(config.out)
    return data


def _model_json(cast: Cast) -> dict[str, Any]:
    return {role: {**src, "title": ROLE_NAMES.get(role, role)} for role, src in cast.sources.items()}


def _evaluation(config: DemoConfig, cast: Cast, test: Any, device: torch.device, figures: Path) -> dict[str, Any]:
    """The cascade over ``eval_eps`` (L-inf) on the standard and the L-inf robust model, and one plot of both."""
    from squiggles.evaluation import evaluate
    from squiggles.report.figures import eps_curve
    from squiggles.threat import Linf

    data = test.subset(min(config.eval_n, len(test)))
    out: dict[str, Any] = {}
    for role in ("standard", "robust"):
        res = evaluate(cast.models[role], data, Linf(config.eval_eps[0], test.bounds), config.attacks,
                       eps=config.eval_eps, batch_size=500, seed=config.seed, keep_adv=False,
                       progress=config.progress, device=device)
        out[role] = res.to_json()
    curves = {ROLE_NAMES[r]: ([c["eps"] for c in out[r]["curve"]], [c["robust_accuracy"] for c in out[r]["curve"]])
              for r in out}
    eps_curve(figures / "eps-curve.png", curves, "linf", f"{config.attacks} cascade, first {len(data)} test points")
    return {"roles": out, "figure": "figures/eps-curve.png", "points": len(data)}


def _squiggles(config: DemoConfig, cast: Cast, test: Any, device: torch.device, figures: Path) -> dict[str, Any]:
    """Targeted L2 attacks on fixed digits toward every class, on the standard and the L2 robust model."""
    from squiggles.demo.figure12 import draw_grid, draw_perturbations, pick_digits, targeted_grid

    idx = pick_digits(test.y, config.digits)
    x, y = test.x[idx].to(device), test.y[idx]
    grids, out = {}, {"indices": idx, "labels": y.tolist(), "budgets": config.budgets, "models": {}}
    for role in ("standard", "l2"):
        grid = targeted_grid(cast.models[role], x, y, config.budgets, test.num_classes,
                             steps=config.squiggle_steps, seed=config.seed, bounds=test.bounds)
        grids[ROLE_NAMES[role]] = grid
        name = f"squiggles-{role}.png"
        draw_grid(grid, figures / name, f"{ROLE_NAMES[role]}: targeted L2 attacks toward each class")
        out["models"][role] = {"figure": f"figures/{name}", "per_budget": grid.summary()}
    draw_perturbations(grids, figures / "squiggles-perturbations.png")
    out["perturbations_figure"] = "figures/squiggles-perturbations.png"
    return out


def _wormholes(config: DemoConfig, cast: Cast, test: Any, device: torch.device, figures: Path) -> dict[str, Any]:
    """Attacks against the standard and the L2 robust model, and random noise, judged by the observers."""
    from squiggles.demo.wormholes import RANDOM, describe, draw, wormholes
    from squiggles.goals import random_other

    # Points after the evaluation's, so the two stages do not share images.
    start = min(config.eval_n, max(len(test) - config.wormhole_n, 0))
    data = test.subset(min(config.wormhole_n, len(test) - start), start)
    targets = random_other(data.y, test.num_classes, torch.Generator().manual_seed(config.seed))
    surrogates = {"standard": cast.models["standard"], "robust": cast.models["l2"]}
    rows = wormholes(surrogates, cast.observers, data.x.to(device), data.y.to(device), targets.to(device),
                     config.wormhole_budgets, steps=config.wormhole_steps, seed=config.seed, bounds=test.bounds)
    labels = {"standard": f"(a) against the {ROLE_NAMES['standard']}",
              "robust": f"(b) against the {ROLE_NAMES['l2']}", RANDOM: "(c) random, same norm"}
    draw(rows, figures / "wormholes.png", labels)
    return {"rows": rows, "labels": labels, "points": len(data), "start": start, "observers": len(cast.observers),
            "figure": "figures/wormholes.png", "summary": describe(rows, "robust", "standard")}
