"""What every reproduced experiment shares: its settings, the results folder, the models it trains, the page.

An experiment is a module with ``NAME``, ``TITLE``, ``PAPER``, a ``Config`` dataclass (whose ``quick()``
classmethod gives the settings of ``--quick``) and ``run(ctx, config) -> dict``. `run_experiment` checks
the folder, runs it, adds the common fields (kind, name, paper, config, timing, versions) and writes
``OUT/results.json``, figures in ``OUT/figures/`` and ``OUT/report.html``.

Every results file carries:

- ``kind`` ("experiment"), ``name``, ``title``, ``paper``, ``quick``,
- ``summary``: one or two sentences with our figure beside the published one,
- ``published``: the paper's figures, as records ``{"quantity", "published", "ours"}``,
- ``figures``: ``[{"path", "caption"}]`` relative to OUT,
- the experiment's own values and tables (lists of records),
- ``config``, ``wall_time_s``, ``versions``, ``device``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from squiggles.errors import SquigglesError

SCHEMA_VERSION = 1
Logger = Callable[[str], None]


@dataclass
class Context:
    """Where an experiment writes, on what it runs, and how it reports progress."""

    out: Path
    device: torch.device
    seed: int = 0
    dataset: str = "mnist"
    test_dataset: str | None = None
    data_dir: str | None = None
    quick: bool = False
    progress: bool = True
    log: Logger = print
    figures: list[dict[str, str]] = field(default_factory=list)

    @property
    def models_dir(self) -> Path:
        return self.out / "models"

    def figure(self, name: str, caption: str) -> Path:
        """The path to save figure ``name`` to; it is listed in the results with ``caption``."""
        path = self.out / "figures" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        self.figures = [f for f in self.figures if f["path"] != f"figures/{name}"]
        self.figures.append({"path": f"figures/{name}", "caption": caption})
        return path

    def generator(self, offset: int = 0, device: torch.device | None = None) -> torch.Generator:
        """A generator of its own (the global RNG is never used), one per purpose via ``offset``."""
        return torch.Generator(device=device or "cpu").manual_seed(1000 * self.seed + offset)


def load_data(ctx: Context) -> tuple[Any, Any]:
    """Train and test sets of ``ctx.dataset``: a built-in dataset's train/test splits (for MNIST the first
    50,000 training images; the last 10,000 are the validation split), or the user's tensor files (one file
    alone is split, its last 10% held out for testing)."""
    from squiggles.train.run import load_training_data

    return load_training_data(ctx.dataset, ctx.test_dataset, ctx.data_dir, ctx.progress)


# --- settings -------------------------------------------------------------------------------------------


def apply_overrides(config: Any, overrides: dict[str, Any]) -> Any:
    """``config`` with fields replaced by ``--set KEY=VALUE`` values; an unknown key names the known ones."""
    names = {f.name: f for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise SquigglesError(f"unknown setting(s) {', '.join(unknown)}; this experiment takes: {', '.join(names)}")
    changes = {}
    for key, value in overrides.items():
        current = getattr(config, key)
        changes[key] = _coerce(key, value, current)
    return dataclasses.replace(config, **changes)


def _coerce(key: str, value: Any, current: Any) -> Any:
    """A value of the same kind as the default (a single number becomes a one-element list for list settings)."""
    try:
        if isinstance(current, bool):
            if isinstance(value, bool):
                return value
            raise TypeError
        if isinstance(current, int) and not isinstance(current, bool):
            if float(value) != int(value):
                raise TypeError
            return int(value)
        if isinstance(current, float):
            return float(value)
        if isinstance(current, (list, tuple)):
            items = value if isinstance(value, list) else [value]
            kind = type(current[0]) if current else None
            return [kind(v) if kind in (int, float, str) else v for v in items]
        if current is None:  # an optional setting: any JSON value, checked by the experiment's check()
            return value
        if isinstance(current, str):
            return value if isinstance(value, str) else str(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise SquigglesError(f"setting {key}={json.dumps(value)} does not fit its default {json.dumps(current)}")


def config_json(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


# --- the results folder ---------------------------------------------------------------------------------


def check_out(out: Path, name: str) -> None:
    """An experiment rewrites its own folder, never someone else's: a non-empty folder must hold an earlier run
    of the same experiment."""
    if not out.exists() or not any(out.iterdir()):
        return
    try:
        data = json.loads((out / "results.json").read_text())
        earlier = (data.get("kind"), data.get("name"))
    except (OSError, ValueError, AttributeError):
        earlier = (None, None)
    if earlier != ("experiment", name):
        raise SquigglesError(
            f"{out} is not empty and holds no earlier {name} run (results.json of kind "
            "'experiment'); give an empty or new --out folder"
        )


def published_row(quantity: str, published: Any, ours: Any, note: str = "") -> dict[str, Any]:
    """One line of the paper-beside-ours table."""
    row = {"quantity": quantity, "published": published, "ours": ours}
    if note:
        row["note"] = note
    return row


# --- models ---------------------------------------------------------------------------------------------


def standard_model(
    ctx: Context,
    arch: str,
    epochs: int,
    *,
    lr: float = 1e-3,
    batch_size: int = 128,
    arch_kwargs: dict[str, Any] | None = None,
    tag: str | None = None,
) -> tuple[nn.Module, dict]:
    """A standard (non-adversarial) model of ``arch`` on ``ctx.dataset``, trained into ``OUT/models/TAG`` or
    reused from an earlier run of the same experiment when its card records every epoch of the same recipe.

    Returns the model (eval mode, on ``ctx.device``) and its card as a dict.
    """
    from squiggles.checkpoints import WEIGHTS, load_model, read_card
    from squiggles.train import TrainConfig, train_model

    config = TrainConfig(arch=arch, dataset=ctx.dataset, epochs=epochs, lr=lr, batch_size=batch_size, seed=ctx.seed)
    folder = ctx.models_dir / (tag or arch)
    if (folder / WEIGHTS).is_file() and _same_recipe(read_card(folder), config, arch_kwargs):
        ctx.log(f"  reusing {folder.name} trained by an earlier run ({folder})")
    else:
        ctx.log(f"  training {folder.name}: {arch}, {epochs} epoch(s) on {ctx.dataset}")
        train_model(
            config,
            folder,
            test_dataset=ctx.test_dataset,
            data_dir=ctx.data_dir,
            arch_kwargs=arch_kwargs,
            device=str(ctx.device),
            overwrite=True,
            final_eval=None,
            progress=ctx.progress,
            log=_indent(ctx.log),
        )
    return load_model(folder, ctx.device).eval(), read_card(folder).to_dict()


def _same_recipe(card: Any, config: Any, arch_kwargs: dict[str, Any] | None) -> bool:
    recipe = card.recipe or {}
    wanted = config.to_dict()
    same = all(recipe.get(k) == wanted[k] for k in ("arch", "dataset", "epochs", "lr", "batch_size", "seed"))
    kwargs_match = all(
        card.arch_kwargs.get(k) == (list(v) if isinstance(v, tuple) else v) for k, v in (arch_kwargs or {}).items()
    )
    finished = len(card.metrics.get("history", [])) >= config.epochs
    return same and kwargs_match and finished


def model_ref(ctx: Context, ref: str) -> tuple[nn.Module, dict[str, Any]]:
    """The user's model: a zoo name, a model folder, or ``package.module:factory@weights.safetensors``."""
    from squiggles.demo.models import load_ref

    model, source = load_ref(ref, ctx.models_dir, retrain=False, device=ctx.device, log=ctx.log, progress=ctx.progress)
    return model.eval(), source


def check_model_fits(model: nn.Module, x: torch.Tensor, num_classes: int, what: str) -> None:
    """A model must take the data's inputs and give one score per class, before any time is spent."""
    try:
        with torch.no_grad():
            out = model(x[:2])
    except RuntimeError as exc:
        raise SquigglesError(
            f"{what} cannot take inputs of shape {tuple(x.shape[1:])} "
            f"({str(exc).splitlines()[0]}); give a model trained on this data"
        ) from None
    if out.dim() != 2 or out.shape[1] != num_classes:
        raise SquigglesError(f"{what} gives outputs of shape {tuple(out.shape[1:])}, not {num_classes} class scores")


def _indent(log: Logger) -> Logger:
    return lambda message: log(f"    {message}")


# --- running one ----------------------------------------------------------------------------------------


def finish(ctx: Context, module: Any, config: Any, results: dict[str, Any], start: float) -> dict[str, Any]:
    """Add the common fields, write ``results.json`` and ``report.html``; returns the full results."""
    from squiggles._io import versions, write_json
    from squiggles.report.html import write_report

    full: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "kind": "experiment",
        "name": module.NAME,
        "title": module.TITLE,
        "paper": module.PAPER,
        "quick": ctx.quick,
        **results,
        "figures": ctx.figures,
        "config": config_json(config),
        "seed": ctx.seed,
        "dataset": results.get("dataset", ctx.dataset),
        "device": str(ctx.device),
        "wall_time_s": round(time.perf_counter() - start, 2),
        "versions": versions(),
    }
    write_json(ctx.out / "results.json", full)
    full["report"] = str(write_report(ctx.out, overwrite=False))
    return full
