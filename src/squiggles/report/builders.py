"""From a results folder (or one results JSON) to a `Page`: each kind of result has a builder.

A builder takes the parsed JSON and the folder it lies in and returns sections. ``results.json`` names its
builder by ``"kind"`` (see `BUILDERS`); ``summary.json`` (an attack), ``card.json`` (a training run) and any
``*.json`` with ``"kind": "evaluation"`` are recognised by name and content.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from squiggles.errors import SquigglesError
from squiggles.report.page import (
    IMAGE_TYPES,
    Figure,
    Page,
    Section,
    Table,
    is_records,
    key_value_table,
    label,
    records_table,
)

Builder = Callable[[dict[str, Any], Path], list[Section]]

# kind -> "module:function"; imported only when a result of that kind is rendered, so a builder living in
# another part of squiggles (or not installed at all) costs nothing until needed.
BUILDERS: dict[str, str] = {
    "evaluation": "squiggles.report.builders:evaluation_sections",
    "attack": "squiggles.report.builders:attack_sections",
    "experiment": "squiggles.report.builders:experiment_sections",
    "demo": "squiggles.demo.report:sections",
    "patch": "squiggles.report.builders:patch_sections",
    "certification": "squiggles.report.builders:certification_sections",
    "monitor": "squiggles.monitor.report:sections",
    "backdoor": "squiggles.backdoor.report:sections",
}

NAMED = ("results.json", "summary.json", "card.json")
EXPECTED = "results.json, summary.json, card.json, or an evaluation *.json (from `squiggles evaluate --out`)"
STAGE_HEADERS = ["stage", "accuracy after", "broken", "forwards", "backwards", "seconds"]


# --- the page ------------------------------------------------------------------------------------------


def build_page(path: Path) -> Page:
    """A page for a results folder, or for one results ``.json`` file."""
    path = Path(path)
    if path.is_file():
        sources = [path]
    elif path.is_dir():
        sources = _sources(path)
    else:
        raise SquigglesError(f"{path}: no such file or folder")
    loaded = [(source, _read_json(source)) for source in sources]
    sections = [s for source, data in loaded for s in _sections_of(source, data)]
    # An experiment names itself; anything else is called after its folder (or file).
    name = loaded[0][1].get("name") if sources[0].name == "results.json" or path.is_file() else None
    title = name if isinstance(name, str) and name else path.resolve().name or str(path)
    subtitle = "from " + ", ".join(s.name for s in sources)
    return Page(title=title, subtitle=subtitle, sections=sections, source=str(path))


def _sources(folder: Path) -> list[Path]:
    """The result files of a folder, in reading order; an error naming what was expected when there are none."""
    named = [folder / name for name in NAMED if (folder / name).is_file()]
    evals = [p for p in sorted(folder.glob("*.json")) if p.name not in NAMED and _is_evaluation(p)]
    if not named and not evals:
        raise SquigglesError(f"nothing to report in {folder}: expected {EXPECTED}")
    return named + evals


def _sections_of(path: Path, data: dict[str, Any]) -> list[Section]:
    """Dispatch one file: attack summaries and model cards by name, everything else by ``kind``."""
    folder = path.parent
    if "kind" not in data and path.name == "summary.json":
        return attack_sections(data, folder)
    if "kind" not in data and path.name == "card.json":
        return training_sections(data, folder)
    if data.get("kind") == "evaluation":
        return _evaluation_file(path, data)
    return sections_for(data, folder)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SquigglesError(f"cannot read {path} as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SquigglesError(f"{path} holds a JSON {type(data).__name__}, not an object; nothing to report")
    return data


def _is_evaluation(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False  # not ours: other JSON files in a folder are left alone
    return isinstance(data, dict) and data.get("kind") in ("evaluation", "certification")


# --- the registry --------------------------------------------------------------------------------------


def sections_for(data: dict[str, Any], folder: Path) -> list[Section]:
    """Sections by the builder ``data["kind"]`` names; the generic builder, with a note why, when there is none."""
    kind = data.get("kind")
    builder, problem = load_builder(kind)
    if builder is not None:
        try:
            return builder(data, folder)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            # A hand-edited or older file should still render: show it plainly and say why.
            problem = f"the {kind!r} builder failed on this file ({type(exc).__name__}: {exc})"
    sections = generic_sections(data, folder)
    sections[0].paragraphs.insert(0, f"Note: {problem}; shown as plain tables.")
    return sections


def load_builder(kind: Any) -> tuple[Builder | None, str]:
    """The builder registered for ``kind``, or None and the reason it cannot be had."""
    if not isinstance(kind, str) or kind not in BUILDERS:
        return None, f"no report builder for kind {kind!r}" if kind is not None else "the file names no kind"
    module_name, _, attr = BUILDERS[kind].partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr), ""
    except (ImportError, AttributeError) as exc:
        return None, f"the builder for kind {kind!r} ({BUILDERS[kind]}) could not be loaded ({exc})"


# --- builders ------------------------------------------------------------------------------------------


def evaluation_sections(data: dict[str, Any], folder: Path) -> list[Section]:
    """``squiggles evaluate`` results: flags first, headline numbers, the curve, the per-stage breakdowns."""
    section = Section(f"Evaluation of {data.get('model', 'a model')}", flags=_flags(data.get("flags")))
    section.paragraphs.append(_flag_sentence(section.flags))
    section.tables.append(key_value_table(_eval_headline(data), "Headline"))
    curve = [[c.get("eps"), c.get("robust_accuracy")] for c in data.get("curve") or []]
    if curve:
        section.tables.append(Table(["eps", "robust accuracy"], curve, "Robust accuracy by budget"))
    per_point = [[q.get("eps"), q.get("median"), q.get("mean"), q.get("max")]
                 for q in data.get("queries_per_point") or [] if isinstance(q, dict)]
    if per_point and (data.get("config") or {}).get("access", "gradients") != "gradients":
        section.tables.append(Table(["eps", "median", "mean", "max"], per_point, "Model calls per point"))
    remedies = _remedies_table(data.get("remedies"))
    if remedies:
        section.paragraphs.append("A check fired for a cause with a known remedy, so the evaluation attacked the "
                                  "points still robust again through it; the headline is the lower figure.")
        section.tables.append(remedies)
    for block in data.get("breakdown") or []:
        table = stage_table(block.get("stages") or [])
        table.caption = f"Accuracy after each stage at eps = {_g(block.get('eps'))}"
        section.tables.append(table)
    section.figures, notes = _figures(folder, _images(data.get("files")), "Robust accuracy by budget")
    section.paragraphs += notes
    section.cards = _cards(data.get("model_card"))
    return [section]


def _remedies_table(remedies: Any) -> Table | None:
    rows = [[r.get("remedy"), ", ".join(r.get("reason") or []), r.get("description"),
             _joined(r.get("robust_accuracy_before")), _joined(r.get("robust_accuracy_after"))]
            for r in remedies or [] if isinstance(r, dict)]
    if not rows:
        return None
    return Table(["remedy", "for", "what it ran", "robust accuracy before", "after"], rows,
                 "Remedies applied by the evaluation")


def _joined(values: Any) -> str:
    if not isinstance(values, list):
        return str(values)
    return ", ".join(f"{100 * v:.2f}%" if isinstance(v, int | float) else str(v) for v in values)


def _eval_headline(data: dict[str, Any]) -> dict[str, Any]:
    threat = data.get("threat") or {}
    calls = data.get("model_calls") or {}
    attacks = [a.get("name", "?") if isinstance(a, dict) else a for a in data.get("attacks") or []]
    return {
        "model": data.get("model"),
        "dataset": data.get("dataset"),
        "split": data.get("split"),
        "points": data.get("n"),
        "norm": threat.get("norm"),
        "box": (f"rotation +-{threat.get('max_rotation')} deg, translation +-{threat.get('max_translation')} px"
                if threat.get("threat") == "spatial" else None),
        "eps": data.get("eps"),
        "attacks": attacks,
        "clean_accuracy": data.get("clean_accuracy"),
        "robust_accuracy": data.get("robust_accuracy"),
        "robust accuracy before remedies": (data.get("unremedied_robust_accuracy")
                                            if data.get("remedies") else None),
        "model forwards": calls.get("forwards"),
        "model backwards": calls.get("backwards"),
        "wall_time_s": data.get("wall_time_s"),
        "seed": data.get("seed"),
        "disagreements": len(data.get("disagreements") or []),
        "minimal_norm_prepass": data.get("minimal_norm_prepass"),
        "config": data.get("config"),
        "versions": data.get("versions"),
    }


def _evaluation_file(path: Path, data: dict[str, Any]) -> list[Section]:
    """An evaluation JSON file: its sections, named after the file, plus ``<stem>.curve.png`` beside it."""
    sections = sections_for(data, path.parent)
    sections[0].title += f" ({path.name})"
    curve = path.with_suffix(".curve.png")
    if curve.is_file() and all(f.path.name != curve.name for s in sections for f in s.figures):
        sections[0].figures.append(Figure(curve, "Robust accuracy by budget"))
    return sections


def attack_sections(data: dict[str, Any], folder: Path) -> list[Section]:
    """``squiggles attack`` summary: its numbers and settings, the example picture, the model card."""
    section = Section(f"Attack {data.get('attack', '')} on {data.get('model', 'a model')}".replace("  ", " "))
    section.tables.append(key_value_table(data, "Summary", skip={"model_card", "files", "kind", "norm_curve"}))
    curve = _query_table(data.get("norm_curve"), data.get("reference_median_norm"))
    if curve:
        section.tables.append(curve)
    names = _images(data.get("files"))
    if "examples.png" not in names and (folder / "examples.png").is_file():
        names.append("examples.png")
    pictures = [n for n in names if n != "curve.png"]
    section.figures, notes = _figures(folder, pictures, "Clean, perturbation and adversarial examples")
    if "curve.png" in names:
        more, extra = _figures(folder, ["curve.png"], "Median norm against queries per example")
        section.figures += more
        notes += extra
    section.paragraphs += notes
    section.cards = _cards(data.get("model_card"))
    return [section]


def patch_sections(data: dict[str, Any], folder: Path) -> list[Section]:
    """``squiggles patch`` summary: the success rate and settings, the training curve, the patch and test images
    wearing it."""
    section = Section(f"Universal patch to class {data.get('target')} on {data.get('model', 'a model')}")
    section.tables.append(key_value_table(data, "Summary", skip={"model_card", "files", "kind", "history"}))
    history = records_table(data.get("history"), "Success on the training batches against optimisation steps")
    section.tables += [history] if history else []
    section.figures, section.paragraphs = _figures(folder, _images(data.get("files")),
                                                   "The patch, and held-out images wearing it")
    section.cards = _cards(data.get("model_card"))
    return [section]


def certification_sections(data: dict[str, Any], folder: Path) -> list[Section]:
    """``squiggles certify`` results: the certified figure beside the attack's on the same points, per budget."""
    method = data.get("method", "?")
    section = Section(f"Certification of {data.get('model', 'a model')} ({method})")
    section.paragraphs.append("A certificate proves that no input within the budget changes the prediction; an "
                              "attack only finds inputs that do. Certified accuracy can never exceed the attack's "
                              "figure on the same points.")
    headline = {k: data.get(k) for k in ("n", "norm", "sigma", "samples", "clean_accuracy", "smoothed_accuracy",
                                         "abstentions", "average_certified_radius", "model_calls", "wall_time_s",
                                         "points_per_second") if data.get(k) is not None}
    section.tables.append(key_value_table(headline, "Headline"))
    key = "radius" if method == "smoothing" else "eps"
    empirical = {row.get("budget"): row for row in data.get("empirical") or [] if isinstance(row, dict)}
    rows = []
    for row in data.get("curve") or []:
        e = empirical.get(row.get(key), {})
        rows.append([row.get(key), row.get("certified_accuracy"), e.get("robust_accuracy"), e.get("attack")])
    if rows:
        section.tables.append(Table([key, "certified accuracy", "empirical (attack)", "attack"], rows,
                                    "Certified beside empirical accuracy, same points"))
    violations = [r for r in empirical.values() if r.get("certified_le_empirical") is False]
    if violations:
        section.flags = _flags([{"code": "certified-above-empirical",
                                 "message": "a certified figure is above the attack's on the same points: a bug",
                                 "advice": "please report it with this results file"}])
    section.figures, notes = _figures(folder, _images(data.get("files")), "Certified and empirical accuracy")
    section.paragraphs += notes
    section.cards = _cards(data.get("model_card"))
    return [section]


def _query_table(curve: Any, reference: Any) -> Table | None:
    """A label-only attack's median norm at each query count, with the white-box reference below."""
    if not isinstance(curve, dict) or not curve.get("queries"):
        return None
    rows = [[q, m] for q, m in zip(curve["queries"], curve.get("median_norm") or [], strict=False)]
    for name, value in (reference or {}).items():
        rows.append([f"{name} (white-box minimal norm)", value])
    return Table(["model calls per example", "median norm"], rows, "Median norm against queries")


def training_sections(card: dict[str, Any], folder: Path) -> list[Section]:
    """A training folder's ``card.json``: the card, the epoch history, the guard and the final robust check."""
    metrics = card.get("metrics") or {}
    section = Section(f"Model {folder.resolve().name}", paragraphs=_strings(card.get("notes")), cards=[card])
    extra = key_value_table(metrics, "Metrics", skip={"history", "guard", "robust_eval"})
    section.tables += [extra] if extra.rows else []
    history = records_table(metrics.get("history"), "Training history, one row per epoch")
    section.tables += [history] if history else []
    if isinstance(metrics.get("guard"), dict):
        section.subsections.append(_guard_section(metrics["guard"]))
    if isinstance(metrics.get("robust_eval"), dict):
        section.subsections.append(_robust_eval_section(metrics["robust_eval"]))
    return [section]


def _guard_section(guard: dict[str, Any]) -> Section:
    rollbacks = guard.get("rollbacks") or []
    said = f"{len(rollbacks)} rollback(s) after catastrophic overfitting." if rollbacks else "No rollbacks were needed."
    section = Section("Overfitting guard", paragraphs=[said])
    section.tables.append(key_value_table(guard, "Settings", skip={"checks", "rollbacks"}))
    for key, caption in (("checks", "Checks, one per epoch"), ("rollbacks", "Rollbacks")):
        table = records_table(guard.get(key), caption)
        section.tables += [table] if table else []
    return section


def _robust_eval_section(how: dict[str, Any]) -> Section:
    flags = _flags(how.get("flags"))
    section = Section("Final robust evaluation", paragraphs=[_flag_sentence(flags)], flags=flags)
    section.tables.append(key_value_table(how, "Settings", skip={"breakdown", "flags"}))
    if how.get("breakdown"):
        section.tables.append(stage_table(how["breakdown"], "Accuracy after each stage"))
    return section


def experiment_sections(data: dict[str, Any], folder: Path) -> list[Section]:
    """Any experiment: prose from ``summary``/``notes``, tables from its values, figures listed or found."""
    section = generic_sections(data, folder, skip={"summary", "notes", "figures", "description"})[0]
    section.paragraphs = [p for key in ("summary", "description", "notes") for p in _strings(data.get(key))]
    listed = data.get("figures")
    found = sorted(p.name for p in folder.iterdir() if p.is_file() and _is_image(p.name))
    entries = listed if isinstance(listed, list) else found
    section.figures, notes = _figures(folder, entries)
    section.paragraphs += notes
    return [section]


def generic_sections(data: dict[str, Any], folder: Path, skip: Iterable[str] = ()) -> list[Section]:
    """Any JSON object: a key/value table of its plain values and a table for each list of objects."""
    title = str(data.get("name") or data.get("kind") or "Results")
    section = Section(title, flags=_flags(data.get("flags")))
    skip = {"name", "kind", *skip, *(["flags"] if section.flags else [])}
    table = key_value_table(data, "Values", skip=skip | {k for k, v in data.items() if is_records(v)})
    section.tables += [table] if table.rows else []
    for key, value in data.items():
        if key not in skip and is_records(value):
            section.tables.append(records_table(value, label(key)))
    return [section]


# --- small pieces --------------------------------------------------------------------------------------


def stage_table(stages: list[dict[str, Any]], caption: str = "") -> Table:
    """The cascade's cumulative accuracy after each stage. Points settled before any attack ran (broken at a
    smaller budget, or by the minimal-norm pre-pass) get their own row, so the counts add up."""
    keys = ["stage", "accuracy", "broken", "forwards", "backwards", "seconds"]
    rows = [[s.get(k) for k in keys] for s in stages]
    first = stages[0] if stages else {}
    if first.get("stage") == "clean" and first.get("after_reuse") not in (None, first.get("accuracy")):
        rows.insert(1, ["smaller budget / minimal-norm pre-pass", first["after_reuse"], None, None, None, None])
    return Table(list(STAGE_HEADERS), rows, caption)


def _flags(flags: Any) -> list[dict[str, str]]:
    """Flags with at least a code or a message, every field as text."""
    good = [f for f in flags or [] if isinstance(f, dict) and ("code" in f or "message" in f)]
    return [{k: str(v) for k, v in f.items() if k in ("code", "message", "advice")} for f in good]


def _flag_sentence(flags: list[dict[str, str]]) -> str:
    if not flags:
        return "The sanity checks raised no flags."
    return f"The sanity checks raised {len(flags)} flag(s); read them before trusting the numbers."


def _cards(card: Any) -> list[dict[str, Any]]:
    return [card] if isinstance(card, dict) and card else []


def _figures(folder: Path, entries: Iterable[Any], caption: str = "") -> tuple[list[Figure], list[str]]:
    """Figures for relative paths (or ``{"path", "caption"}`` dicts); paths leaving the folder are not inlined,
    so a results file cannot pull in an image from elsewhere on the machine."""
    figures, notes = [], []
    for entry in entries:
        name, text = (entry.get("path"), entry.get("caption", "")) if isinstance(entry, dict) else (entry, caption)
        path = (folder / str(name)).resolve()
        if not path.is_relative_to(folder.resolve()):
            notes.append(f"Figure {name} lies outside the results folder and was not included.")
            continue
        figures.append(Figure(path, str(text or "")))
    return figures, notes


def _images(files: Any) -> list[str]:
    return [str(f) for f in files or [] if _is_image(str(f))]


def _is_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_TYPES


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    return [str(v) for v in value] if isinstance(value, list) else []


def _g(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) and not isinstance(value, bool) else str(value)
