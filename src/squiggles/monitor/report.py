"""Report sections for ``squiggles monitor`` results (``"kind": "monitor"``), one builder per analysis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from squiggles.report.builders import _figures, _images
from squiggles.report.page import Section, Table


def sections(data: dict[str, Any], folder: Path) -> list[Section]:
    analysis = data.get("analysis")
    build = {"corruptions": _corruptions, "ood": _ood, "calibration": _calibration}.get(str(analysis))
    if build is None:
        return [Section("Monitoring", paragraphs=[f"Unknown monitoring analysis {analysis!r}."])]
    section = build(data)
    figures, notes = _figures(folder, _images(data.get("files")))
    section.figures += figures
    section.paragraphs += notes
    return [section]


def _pct(v: Any) -> Any:
    return round(100 * v, 2) if isinstance(v, int | float) and not isinstance(v, bool) else v


def _rows(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return [r for r in data.get(key) or [] if isinstance(r, dict)]


def _corruptions(data: dict[str, Any]) -> Section:
    s = Section("Corruptions (MNIST-C)", paragraphs=[
        "Error (%) on the clean test images and under each of MNIST-C's 15 corruptions at the severities of the "
        "published set (Mu and Gilmer 2019), on the same images for every model. The mean corruption error "
        "averages the 15; 'relative' is the mean error divided by the clean error."])
    names = [str(n) for n in data.get("corruptions") or []]
    rows = _rows(data, "rows")
    table = [[name] + [_pct((r.get("errors") or {}).get(name)) for r in rows] for name in names]
    table = [["clean"] + [_pct(r.get("clean_error")) for r in rows], *table,
             ["mean corruption error"] + [_pct(r.get("mean_error")) for r in rows],
             ["relative to clean (x)"] + [r.get("mean_relative") for r in rows]]
    s.tables.append(Table(["error (%)"] + [str(r.get("model")) for r in rows], table, "Error per corruption"))
    s.paragraphs += [str(v) for v in data.get("verdicts") or []]
    return s


def _ood(data: dict[str, Any]) -> Section:
    s = Section("Out-of-distribution detection", paragraphs=[
        "Each detector scores how in-distribution an input looks from the classifier alone; AUROC, AUPR (in and "
        "out) and the false-positive rate at 95% true positives (%) for telling the test set from each "
        "out-of-distribution set. Learned detectors are fitted on training data only."])
    rows = _rows(data, "rows")
    s.tables.append(Table(["model", "detector", "set", "AUROC", "AUPR-in", "AUPR-out", "FPR at 95% TPR"],
                          [[r.get("model"), r.get("method"), r.get("ood"), _pct(r.get("auroc")), _pct(r.get("aupr_in")),
                            _pct(r.get("aupr_out")), _pct(r.get("fpr_at_95_tpr"))] for r in rows], "Every detector"))
    best = _rows(data, "best")
    if best:
        s.tables.append(Table(["model", "best detector", "mean AUROC", "worst set", "its AUROC"],
                              [[b.get("model"), b.get("method"), _pct(b.get("mean_auroc")), b.get("worst_set"),
                                _pct(b.get("worst_auroc"))] for b in best], "The best detector of each model"))
    mis = _rows(data, "misclassification")
    if mis:
        s.tables.append(Table(["model", "detector", "AUROC (right vs wrong)", "AUPR (errors)", "errors"],
                              [[m.get("model"), m.get("method"), _pct(m.get("auroc")), _pct(m.get("aupr_error")),
                                m.get("errors")] for m in mis], "Misclassification detection"))
    for skip in _rows(data, "skipped"):
        s.paragraphs.append(f"Skipped {skip.get('set')}: {skip.get('reason')}")
    return s


def _calibration(data: dict[str, Any]) -> Section:
    s = Section("Calibration", paragraphs=[
        "Expected and maximum calibration error (15 equal-width bins), negative log-likelihood and Brier score on "
        "the test set, before and after temperature scaling fitted on held-out data (Guo et al. 2017); "
        "temperature scaling never changes a prediction."])
    rows = _rows(data, "rows")
    table = []
    for r in rows:
        b, a = r.get("before") or {}, r.get("after") or {}
        table.append([r.get("model"), r.get("temperature"), _pct(b.get("ece")), _pct(a.get("ece")), _pct(b.get("mce")),
                      _pct(a.get("mce")), b.get("nll"), a.get("nll"), b.get("brier"), a.get("brier"),
                      r.get("predictions_changed")])
    headers = ["model", "T", "ECE (%)", "ECE scaled (%)", "MCE (%)", "MCE scaled (%)", "NLL", "NLL scaled", "Brier",
               "Brier scaled", "predictions changed"]
    s.tables.append(Table(headers, table, "Before and after temperature scaling"))
    shift = _rows(data, "shift_summary")
    if shift:
        s.tables.append(Table(["model", "severity", "mean error (%)", "mean ECE (%)", "mean ECE scaled (%)"],
                              [[r.get("model"), r.get("severity"), _pct(r.get("error")), _pct(r.get("ece")),
                                _pct(r.get("ece_scaled"))] for r in shift],
                              "Calibration under shift: the 11 corruptions with a severity scale, averaged"))
    return s
