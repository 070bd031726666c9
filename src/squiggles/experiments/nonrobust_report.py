"""How the non-robust features experiment (Ilyas et al. 2019, arXiv 1905.02175) reads: the published figures,
the summary, description, notes and tables made from the numbers, and the pictures (a few D_det images beside
their originals and perturbations; the real-test accuracy of each fresh model per dataset)."""

from __future__ import annotations

from typing import Any

from squiggles.experiments.base import Context, published_row
from squiggles.report.figures import as_image, pyplot

# Ilyas et al. 2019, Table 1 (CIFAR-10, ResNet-50 source, L2 eps 0.5): test accuracy on the real test set.
PUBLISHED = {"rand": 0.633, "det": 0.437}
PUBLISHED_BUDGET = "L2 eps 0.5, 100 steps of 0.1 (CIFAR-10)"
BARS = (
    ("d_rand_test_accuracy", "D_rand", "tab:blue"),
    ("d_det_test_accuracy", "D_det", "tab:orange"),
    ("baseline_rand_test_accuracy", "D_rand labels, no perturbation", "lightsteelblue"),
    ("baseline_det_test_accuracy", "D_det labels, no perturbation", "navajowhite"),
)


# --- the results: text and tables ------------------------------------------------------------------------


def fresh_accuracy(run: dict[str, Any], label: str) -> float | None:
    """The real-test accuracy of the fresh model trained on ``label`` (None when it was not trained)."""
    row = run.get("fresh", {}).get(label)
    return row["test_accuracy"] if row else None


def dataset_row(run: dict[str, Any]) -> dict[str, Any]:
    """One line of the per-dataset summary table."""
    ok = run["status"] == "ok"
    return {
        "dataset": run["dataset"],
        "status": run["status"],
        "source_test_accuracy": run.get("source_accuracy"),
        "d_rand_test_accuracy": fresh_accuracy(run, "D_rand"),
        "d_det_test_accuracy": fresh_accuracy(run, "D_det"),
        "baseline_rand_test_accuracy": fresh_accuracy(run, "D_rand labels, no perturbation"),
        "baseline_det_test_accuracy": fresh_accuracy(run, "D_det labels, no perturbation"),
        "chance": 1 / run["num_classes"] if ok else None,
    }


def published_rows(runs: list[dict[str, Any]], config: Any) -> list[dict[str, Any]]:
    """The paper's CIFAR-10 figures beside ours (MNIST and Fashion-MNIST versions are unpublished)."""
    budget = f"L2 eps {config.eps:g}, {config.steps} steps of {config.step_size:g}"
    rows = [
        published_row(
            "attack budget",
            PUBLISHED_BUDGET,
            budget,
            "small grey-scale images need a larger L2 budget than CIFAR-10 (see the description)",
        )
    ]
    for run in runs:
        if run["status"] != "ok":
            continue
        for variant in PUBLISHED:
            rows.append(
                published_row(
                    f"D_{variant} test accuracy ({run['dataset']})",
                    PUBLISHED[variant],
                    fresh_accuracy(run, f"D_{variant}"),
                    f"published figure: CIFAR-10; no {run['dataset']} version is published",
                )
            )
    return rows


def describe(config: Any, main: dict[str, Any]) -> str:
    """What was done, with the budget used, in plain words."""
    failures = "dropped" if config.drop_failures else "kept (relabelled all the same)"
    image_norm = main["construction"][0]["mean_image_l2_norm"]
    return (
        f"A standard source model ({main['source']}) was attacked with targeted L2 PGD (eps {config.eps:g}, "
        f"{config.steps} steps of {config.step_size:g}, no random start, cross-entropy toward the target) on the "
        f"first {main['n_train']} training images of each dataset. D_rand relabels each image with a uniformly "
        "random other class, D_det with y + 1 mod K; each attacked image gets its target as label. Images the "
        f"attack did not carry to the target were {failures}. A fresh {config.arch} (another initialisation) was "
        f"trained from scratch on each set alone ({config.epochs} epochs, Adam lr {config.lr:g}, one-cycle "
        f"schedule, batch {config.batch_size}) and tested on the first {main['n_test']} real test images. "
        "Controls: the same training on the same kept images and targets without the perturbations. The paper's "
        "budget, L2 0.5 on CIFAR-10, pushes a standard model to its target; on these small grey-scale images a "
        "standard model needs more (smaller budgets leave many images short of the target), so we use eps "
        f"{config.eps:g}, {config.eps / image_norm:.0%} of the mean L2 norm of the {main['dataset']} images attacked "
        f"({image_norm:.1f}); the perturbations are an unstructured haze, not strokes of the target class "
        "(see the figure)."
    )


def summarize(runs: list[dict[str, Any]]) -> str:
    """Our figure per dataset beside the paper's."""
    parts = [
        f"{100 * fresh_accuracy(run, 'D_rand'):.1f}% (D_rand) and {100 * fresh_accuracy(run, 'D_det'):.1f}% (D_det) "
        f"on the real {run['dataset']} test set (chance {100 / run['num_classes']:.0f}%)"
        for run in runs
        if run["status"] == "ok"
    ]
    return (
        f"A model trained only on relabelled adversarial images reaches {'; and '.join(parts)}, against "
        f"{100 * PUBLISHED['rand']:.1f}% and {100 * PUBLISHED['det']:.1f}% published for CIFAR-10 (no MNIST or "
        "Fashion-MNIST version is published)."
    )


def notes(runs: list[dict[str, Any]]) -> list[str]:
    """The sanity checks, read off the numbers."""
    lines = []
    for run in runs:
        if run["status"] != "ok":
            lines.append(f"{run['dataset']}: {run['status']}.")
            continue
        chance = 1 / run["num_classes"]
        base_rand = fresh_accuracy(run, "D_rand labels, no perturbation")
        base_det = fresh_accuracy(run, "D_det labels, no perturbation")
        if base_rand is not None and base_det is not None:
            lines.append(
                f"{run['dataset']}: without the perturbations the same images and labels give "
                f"{100 * base_rand:.1f}% (D_rand targets, {versus_chance(base_rand, chance)} chance) and "
                f"{100 * base_det:.1f}% (D_det targets, {versus_chance(base_det, chance)} chance; chance "
                f"is {100 * chance:.0f}%). The targets are never the true class, so the labels alone can "
                "only teach a model to avoid it: what the D_rand and D_det models get right comes from "
                "the perturbations."
            )
        det = run["fresh"]["D_det"]
        lines.append(
            f"{run['dataset']}: the D_det model calls {100 * det['test_says_next_class']:.1f}% of the real "
            "test images y + 1, the label that the robust features of its training images point to; "
            f"it is right on {100 * det['test_accuracy']:.1f}%."
        )
    return lines


def versus_chance(accuracy: float, chance: float, tolerance: float = 0.03) -> str:
    """Whether ``accuracy`` is "below", "near" or "above" ``chance`` (within ``tolerance`` is near)."""
    if accuracy < chance - tolerance:
        return "below"
    return "above" if accuracy > chance + tolerance else "near"


# --- the pictures ---------------------------------------------------------------------------------------


def draw_examples(ctx: Context, run: dict[str, Any], n: int) -> None:
    """Rows: the original (true label), its D_det version (new label), the perturbation (signed, enhanced)."""
    from squiggles.demo.figure12 import pick_digits

    built = run["sets"]["det"]
    idx = pick_digits(run["y"], min(n, run["num_classes"]))
    plt = pyplot()
    fig, axes = plt.subplots(3, len(idx), figsize=(1.1 * len(idx) + 0.6, 3.7), squeeze=False)
    for j, i in enumerate(idx):
        delta = (built.x_adv[i] - run["x"][i]).mean(0)  # over channels
        scale = max(delta.abs().max().item(), 1e-12)
        axes[0, j].imshow(as_image(run["x"][i], run["bounds"]), cmap="gray", vmin=0, vmax=1)
        axes[0, j].set_title(f"label {int(run['y'][i])}", fontsize=8)
        axes[1, j].imshow(as_image(built.x_adv[i], run["bounds"]), cmap="gray", vmin=0, vmax=1)
        reached = "" if bool(built.success[i]) else " (missed)"
        axes[1, j].set_title(f"new label {int(built.targets[i])}{reached}", fontsize=8)
        axes[2, j].imshow(delta.numpy(), cmap="RdBu_r", vmin=-scale, vmax=scale)
        axes[2, j].set_title(f"L2 {built.norms[i].item():.2f}", fontsize=8)
    for row, name in enumerate(("original", "D_det", "perturbation")):
        axes[row, 0].text(-0.12, 0.5, name, transform=axes[row, 0].transAxes, ha="right", va="center", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout(rect=(0.06, 0, 1, 1))
    path = ctx.figure(
        f"examples-{run['dataset']}.png",
        f"{run['dataset']}: originals with their true labels, their D_det versions with the new label "
        "y + 1 they are trained with (classes by number; 'missed': the source model does not see the target, "
        "and such images are dropped unless drop_failures=false), and the perturbations (red adds, blue "
        "removes; each scaled to its own maximum).",
    )
    fig.savefig(path, dpi=90)
    plt.close(fig)


def draw_accuracy(ctx: Context, rows: list[dict[str, Any]], published: str) -> None:
    """Grouped bars: real-test accuracy of each fresh model, per dataset, with the chance level."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(3.6 + 2.4 * max(len(rows), 1), 3.6))
    width = 0.8 / len(BARS)
    for b, (key, label, color) in enumerate(BARS):
        xs = [g + (b - (len(BARS) - 1) / 2) * width for g, row in enumerate(rows) if row[key] is not None]
        ys = [row[key] for row in rows if row[key] is not None]
        bars = ax.bar(xs, ys, width, label=label, color=color)
        ax.bar_label(bars, labels=[f"{100 * v:.0f}" for v in ys], fontsize=7)
    for g, row in enumerate(rows):
        ax.hlines(
            row["chance"], g - 0.45, g + 0.45, colors="black", linestyles="dashed", label="chance" if g == 0 else None
        )
    ax.set_xticks(range(len(rows)), [row["dataset"] for row in rows])
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("accuracy on the real test set")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path = ctx.figure(
        "accuracy.png",
        "Fresh models trained only on relabelled data, tested on the real test set (percent on the "
        f"bars); the dashed line is chance. {published}",
    )
    fig.savefig(path, dpi=90)
    plt.close(fig)
