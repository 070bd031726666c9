"""The demo's part of the report: its ``results.json`` turned into page sections (see ``squiggles.report``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from squiggles.report.builders import stage_table
from squiggles.report.page import Figure, Section, Table

INTRO = (
    "A standard classifier can be fooled by perturbations too faint to see: it has learned features that "
    "work on natural images but that a person would not use. Adversarial training (here TRADES and PGD) irons "
    "those out. This page shows both models side by side: how much accuracy each keeps under the strongest "
    "attacks we have, what a large targeted attack has to do to each (the squiggles figure of Madry et al.), "
    "and whether such perturbations change what other, independent models see (the wormholes of Gaziv et al.)."
)
SQUIGGLES_TEXT = (
    "Each fixed test digit is pushed toward every other class by a targeted L2 attack at growing budgets. "
    "Against the standard model the attack wins with faint, noise-like perturbations. Against the robust model "
    "it has to redraw the digit: the perturbation adds and removes strokes until the image looks like the "
    "target to a person too. Titles read target: prediction (confidence), green where the target was reached."
)


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def sections(data: dict[str, Any], folder: Path) -> list[Section]:
    """Every section of the demo page, in reading order."""
    return [Section("What this shows", paragraphs=[INTRO]), _models(data), _evaluation(data, folder),
            _squiggles(data, folder), _wormholes(data, folder), _run(data)]


def _card_figure(card: dict[str, Any] | None, key: str) -> str:
    metrics = (card or {}).get("metrics", {})
    return pct(metrics.get(key)) if key in metrics else "—"


def _models(data: dict[str, Any]) -> Section:
    rows, cards = [], []
    for role, src in data["models"].items():
        card = src.get("card")
        ev = ((card or {}).get("metrics", {}).get("robust_eval") or {})
        how = f"{ev.get('attacks', '')} at {ev.get('norm', '')} {ev.get('eps', '')}, {ev.get('points', '')} points" \
            if ev else "—"
        rows.append([src.get("title", role), src["ref"], src["kind"], (card or {}).get("arch", "—"),
                     _card_figure(card, "clean_accuracy"), _card_figure(card, "robust_accuracy"), how,
                     "yes" if src.get("trained_now") else "no"])
        if card:
            cards.append({"title": f"{src.get('title', role)}: {src['ref']}", **card})
    table = Table(["role", "model", "source", "architecture", "clean (card)", "robust (card)", "card's evaluation",
                   "trained in this run"], rows, "Figures from each model's card, measured when it was trained.")
    return Section("Models", tables=[table], subsections=[Section("Model cards", cards=cards)] if cards else [])


def _evaluation(data: dict[str, Any], folder: Path) -> Section:
    ev = data["evaluation"]
    roles = ev["roles"]
    eps = [c["eps"] for c in next(iter(roles.values()))["curve"]]
    rows = [[data["models"][r]["title"], pct(res["clean_accuracy"]), *(pct(c["robust_accuracy"]) for c in res["curve"])]
            for r, res in roles.items()]
    summary = Table(["model", "clean", *(f"L-inf {e:g}" for e in eps)], rows,
                    f"{data['config']['attacks']} cascade on the first {ev['points']} test points.")
    subs, flags = [], []
    for role, res in roles.items():
        tables = [stage_table(block["stages"], f"eps {block['eps']:g}") for block in res["breakdown"]]
        subs.append(Section(f"Cascade breakdown: {data['models'][role]['title']}", tables=tables))
        flags += [{**f, "code": f"{data['models'][role]['title']}: {f['code']}"} for f in res["flags"]]
    note = "Sanity checks raised no flag on either model." if not flags else \
        "Sanity checks raised the flags below; each says what it means and what to do."
    return Section("Clean and robust accuracy", paragraphs=[note], tables=[summary],
                   figures=[Figure(folder / ev["figure"], "Robust accuracy against the L-inf budget.")], flags=flags,
                   subsections=subs)


def _squiggles(data: dict[str, Any], folder: Path) -> Section:
    sq = data["squiggles"]
    figures = [Figure(folder / m["figure"], data["models"][role]["title"]) for role, m in sq["models"].items()]
    figures.append(Figure(folder / sq["perturbations_figure"], "The perturbations as signed heat maps."))
    rows = [[data["models"][role]["title"], f"{r['budget']:g}", pct(r["target_reached"]), f"{r['mean_confidence']:.2f}",
             f"{r['mean_norm']:.2f}"] for role, m in sq["models"].items() for r in m["per_budget"]]
    table = Table(["model", "L2 budget", "target reached", "mean confidence", "mean L2 norm used"], rows,
                  f"Digits at test indices {', '.join(map(str, sq['indices']))}, each toward every other class.")
    return Section("The squiggles figure", paragraphs=[SQUIGGLES_TEXT], tables=[table], figures=figures)


def _wormholes(data: dict[str, Any], folder: Path) -> Section:
    wh = data["wormholes"]
    text = (f"Targeted L2 attacks toward a random other class on {wh['points']} test points, made against "
            f"(a) the standard model and (b) the L2 robust model, and (c) random noise of the same norm, are shown "
            f"to {wh['observers']} observer model(s): robust models of other seeds and architectures that stand "
            f"in for the human observers of Gaziv et al. and are never attacked themselves.")
    short = {"standard": "(a) standard", "robust": "(b) robust (L2)", "random": "(c) random"}
    rows = [[short.get(r["source"], r["source"]), f"{r['budget']:g}", pct(r["source_success"]), pct(r["target_rate"]),
             pct(r.get("followed_rate")), pct(r["abandon_rate"]), f"{r['mean_norm']:.2f}"] for r in wh["rows"]]
    table = Table(["perturbation", "L2 budget", "fooled its own model", "observers: target",
                   "observers: target, where fooled", "observers: not the true class", "L2 norm used"], rows,
                  "Observer rates are over (image, observer) pairs. Random noise is clipped to the pixel range, "
                  "so its norm falls short of the budget.")
    return Section("Wormholes", paragraphs=[text, wh["summary"]], tables=[table],
                   figures=[Figure(folder / wh["figure"], "Observers' reports against the budget.")])


def _run(data: dict[str, Any]) -> Section:
    rows = [[name, f"{s:.1f}"] for name, s in data["stage_seconds"].items()]
    rows.append(["total", f"{data['wall_time_s']:.1f}"])
    versions = ", ".join(f"{k} {v}" for k, v in data.get("versions", {}).items())
    return Section("This run", paragraphs=[f"Device: {data.get('device', '?')}. Versions: {versions}."],
                   tables=[Table(["stage", "seconds"], rows)])
