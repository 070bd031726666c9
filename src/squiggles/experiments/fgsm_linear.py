"""FGSM and the linearity explanation (Goodfellow, Shlens, Szegedy 2014, arXiv 1412.6572).

Softmax regression, an MLP and the Madry CNN are trained on MNIST and attacked with one signed-gradient
step (FGSM) at eps 0.25 and over a sweep of budgets, on the whole test set. The paper: "using eps = .25, we
cause a shallow softmax classifier to have an error rate of 99.9% with an average confidence of 79.3% on the
MNIST test set"; a maxout network misclassifies 89.4% with an average confidence of 97.6%. Its explanation
is linearity: a linear score moves by ``eps * ||w||_1`` under ``eps * sign(w)``, which is large in 784
dimensions although no pixel moves by more than eps.

Example:
    >>> from squiggles.experiments import run_experiment
    >>> results = run_experiment("fgsm-linear", "runs/fgsm", quick=True)   # doctest: +SKIP
    >>> results["published"][0]["quantity"]                                  # doctest: +SKIP
    'softmax regression: FGSM error rate at eps 0.25 (%)'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from squiggles.errors import SquigglesError
from squiggles.experiments.base import (
    Context,
    check_model_fits,
    load_data,
    model_ref,
    published_row,
    standard_model,
)
from squiggles.experiments.fgsm_linear_analysis import (
    Sweep,
    draw_examples,
    draw_linearity,
    draw_sweep,
    fgsm_step,
    fgsm_sweep,
    is_softmax_regression,
    library_agreement,
    linearity_rows,
    loss_grad,
    margin_rows,
    model_row,
    sweep_rows,
)

NAME = "fgsm-linear"
TITLE = "FGSM breaks linear-ish models"
PAPER = "Goodfellow, Shlens, Szegedy 2014, arXiv 1412.6572"
DEFAULT_DATASET = "mnist"

PAPER_EPS = 0.25  # the paper's MNIST budget
MADRY_EPS = 0.3  # Madry et al. 2017 (arXiv 1706.06083) report FGSM on their naturally trained CNN at 0.3
# The published figures, in %: the paper's §4 (MNIST, eps .25), and Madry et al.'s natural CNN under FGSM at 0.3.
SOFTMAX_ERROR, SOFTMAX_CONFIDENCE = 99.9, 79.3
MAXOUT_ERROR, MAXOUT_CONFIDENCE = 89.4, 97.6
MADRY_FGSM_ACCURACY = 6.4


@dataclass
class Config:
    """The real run: three standard models on MNIST, FGSM on all 10,000 test images."""

    archs: list[str] = field(default_factory=lambda: ["linear", "mlp", "madry-cnn"])
    epochs: list[int] = field(default_factory=lambda: [5, 4, 2])  # one per arch, or one for all
    lr: float = 1e-3  # Adam, one-cycle schedule, batch 128 (the library's standard recipe)
    models: list[str] = field(default_factory=list)  # the user's REFs, replacing the trained models
    eps: float = PAPER_EPS
    eps_sweep: list[float] = field(default_factory=lambda: [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3])
    small_eps: float = 0.001  # where the first-order prediction of the loss change is checked
    n: int = 10000  # test points attacked (the first n)
    examples: int = 6  # images in the softmax-regression figure
    batch_size: int = 500

    @classmethod
    def quick(cls) -> Config:
        return cls(
            archs=["linear", "mlp", "small-cnn"],
            epochs=[5, 5, 3],
            lr=1e-2,
            eps_sweep=[0.0, 0.1, 0.25],
            n=500,
            examples=4,
        )

    def check(self) -> None:
        from squiggles.models import MODELS, is_import_path

        bad = [a for a in self.archs if a not in MODELS and not is_import_path(a)]
        problems = [
            (not self.archs and not self.models, "give at least one arch or --model"),
            (bool(bad), f"unknown arch(s) {', '.join(bad)}; choose from {', '.join(MODELS)}"),
            (
                len(self.epochs) not in (1, len(self.archs)),
                f"epochs needs one value or one per arch ({len(self.archs)}), got {len(self.epochs)}",
            ),
            (any(e < 1 for e in self.epochs), f"epochs must be >= 1, got {self.epochs}"),
            (not self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (not self.eps > 0, f"eps must be > 0, got {self.eps}"),
            (
                not self.eps_sweep or any(not e >= 0 for e in self.eps_sweep),
                f"eps_sweep needs budgets >= 0, got {self.eps_sweep}",
            ),
            (not 0 < self.small_eps <= self.eps, f"small_eps must be in (0, eps], got {self.small_eps}"),
            (self.n < 1, f"n must be >= 1, got {self.n}"),
            (not 0 <= self.examples <= 20, f"examples must be in [0, 20], got {self.examples}"),
            (self.batch_size < 1, f"batch_size must be >= 1, got {self.batch_size}"),
        ]
        for failed, message in problems:
            if failed:
                raise SquigglesError(f"fgsm-linear: {message}")

    def grid(self) -> list[float]:
        """Every budget evaluated: the sweep, the headline eps, the paper's and Madry's, the small eps."""
        return sorted({0.0, *self.eps_sweep, self.eps, PAPER_EPS, MADRY_EPS, self.small_eps})


# --- models ---------------------------------------------------------------------------------------------


def load_models(ctx: Context, config: Config, test: Any) -> dict[str, tuple[nn.Module, dict[str, Any]]]:
    """The user's models when given, else standard models of ``config.archs`` trained here (or reused)."""
    models: dict[str, tuple[nn.Module, dict[str, Any]]] = {}
    if config.models:
        for ref in config.models:
            model, source = model_ref(ctx, ref)
            check_model_fits(model, test.x[:2].to(ctx.device), test.num_classes, f"model {ref!r}")
            models[_unique(ref, models)] = (model, {"source": ref, "kind": source.get("kind", "")})
        return models
    epochs = config.epochs * len(config.archs) if len(config.epochs) == 1 else config.epochs
    for arch, n_epochs in zip(config.archs, epochs, strict=True):
        model, _ = standard_model(ctx, arch, n_epochs, lr=config.lr)
        models[_unique(arch, models)] = (model, {"source": f"{arch}, {n_epochs} epoch(s) here", "kind": "trained"})
    return models


def _unique(name: str, taken: dict[str, Any]) -> str:
    k, out = 2, name
    while out in taken:
        out, k = f"{name} ({k})", k + 1
    return out


# --- the run --------------------------------------------------------------------------------------------


def run(ctx: Context, config: Config) -> dict[str, Any]:
    _, test = load_data(ctx)
    test = test.subset(min(config.n, len(test)))
    bounds = test.bounds
    models = load_models(ctx, config, test)
    grid = config.grid()
    sweeps, rows, lin, table, margins = {}, [], [], [], []
    for name, (model, info) in models.items():
        ctx.log(f"  FGSM on {name}: {len(test)} points, eps {', '.join(f'{e:g}' for e in grid)}")
        sweep = fgsm_sweep(
            model,
            test.x,
            test.y,
            grid,
            bounds,
            unclipped_eps=config.eps,
            device=ctx.device,
            batch_size=config.batch_size,
            progress=ctx.progress,
            desc=name,
        )
        agree = library_agreement(model, test.x, test.y, sweep, config.eps, bounds, ctx.device, config.batch_size)
        sweeps[name] = sweep
        rows += sweep_rows(name, sweep)
        lin += linearity_rows(name, sweep)
        table.append(model_row(name, info, model, sweep, config.eps, config.small_eps, agree))
        if is_softmax_regression(model):
            margins += [
                {"model": name, **r}
                for r in margin_rows(model, test.x, test.y, [e for e in grid if e > 0], ctx.device, config.batch_size)
            ]
    linear = next((r["model"] for r in table if r["softmax_regression"]), None)
    figures(ctx, config, models, sweeps, rows, lin, test, linear)
    return {
        "summary": summary(table, rows, linear),
        "description": description(ctx, config, models, len(test), grid, bounds),
        "notes": notes(table, lin, margins, config),
        "published": published(rows, linear),
        "dataset": test.name,
        "test_points": len(test),
        "bounds": list(bounds),
        "eps": config.eps,
        "models": table,
        "sweep": rows,
        "linearity": lin,
        **({"softmax_regression_margin": margins} if margins else {}),
    }


def figures(
    ctx: Context,
    config: Config,
    models: dict[str, Any],
    sweeps: dict[str, Sweep],
    rows: list[dict],
    lin: list[dict],
    test: Any,
    linear: str | None,
) -> None:
    stars = [
        ("softmax regression", PAPER_EPS, SOFTMAX_ERROR, SOFTMAX_CONFIDENCE),
        ("maxout", PAPER_EPS, MAXOUT_ERROR, MAXOUT_CONFIDENCE),
    ]
    draw_sweep(
        ctx.figure(
            "fgsm_sweep.png",
            "FGSM error rate and mean confidence on the misclassified adversarial "
            "examples against eps; stars: the paper's softmax regression and maxout network at 0.25",
        ),
        rows,
        stars,
    )
    draw_linearity(
        ctx.figure(
            "linearity.png",
            "Left: how far the logits move per unit of eps (a flat line is "
            "linear growth). Right: measured loss increase over its first-order prediction "
            "grad . delta; 1 at small eps, above 1 later even for softmax regression, because the "
            "cross-entropy is convex in the logits.",
        ),
        lin,
    )
    name = linear or next(iter(models))
    model, sweep = models[name][0], sweeps[name]
    pick = (sweep.clean.argmax(1) == sweep.labels).nonzero().flatten()[: config.examples]
    if len(pick):
        x, y = test.x[pick], test.y[pick]
        sign = loss_grad(model, x.to(ctx.device), y.to(ctx.device))[1].sign().cpu()
        draw_examples(
            ctx.figure(
                "examples.png",
                f"{name}: clean images (label: prediction (confidence)), the FGSM "
                f"perturbation at eps {config.eps:g}, and the adversarial images",
            ),
            x,
            fgsm_step(x, sign, config.eps, test.bounds),
            sweep.clean[pick],
            sweep.at(config.eps)[pick],
            y,
            test.bounds,
            f"FGSM on {name}, eps {config.eps:g}",
        )


# --- text -----------------------------------------------------------------------------------------------


def _at(rows: list[dict], model: str | None, eps: float) -> dict[str, Any] | None:
    return next((r for r in rows if r["model"] == model and r["eps"] == eps), None)


def _times(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


def published(rows: list[dict], linear: str | None) -> list[dict[str, Any]]:
    """The paper's MNIST figures beside ours (and Madry et al.'s FGSM figure for their natural CNN)."""
    soft = _at(rows, linear, PAPER_EPS)
    others = [r for r in rows if r["eps"] == PAPER_EPS and r["model"] != linear]
    nearest = "; ".join(
        f"{r['model']} {100 * r['error_rate']:.1f}% error at {100 * (r['wrong_confidence'] or 0):.1f}% confidence"
        for r in others
    )
    missing = "no softmax-regression model in this run" if soft is None else ""
    cnn = _at(rows, "madry-cnn", MADRY_EPS)
    return [
        published_row(
            "softmax regression: FGSM error rate at eps 0.25 (%)",
            SOFTMAX_ERROR,
            _pct(soft and soft["error_rate"]),
            missing or f"ours: {linear}, whole test set, clipped to the data bounds",
        ),
        published_row(
            "softmax regression: mean confidence on misclassified FGSM examples (%)",
            SOFTMAX_CONFIDENCE,
            _pct(soft and soft["wrong_confidence"]),
            missing
            or "the paper's 'average confidence' "
            f"(mean max-probability over all adversarial examples: {100 * soft['mean_confidence']:.1f}%)",
        ),
        published_row(
            "maxout network: FGSM error rate at eps 0.25 (%)",
            MAXOUT_ERROR,
            None,
            f"we have no maxout network; ours: {nearest or 'no other model'}",
        ),
        published_row(
            "maxout network: mean confidence on misclassified FGSM examples (%)",
            MAXOUT_CONFIDENCE,
            None,
            "we have no maxout network",
        ),
        published_row(
            "madry-cnn, natural training: accuracy under FGSM at eps 0.3 (%)",
            MADRY_FGSM_ACCURACY,
            _pct(cnn and 1 - cnn["error_rate"]),
            "Madry et al. 2017 (arXiv 1706.06083), 100k steps; ours: the short run here"
            if cnn
            else "no madry-cnn model in this run",
        ),
    ]


def summary(table: list[dict], rows: list[dict], linear: str | None) -> str:
    soft = _at(rows, linear, PAPER_EPS)
    head = (
        f"FGSM at eps 0.25 gives our softmax regression {100 * soft['error_rate']:.1f}% error with "
        f"{100 * (soft['wrong_confidence'] or 0):.1f}% mean confidence on its misclassified examples (paper: "
        f"{SOFTMAX_ERROR}% at {SOFTMAX_CONFIDENCE}%)."
        if soft
        else "This run has no softmax-regression model to set beside the paper's "
        f"{SOFTMAX_ERROR}% error at {SOFTMAX_CONFIDENCE}% confidence."
    )
    others = [r for r in rows if r["eps"] == PAPER_EPS and r["model"] != linear]
    tail = ", ".join(f"{r['model']} {100 * r['error_rate']:.1f}%" for r in others)
    return head + (
        f" The other models at 0.25: {tail} (the paper's maxout network: {MAXOUT_ERROR}%; we have no maxout)."
        if tail
        else ""
    )


def description(
    ctx: Context, config: Config, models: dict[str, Any], n: int, grid: list[float], bounds: tuple[float, float]
) -> str:
    listed = "; ".join(f"{name}: {info['source']}" for name, (_, info) in models.items())
    how = "the user's models" if config.models else f"standard training, Adam lr {config.lr:g}, batch 128"
    budgets = ", ".join(f"{e:g}" for e in grid)
    return (
        f"Models: {listed} ({how}; data: {ctx.dataset}). FGSM (x + eps * sign of the cross-entropy gradient at "
        f"the clean point, clipped to [{bounds[0]:g}, {bounds[1]:g}]) on the first {n} test images at eps "
        f"{budgets}. The gradient does not depend on eps, so one gradient per image serves every budget; the "
        f"library's fgsm attack at eps {config.eps:g} is run as a cross-check (library_fgsm_agreement). Error "
        "rate: fraction of the attacked images misclassified, clean errors included, as in the paper."
    )


def notes(table: list[dict], lin: list[dict], margins: list[dict], config: Config) -> list[str]:
    out = [
        "Two confidences are reported: mean_confidence is the mean max-softmax probability over all adversarial "
        "examples; wrong_confidence is the mean probability of the predicted (wrong) class over the misclassified "
        "ones. The paper's 'average confidence' is the second (its CIFAR-10 figure is the 'average probability "
        "assigned to the incorrect labels'); at 99.9% error the two nearly coincide.",
        "Preprocessing: the paper does not state the pixel scale or whether x + eps*sign(grad) was clipped; its "
        "eps of .25 fits pixels in [0, 1], which is how pylearn2 (the authors' library) loads MNIST. We clip to "
        "[0, 1]; error_rate_unclipped gives the same attack without clipping (pixels may leave [0, 1]).",
    ]
    for row in table:
        mine = [r for r in lin if r["model"] == row["model"]]
        if mine:
            first, last = mine[0], mine[-1]
            out.append(
                f"{row['model']}: the logits move {first['logit_change_per_eps']:.1f} per unit eps at eps "
                f"{first['eps']:g} and {last['logit_change_per_eps']:.1f} at {last['eps']:g}; the loss "
                f"increase is {_times(first['measured_over_first_order'])} its first-order prediction at "
                f"{first['eps']:g} and {_times(last['measured_over_first_order'])} at {last['eps']:g}."
            )
    out.append(
        "The cross-entropy is convex in the logits, so every model's loss grows faster than its first-order "
        "prediction grad . delta once eps is large, softmax regression's too; the linearity the paper means is "
        "in the logits, measured by logit_change_per_eps (constant for a linear map, up to clipping)."
    )
    out.append(
        f"Without clipping to the bounds, the error rates at eps {config.eps:g} are: "
        + ", ".join(
            f"{r['model']} {100 * r['error_rate_unclipped']:.1f}% (clipped: {100 * r['error_rate']:.1f}%)"
            for r in table
        )
        + "."
    )
    at = next((m for m in margins if m["eps"] == config.eps), None)
    if at:
        out.append(
            f"Softmax regression ({at['model']}), unclipped FGSM at eps {at['eps']:g}: the margin z_y - z_t "
            f"(t the clean runner-up) drops by {at['margin_drop']:.2f} on average, "
            f"{100 * at['ratio']:.0f}% of eps * ||w_y - w_t||_1 = {at['eps_w_diff_l1']:.2f}, the largest "
            "drop any perturbation in the eps-ball can cause; the ratio is the same at every eps, because "
            "for a linear model every term is exactly proportional to eps."
        )
    return out
