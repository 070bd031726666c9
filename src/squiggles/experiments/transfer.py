"""Transferability (Papernot et al. 2016, arXiv 1605.07277; Tramèr et al. 2017, arXiv 1704.03453): adversarial
examples crafted on one model often fool another, but rarely an adversarially trained one.

Standard models of several architectures (trained here, or the user's ``--model`` REFs) and robust ones (the
zoo's, or ``--robust`` REFs) each serve as the source of untargeted PGD and FGSM examples at one L∞ budget;
every model is then the target. The matrices of transfer rates (`transfer_analysis.transfer_rates`) and their
heat maps are the result; the diagonal is white-box.

Example:
    >>> config = Config.quick()
    >>> config.check()
    >>> config.n, config.archs
    (200, ['linear', 'mlp', 'small-cnn'])
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from squiggles.errors import SquigglesError
from squiggles.experiments.base import Context, check_model_fits, load_data, model_ref, standard_model
from squiggles.experiments.transfer_analysis import (
    accuracy_rows,
    as_number,
    block_mean,
    block_rows,
    draw_heatmap,
    matrix_records,
    off_diagonal_means,
    published_rows,
    transfer_rates,
)

NAME = "transfer"
TITLE = "Transferability of adversarial examples between models"
PAPER = "Papernot et al. 2016, arXiv 1605.07277; Tramèr et al. 2017, arXiv 1704.03453"
DEFAULT_DATASET = "mnist"
DEFAULT_ARCHS = ["linear", "mlp", "small-cnn", "madry-cnn", "trades-cnn"]
DEFAULT_ROBUST = ["mnist-linf-0.3", "mnist-l2-2.0"]
ATTACKS = ("pgd", "fgsm")


@dataclass
class Config:
    """Defaults: five standard architectures, two epochs each, the zoo's two robust MNIST models, and Madry
    et al.'s evaluation attack (L∞ eps 0.3, PGD-40 with step 0.01) on 1,000 test points."""

    models: list[str] = field(default_factory=list)  # REFs replacing the trained standard models
    archs: list[str] = field(default_factory=lambda: list(DEFAULT_ARCHS))
    epochs: int = 2
    lr: float = 1e-3
    robust_models: list[str] = field(default_factory=lambda: list(DEFAULT_ROBUST))
    eps: float = 0.3
    steps: int = 40
    step_size: float = 0.01
    n: int = 1000
    batch_size: int = 500

    @classmethod
    def quick(cls) -> Config:
        """Three small architectures, 200 points, PGD-10: seconds on scikit-learn's digits."""
        return cls(archs=["linear", "mlp", "small-cnn"], epochs=4, lr=1e-2, n=200, steps=10, step_size=0.075)

    def check(self) -> None:
        from squiggles.models import MODELS

        unknown = [a for a in self.archs if a not in MODELS]
        problems = [
            (not self.models and not self.archs, "give at least one standard model: archs or --model"),
            (bool(unknown), f"unknown arch(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}"),
            (self.epochs < 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.lr <= 0, f"lr must be > 0, got {self.lr}"),
            (not 0 < self.eps, f"eps must be > 0, got {self.eps}"),
            (self.steps < 1, f"steps must be >= 1, got {self.steps}"),
            (self.step_size <= 0, f"step_size must be > 0, got {self.step_size}"),
            (self.n < 1, f"n must be >= 1, got {self.n}"),
            (self.batch_size < 1, f"batch_size must be >= 1, got {self.batch_size}"),
        ]
        for bad, message in problems:
            if bad:
                raise SquigglesError(f"transfer: {message}")


@dataclass
class Member:
    """One model of the matrix: its name, role (standard or robust), network, and where it came from."""

    name: str
    robust: bool
    model: nn.Module
    source: dict[str, Any]

    @property
    def arch(self) -> str:
        card = self.source.get("card") or {}
        return str(card.get("arch") or self.source.get("arch") or "?")


# --- the cast ------------------------------------------------------------------------------------------


def ref_name(ref: str) -> str:
    """A short name for a REF: the zoo name, the folder's name, or the factory's name."""
    from squiggles.demo.models import parse_ref
    from squiggles.models import is_import_path

    target, _ = parse_ref(ref)
    if is_import_path(target):
        return target.rpartition(":")[2]
    return Path(target).name or target


def unique(names: list[str]) -> list[str]:
    """``names`` with repeats numbered (``a``, ``a-2``, ...), so every row and column has its own label."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def load_refs(ctx: Context, refs: list[str], robust: bool, data: Any, notes: list[str]) -> list[Member]:
    """The user's (or the zoo's) models, each checked against the data before any time is spent on it."""
    members = []
    for ref in refs:
        model, source = model_ref(ctx, ref)
        check_model_fits(model, data.x.to(ctx.device), data.num_classes, f"{'robust ' if robust else ''}model {ref}")
        trained_on = (source.get("card") or {}).get("dataset")
        if trained_on and trained_on != data.name:
            notes.append(f"{ref} was trained on {trained_on}, not on {data.name}: its accuracy may be low.")
        members.append(Member(ref_name(ref), robust, model, source))
    return members


def robust_refs(ctx: Context, config: Config, notes: list[str]) -> list[str]:
    """The robust models to load: the zoo's MNIST models fit only MNIST, so elsewhere they are left out
    (with a note) unless the user names robust models of their own with ``--robust``."""
    if config.robust_models == DEFAULT_ROBUST and ctx.dataset != "mnist":
        notes.append(
            f"No robust model in this run: the zoo's robust models ({', '.join(DEFAULT_ROBUST)}) are "
            f"MNIST models and {ctx.dataset} is not MNIST; pass --robust REF (repeatable) to add robust "
            "models trained on it."
        )
        return []
    return list(config.robust_models)


def standard_members(ctx: Context, config: Config, data: Any, notes: list[str]) -> list[Member]:
    """The user's ``--model`` REFs, or one standard model per arch trained here (reused on a rerun)."""
    if config.models:
        return load_refs(ctx, config.models, False, data, notes)
    members = []
    for arch in config.archs:
        model, card = standard_model(ctx, arch, config.epochs, lr=config.lr)
        source = {"ref": arch, "kind": "trained here", "card": card, "arch": arch}
        members.append(Member(arch, False, model, source))
    return members


# --- attacks and predictions ---------------------------------------------------------------------------


@torch.no_grad()
def correct_on(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> Tensor:
    """Per point: ``model`` classifies ``x`` as ``y`` (a bool tensor on the CPU)."""
    from squiggles.runtime import predict

    return (predict(model, x, batch_size).argmax(1) == y).cpu()


def craft(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attack: str,
    config: Config,
    gen: torch.Generator,
    bounds: tuple[float, float],
) -> Tensor:
    """Untargeted L∞ examples crafted on ``model`` (the source), in batches. PGD keeps, per point, the
    iterate that fools the source with the highest loss, the most confident mistake it found."""
    from squiggles.attacks import fgsm, pgd
    from squiggles.threat import Linf

    threat = Linf(config.eps, bounds)
    parts = []
    for i in range(0, len(x), config.batch_size):
        xb, yb = x[i : i + config.batch_size], y[i : i + config.batch_size]
        if attack == "pgd":
            result = pgd(model, xb, yb, threat, steps=config.steps, step_size=config.step_size, seed=gen)
        else:
            result = fgsm(model, xb, yb, threat)
        parts.append(result.x_adv)
    return torch.cat(parts)


def attack_all(
    ctx: Context, members: list[Member], x: Tensor, y: Tensor, config: Config, bounds: tuple[float, float]
) -> dict[str, Tensor]:
    """Per attack, the M x M x N table: target t classifies the example crafted on source s correctly."""
    m = len(members)
    adv_correct = {a: torch.zeros(m, m, len(x), dtype=torch.bool) for a in ATTACKS}
    for s, source in enumerate(tqdm(members, desc="transfer", unit="source", disable=not ctx.progress)):
        start = time.perf_counter()
        for k, attack in enumerate(ATTACKS):
            x_adv = craft(source.model, x, y, attack, config, ctx.generator(10 * s + k, ctx.device), bounds)
            for t, target in enumerate(members):
                adv_correct[attack][s, t] = correct_on(target.model, x_adv, y, config.batch_size)
        white = {a: 1 - adv_correct[a][s, s].float().mean().item() for a in ATTACKS}
        ctx.log(
            f"  source {source.name}: error on its own PGD {white['pgd']:.1%}, FGSM {white['fgsm']:.1%} "
            f"({time.perf_counter() - start:.0f}s)"
        )
    return adv_correct


# --- the experiment ------------------------------------------------------------------------------------


def run(ctx: Context, config: Config) -> dict[str, Any]:
    """Load or train the models, attack from each, score on each, and write the matrices and heat maps."""
    notes: list[str] = []
    _, test = load_data(ctx)
    data = test.subset(min(config.n, len(test)))
    x, y = data.x.to(ctx.device), data.y.to(ctx.device)
    # Robust REFs first: a model that does not fit is refused before any standard model is trained.
    robust = load_refs(ctx, robust_refs(ctx, config, notes), True, data, notes)
    members = standard_members(ctx, config, data, notes) + robust
    if len(members) < 2:
        raise SquigglesError("transfer needs at least two models; add --model or --robust REFs")
    for member, name in zip(members, unique([m.name for m in members]), strict=True):
        member.name = name
    correct = torch.stack([correct_on(m.model, x, y, config.batch_size) for m in members])
    ctx.log(f"  {len(members)} models, {len(x)} points: crafting PGD-{config.steps} and FGSM at L-inf eps {config.eps}")
    adv_correct = attack_all(ctx, members, x, y, config, data.bounds)
    rates = {a: transfer_rates(correct, adv_correct[a]) for a in ATTACKS}
    names = [m.name for m in members]
    is_robust = torch.tensor([m.robust for m in members])
    for attack in ATTACKS:
        draw_heatmap(
            ctx.figure(f"transfer_{attack}.png", _caption(attack, config)),
            rates[attack],
            names,
            is_robust.tolist(),
            f"{attack.upper()} transfer rates, L∞ eps {config.eps:g}, {data.name}",
        )
    accuracy = {a: adv_correct[a].float().mean(-1) for a in ATTACKS}  # S x T, over all points
    blocks = block_rows(rates, is_robust)
    budget = f"eps {config.eps:g}, PGD-{config.steps} step {config.step_size:g}, {len(x)} points"
    return {
        "summary": summary(members, rates, accuracy, config, len(x), data.name),
        "description": description(members, config, len(x), data.name),
        "notes": notes + robust_notes(members, rates),
        "published": published_rows(names, is_robust.tolist(), [m.arch for m in members], accuracy, budget),
        "dataset": data.name,
        "eps": config.eps,
        "points": len(x),
        **{f"{r['attack']}_{r['from']}_to_{r['to']}": r["mean_rate"] for r in blocks},
        "models": model_rows(members, correct, rates),
        "transfer_pgd": matrix_records(rates["pgd"], names),
        "transfer_fgsm": matrix_records(rates["fgsm"], names),
        "accuracy_under_attack": accuracy_rows(accuracy, names),
        "blocks": blocks,
    }


# --- tables and text -----------------------------------------------------------------------------------


def model_rows(members: list[Member], correct: Tensor, rates: dict[str, Tensor]) -> list[dict[str, Any]]:
    """Each model: clean accuracy, white-box success, and its mean rate as a source (out) and target (in)."""
    means = {a: off_diagonal_means(r) for a, r in rates.items()}
    rows = []
    for i, member in enumerate(members):
        row: dict[str, Any] = {
            "model": member.name,
            "role": "robust" if member.robust else "standard",
            "arch": member.arch,
            "from": member.source.get("kind", "?"),
            "clean_accuracy": as_number(correct[i].float().mean().item()),
        }
        for attack, (out, into) in means.items():
            row[f"{attack}_white_box"] = as_number(rates[attack][i, i].item())
            row[f"{attack}_transfer_out"] = as_number(out[i].item())
            row[f"{attack}_transfer_in"] = as_number(into[i].item())
        rows.append(row)
    return rows


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}%"


def summary(
    members: list[Member], rates: dict[str, Tensor], accuracy: dict[str, Tensor], config: Config, n: int, dataset: str
) -> str:
    """Our headline numbers, the published one beside them."""
    standard = torch.tensor([not m.robust for m in members])
    robust = [i for i, m in enumerate(members) if m.robust]

    def both(rows: Tensor, cols: Tensor) -> str:
        return f"{_pct(block_mean(rates['pgd'], rows, cols))} (FGSM {_pct(block_mean(rates['fgsm'], rows, cols))})"

    text = (
        f"At L∞ eps {config.eps:g} on {n} {dataset} test points, PGD examples crafted on one standard model fool "
        f"another standard model {both(standard, standard)} of the time."
    )
    if not robust:
        return text + " No robust model was in this run."
    for r in robust:
        one = torch.arange(len(members)) == r
        text += (
            f" Into {members[r].name}: {both(standard, one)}; from it into the standard models: {both(one, standard)}."
        )
    madry = next((i for i, m in enumerate(members) if not m.robust and m.arch == "madry-cnn"), None)
    if madry is not None:
        text += (
            f" {members[robust[0]].name} keeps {_pct(accuracy['pgd'][madry, robust[0]].item())} accuracy under "
            f"PGD crafted on the standard {members[madry].name} (published: 96.8% for Madry et al.'s model under "
            "PGD from the MNIST challenge's natural net)."
        )
    return text


def robust_notes(members: list[Member], rates: dict[str, Tensor]) -> list[str]:
    """What to keep in mind when reading the robust rows and columns."""
    notes = []
    for i, member in enumerate(members):
        white_box = rates["pgd"][i, i].item()
        if not member.robust or math.isnan(white_box):
            continue
        if white_box > 0.5:
            notes.append(
                f"{member.name} is not robust at this budget: white-box PGD fools it on {_pct(white_box)} of "
                f"the points it classifies correctly ({_trained_against(member.source)}), so examples "
                "transfer into it as into a standard model."
            )
        else:
            notes.append(
                f"White-box PGD fools {member.name} on only {_pct(white_box)} of its points: most examples "
                "crafted on it do not fool it either, yet its row counts every point both models classify "
                "correctly, as Papernot et al. count every example crafted on the source."
            )
    return notes


def _trained_against(source: dict[str, Any]) -> str:
    """The threat a model was adversarially trained against, as its card records it."""
    recipe = (source.get("card") or {}).get("recipe") or {}
    if recipe.get("method") in (None, "standard"):
        return "its card records no adversarial training"
    options = {**(recipe.get("method_defaults") or {}), **(recipe.get("method_options") or {})}
    return f"it was trained with {recipe['method']} at {options.get('norm', '?')} eps {options.get('eps', '?')}"


def description(members: list[Member], config: Config, n: int, dataset: str) -> str:
    """What was done, with the budget and the rate's definition."""
    standard = [m for m in members if not m.robust]
    robust = [m.name for m in members if m.robust]
    trained = all(m.source.get("kind") == "trained here" for m in standard)
    made = (
        f"trained here without attacks ({config.epochs} epoch(s) each, Adam, one-cycle peak lr {config.lr:g})"
        if trained
        else "given with --model"
    )
    return (
        f"Standard models ({', '.join(m.name for m in standard)}) {made}; robust models: "
        f"{', '.join(robust) or 'none'}. On the first {n} {dataset} test points we crafted untargeted adversarial "
        f"examples on each model (the source) with PGD ({config.steps} steps of {config.step_size:g}, random "
        "start, cross-entropy, keeping per point the iterate that fools the source with the highest loss) and "
        f"with FGSM (one step of eps), both at L∞ eps {config.eps:g}, and classified them with every model (the "
        "target). The transfer rate from s to t is, among the test points that both s and t classify correctly, "
        "the share whose example crafted on s is misclassified by t; the diagonal is the white-box success rate. "
        "Row means (how well a source's examples transfer) and column means (how vulnerable a target is) leave "
        "out the diagonal. Eps 0.3 with PGD-40 of step 0.01 is Madry et al.'s MNIST budget and attack: the budget "
        "the zoo's L∞ model was trained for and the one the published black-box figures use."
    )


def _caption(attack: str, config: Config) -> str:
    attack_text = f"PGD-{config.steps} (step {config.step_size:g})" if attack == "pgd" else "FGSM"
    return (
        f"{attack_text} at L∞ eps {config.eps:g}: percentage of the points both models classify correctly "
        "whose example crafted on the row's model fools the column's model; the boxed diagonal is white-box."
    )
