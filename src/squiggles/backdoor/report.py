"""Report sections for ``squiggles backdoor`` results (``"kind": "backdoor"``): a scan's findings, or a repair's
before/after table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from squiggles.report.builders import _figures, _images
from squiggles.report.page import Section, Table

CAPTIONS = {
    "triggers.png": "The real trigger (when the model's card records one) beside each class's reverse-engineered "
                    "trigger, and a clean image wearing each; red: flagged.",
    "norms.png": "L1 norm of each class's reversed mask; below the dashed line the anomaly index exceeds 2.",
    "suspects.png": "The most suspicious training points of each data detector (red: known to be poisoned).",
}


def sections(data: dict[str, Any], folder: Path) -> list[Section]:
    analysis = data.get("analysis")
    build = {"scan": _scan, "repair": _repair}.get(str(analysis))
    if build is None:
        return [Section("Backdoor", paragraphs=[f"Unknown backdoor analysis {analysis!r}."])]
    section = build(data)
    entries = [{"path": f, "caption": CAPTIONS.get(f, "")} for f in _images(data.get("files"))]
    figures, notes = _figures(folder, entries)
    section.figures += figures
    section.paragraphs += notes
    return [section]


def _pct(v: Any) -> Any:
    return round(100 * v, 2) if isinstance(v, int | float) and not isinstance(v, bool) else v


def _num(v: Any, digits: int = 2) -> Any:
    return round(v, digits) if isinstance(v, float) else v


def _sci(v: Any) -> Any:
    return f"{v:.2g}" if isinstance(v, float) else v


def _scan(data: dict[str, Any]) -> Section:
    s = Section("Backdoor scan", paragraphs=[str(v) for v in data.get("verdict") or []])
    expected = data.get("expected")
    if isinstance(expected, dict):
        lm = expected.get("label_map") or {}
        where = f"to class {lm.get('target')}" if lm.get("map") == "all-to-one" else "y -> y + 1"
        s.paragraphs.append(f"The model's card records a poisoning: {expected.get('poisoned')} of "
                            f"{expected.get('train_points')} training points ({lm.get('map')}, {where}, rate "
                            f"{expected.get('rate')}); this is what the scan should find.")
    nc = data.get("cleanse")
    if isinstance(nc, dict):
        rows = [[c.get("class"), _num(c.get("mask_l1")), _num(c.get("anomaly_index")), _pct(c.get("success")),
                 c.get("reached"), "yes" if c.get("flagged") else ""] for c in nc.get("classes") or []]
        s.tables.append(Table(["class", "mask L1 norm", "anomaly index", "trigger success (%)", "reached 99%",
                               "flagged"], rows,
                              f"Neural Cleanse on {nc.get('points')} clean points, {nc.get('steps')} steps "
                              f"({nc.get('seconds')} s); median norm {_num(nc.get('median_norm'))}, "
                              f"MAD x 1.4826 = {_num(nc.get('mad'))}"))
    found = data.get("data")
    if isinstance(found, dict):
        rows = []
        for method in ("spectral", "clustering"):
            d = found.get(method)
            if isinstance(d, dict):
                rows.append([method, ", ".join(map(str, d.get("flagged_classes") or [])) or "none", d.get("suspects"),
                             _pct(d.get("precision")), _pct(d.get("recall")), d.get("seconds")])
        unknown = "" if found.get("truth_known") else " (the truth is unknown: no precision or recall)"
        s.tables.append(Table(["detector", "flagged classes", "suspects", "precision (%)", "recall (%)", "seconds"],
                              rows, f"Suspected training points among {found.get('points')}{unknown}"))
        for method in ("spectral", "clustering"):
            d = found.get(method)
            if isinstance(d, dict):
                s.tables.append(_class_table(method, d.get("classes") or []))
    return s


def _class_table(method: str, classes: list[Any]) -> Table:
    rows = [[c.get("class"), c.get("n"), " / ".join(map(str, c.get("groups") or [])), c.get("separation"),
             " / ".join(map(str, c.get("clean_drawn") or [])), _sci(c.get("p_value")), c.get("rule"),
             "yes" if c.get("flagged") else ""] for c in classes if isinstance(c, dict)]
    return Table(["class", "points", "group sizes", "separation (Ashman's D)", "clean points per group",
                  "binomial tail", "rule", "flagged"], rows, f"{method}: each class split in two")


def _repair(data: dict[str, Any]) -> Section:
    s = Section(f"Backdoor repair ({data.get('method')})")
    if data.get("method") == "retrain":
        score = data.get("removed_score") or {}
        extra = (f" (precision {_pct(score.get('precision'))}%, recall {_pct(score.get('recall'))}% of the poisoned "
                 "points)") if score else ""
        s.paragraphs.append(f"Retrained from scratch without the {data.get('removed')} points suspected by "
                            f"{data.get('suspects')}{extra}.")
    else:
        s.paragraphs.append(f"Fine-tuned on clean data, a share wearing the reversed trigger(s) of class(es) "
                            f"{data.get('classes')} with their true labels (Wang et al. 2019).")
    rows = [[r.get("measure"), _pct(r.get("before")), _pct(r.get("after")), _pct(r.get("change"))]
            for r in data.get("table") or [] if isinstance(r, dict)]
    s.tables.append(Table(["on the test set", "before (%)", "after (%)", "change (points)"], rows, "Before and after"))
    return s
