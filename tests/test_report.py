"""`squiggles report`: every kind of results folder renders to one self-contained, escaped HTML page.

Fixtures are small JSON files written by hand (the shapes `squiggles evaluate`, `attack` and `train` write),
so nothing here trains or attacks a model. The writers are reused by test_report_browser.py.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

from squiggles.errors import SquigglesError
from squiggles.report import builders
from squiggles.report.html import format_value, render, write_report
from squiggles.report.page import Figure, Page, Section

XSS_SCRIPT = "<script>alert(1)</script>"
XSS_ATTR = '"><img src=x onerror=alert(1)>'


# --- fixture writers -----------------------------------------------------------------------------------


def write_png(path: Path, size: tuple[int, int] = (48, 32)) -> Path:
    """A small colourful PNG (a gradient), so a browser has something to decode and draw."""
    from PIL import Image

    w, h = size
    img = Image.new("RGB", size)
    img.putdata([(x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)) for y in range(h) for x in range(w)])
    img.save(path)
    return path


def model_card(**over: Any) -> dict[str, Any]:
    card = {
        "arch": "small-cnn",
        "arch_kwargs": {"channels": 8},
        "dataset": "mnist",
        "bounds": [0.0, 1.0],
        "recipe": {"method": "pgd", "epochs": 2, "lr": 0.001, "method_options": {"eps": 0.3}},
        "metrics": {"clean_accuracy": 0.9812, "robust_accuracy": 0.731},
        "seed": 0,
        "wall_time_s": 12.5,
        "versions": {"squiggles": "0.1.0", "torch": "2.13.0"},
        "created": "2024-01-01T00:00:00Z",
        "notes": [],
    }
    return {**card, **over}


def evaluation(**over: Any) -> dict[str, Any]:
    """An evaluation result as `squiggles evaluate --out` writes it, at two budgets."""
    stages = [{"stage": "clean", "accuracy": 0.98, "after_reuse": 0.98},
              {"stage": "apgd-ce", "accuracy": 0.75, "broken": 23, "forwards": 4200, "backwards": 4100, "seconds": 1.5},
              {"stage": "square", "accuracy": 0.731, "broken": 2, "forwards": 9000, "backwards": 0, "seconds": 7.25}]
    data = {
        "schema": 1, "kind": "evaluation", "n": 1000,
        "threat": {"norm": "linf", "eps": 0.3, "bounds": [0.0, 1.0]}, "eps": [0.3, 0.4],
        "clean_accuracy": 0.98, "robust_accuracy": 0.731,
        "curve": [{"eps": 0.3, "robust_accuracy": 0.731}, {"eps": 0.4, "robust_accuracy": 0.4125}],
        "breakdown": [{"eps": 0.3, "stages": stages}, {"eps": 0.4, "stages": stages}],
        "attacks": [{"name": "apgd-ce"}, {"name": "square"}], "minimal_norm_prepass": None,
        "flags": [{"code": "CURVE_FLAT", "message": "robust accuracy hardly falls with eps", "advice": "check"}],
        "disagreements": [], "model_calls": {"forwards": 13200, "backwards": 4100}, "wall_time_s": 8.75,
        "seed": 7, "config": {"batch_size": 500}, "versions": {"squiggles": "0.1.0"},
        "model": "runs/madry", "model_card": model_card(), "dataset": "mnist", "split": "test",
        "files": ["linf.curve.png"],
    }
    return {**data, **over}


def attack_summary() -> dict[str, Any]:
    return {
        "attack": "pgd", "n": 200, "clean_accuracy": 0.99, "robust_accuracy": 0.12, "success_rate": 0.8788,
        "targeted": False, "labels_source": "labels", "median_norm": 0.29999, "mean_norm": 0.2876543,
        "forwards": 8200, "backwards": 8000, "mean_queries": 41.0, "wall_time_s": 3.21,
        "threat": {"norm": "linf", "eps": 0.3, "bounds": [0, 1]}, "seed": 0, "config": {"steps": 40},
        "dataset": "mnist", "split": "test", "model": "runs/madry", "model_card": model_card(),
        "created": "2024-01-01T00:00:00Z", "versions": {"squiggles": "0.1.0"},
        "files": ["adversarial.safetensors", "examples.png"],
    }


def train_card() -> dict[str, Any]:
    history = [{"epoch": e, "train_loss": 0.5 / e, "train_acc": 0.8 + e / 100, "test_acc": 0.9 + e / 100,
                "lr": 0.001, "seconds": 4.0} for e in (1, 2, 3)]
    guard = {"config": {"drop": 0.2}, "step_scale": 0.5, "best": 0.61,
             "checks": [{"epoch": 1, "robust": 0.6, "step_scale": 1.0}],
             "rollbacks": [{"epoch": 2, "robust": 0.05, "best": 0.6, "step_scale_before": 1.0,
                            "step_scale_after": 0.5}]}
    robust_eval = {"attacks": "quick", "norm": "linf", "eps": 0.3, "points": 500, "clean_accuracy": 0.98,
                   "breakdown": evaluation()["breakdown"][0]["stages"], "flags": [], "seed": 0}
    metrics = {"clean_accuracy": 0.9731, "test_points": 10000, "history": history, "guard": guard,
               "robust_eval": robust_eval, "robust_accuracy": 0.731}
    return model_card(metrics=metrics)


def experiment(**over: Any) -> dict[str, Any]:
    data = {"kind": "experiment", "name": "Catastrophic overfitting", "summary": "FGSM training collapses.",
            "notes": ["A second paragraph."], "runs": [{"method": "fgsm", "robust_accuracy": 0.0312},
                                                        {"method": "pgd", "robust_accuracy": 0.4471}],
            "epochs": 5, "best_method": "pgd", "figures": [{"path": "a.png", "caption": "Robust accuracy"}, "b.png"]}
    return {**data, **over}


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


# --- each kind of result -------------------------------------------------------------------------------


def test_evaluation_json_renders_numbers_stages_flags_card_and_curve(tmp_path):
    write_json(tmp_path / "linf.json", evaluation())
    write_png(tmp_path / "linf.curve.png")
    text = write_report(tmp_path).read_text()
    for expected in ("98.00%", "73.10%", "41.25%", "CURVE_FLAT", "robust accuracy hardly falls with eps",
                     "apgd-ce", "4200", "7.25", "13200", "small-cnn", "runs/madry", "2.13.0"):
        assert expected in text, expected
    assert "Accuracy after each stage at eps = 0.4" in text
    assert text.count("data:image/png;base64,") == 1


def test_evaluation_with_remedies_shows_both_figures_and_the_reason(tmp_path):
    remedy = {"remedy": "logits", "reason": ["probability-outputs"], "description": "the cascade on the logits",
              "attacked_points": 990, "robust_accuracy_before": [0.99, 0.97], "robust_accuracy_after": [0.7535, 0.4],
              "broke": [236, 570]}
    write_json(tmp_path / "linf.json", evaluation(remedies=[remedy], unremedied_robust_accuracy=0.99, files=[]))
    text = write_report(tmp_path).read_text()
    for expected in ("Remedies applied by the evaluation", "probability-outputs", "99.00%, 97.00%",
                     "75.35%, 40.00%", "robust accuracy before remedies"):
        assert expected in text, expected


def test_single_json_file_renders_beside_it(tmp_path):
    source = write_json(tmp_path / "eval" / "linf.json", evaluation(files=[]))
    write_png(tmp_path / "eval" / "linf.curve.png")
    out = write_report(source)
    assert out == tmp_path / "eval" / "linf.html"
    assert "data:image/png;base64," in out.read_text()


def test_attack_summary(tmp_path):
    write_json(tmp_path / "summary.json", attack_summary())
    write_png(tmp_path / "examples.png")
    text = write_report(tmp_path).read_text()
    for expected in ("87.88%", "12.00%", "0.3", "0.2877", "8200", "steps=40", "small-cnn", "data:image/png;base64,"):
        assert expected in text, expected


def test_training_card_history_guard_and_robust_eval(tmp_path):
    write_json(tmp_path / "card.json", train_card())
    text = write_report(tmp_path).read_text()
    for expected in ("Training history", "93.00%", "97.31%", "Overfitting guard", "1 rollback(s)",
                     "step scale after", "Final robust evaluation", "square", "no flags"):
        assert expected in text, expected


def test_experiment_with_listed_figures(tmp_path):
    write_json(tmp_path / "results.json", experiment())
    write_png(tmp_path / "a.png"), write_png(tmp_path / "b.png")
    text = write_report(tmp_path).read_text()
    assert "<title>Catastrophic overfitting</title>" in text
    for expected in ("FGSM training collapses.", "A second paragraph.", "3.12%", "44.71%", "Robust accuracy"):
        assert expected in text, expected
    assert text.count("data:image/png;base64,") == 2


def test_experiment_without_figure_list_shows_every_image_in_the_folder(tmp_path):
    write_json(tmp_path / "results.json", experiment(figures=None))
    write_png(tmp_path / "x.png"), write_png(tmp_path / "y.png"), write_png(tmp_path / "z.png")
    assert write_report(tmp_path).read_text().count("data:image/png;base64,") == 3


def test_missing_and_outside_figures_are_notes_not_crashes(tmp_path):
    write_json(tmp_path / "r" / "results.json", experiment(figures=["gone.png", "../outside.png"]))
    write_png(tmp_path / "outside.png")
    text = write_report(tmp_path / "r").read_text()
    assert "Figure not available" in text and "gone.png" in text
    assert "outside the results folder" in text and "data:image" not in text


def test_unknown_kind_falls_back_to_generic_with_a_note(tmp_path):
    write_json(tmp_path / "results.json", {"kind": "mystery", "name": "odd", "score": 0.5, "rows": [{"a": 1}]})
    text = write_report(tmp_path).read_text()
    assert "no report builder for kind" in text and "mystery" in text
    assert "score" in text and "<th>a</th>" in text


@pytest.mark.parametrize("target", ["squiggles.no_such_module:sections", "json:loads"])
def test_unloadable_or_failing_builder_falls_back(tmp_path, monkeypatch, target):
    monkeypatch.setitem(builders.BUILDERS, "demo", target)  # the real demo builder is not needed here
    write_json(tmp_path / "results.json", {"kind": "demo", "accuracy": 0.9731})
    text = write_report(tmp_path).read_text()
    assert "Note: " in text and "97.31%" in text


def test_registry_loads_builders_lazily():
    builder, problem = builders.load_builder("experiment")
    assert builder is builders.experiment_sections and not problem
    assert builders.load_builder("nope")[0] is None


# --- safety: escaping, self-containment, never losing a user's file -------------------------------------


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def tags(text: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(text)
    return parser.tags


def test_user_strings_are_escaped(tmp_path):
    card = model_card(arch=XSS_SCRIPT, weights=XSS_ATTR)
    data = evaluation(model=XSS_ATTR, model_card=card, flags=[{"code": XSS_SCRIPT, "message": XSS_ATTR}])
    write_json(tmp_path / "linf.json", data)
    write_json(tmp_path / "results.json", {"kind": "experiment", "name": XSS_SCRIPT, "rows": [{XSS_ATTR: 1}]})
    text = write_report(tmp_path).read_text()
    assert XSS_SCRIPT not in text and "<img src=x" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in text
    found = tags(text)
    assert not [t for t, _ in found if t == "script"]
    assert all(a.get("src", "").startswith("data:image/") for t, a in found if t == "img")
    assert not [a for _, a in found if any(k.startswith("on") for k in a)]


def test_page_is_self_contained(tmp_path):
    write_json(tmp_path / "linf.json", evaluation())
    write_png(tmp_path / "linf.curve.png")
    text = write_report(tmp_path).read_text()
    links = [v or "" for _, a in tags(text) for k, v in a.items() if k in ("src", "href")]
    assert links and all(v.startswith(("data:", "#")) for v in links)
    assert "http://" not in text and "https://" not in text
    assert not [t for t, _ in tags(text) if t in ("script", "iframe", "object", "embed")]
    assert '<meta charset="utf-8">' in text and '<meta name="generator" content="squiggles 0.1.0">' in text


def test_refuses_a_foreign_report_unless_overwrite(tmp_path):
    write_json(tmp_path / "summary.json", attack_summary())
    mine = tmp_path / "report.html"
    mine.write_text("<html>my own notes</html>")
    with pytest.raises(SquigglesError, match="not written by squiggles"):
        write_report(tmp_path)
    assert mine.read_text() == "<html>my own notes</html>"
    assert "87.88%" in write_report(tmp_path, overwrite=True).read_text()


def test_replaces_its_own_report(tmp_path):
    write_json(tmp_path / "summary.json", attack_summary())
    write_report(tmp_path)
    write_json(tmp_path / "summary.json", {**attack_summary(), "success_rate": 0.5})
    assert "50.00%" in write_report(tmp_path).read_text()


def test_empty_folder_names_what_was_expected(tmp_path):
    (tmp_path / "other.json").write_text('{"not": "ours"}')
    with pytest.raises(SquigglesError, match="nothing to report") as err:
        write_report(tmp_path)
    for name in (str(tmp_path), "results.json", "summary.json", "card.json", "evaluation"):
        assert name in str(err.value)


def test_unreadable_results_file_is_a_clear_error(tmp_path):
    (tmp_path / "results.json").write_text("{oops")
    with pytest.raises(SquigglesError, match="results.json"):
        write_report(tmp_path)


def test_render_of_a_page_built_by_hand(tmp_path):
    png = write_png(tmp_path / "f.svg.png")
    page = Page("T", sections=[Section("S", subsections=[Section("Inner", figures=[Figure(png, "cap")])])])
    text = render(page)
    assert "<h3>Inner</h3>" in text and "<figcaption>cap</figcaption>" in text and "data:image/png" in text


@pytest.mark.parametrize(
    ("value", "keys", "expected"),
    [(0.731, ("robust accuracy",), "73.10%"), (0.8788, ("", "success rate"), "87.88%"),
     (0.97312, ("test_acc",), "97.31%"), (0.001, ("lr",), "0.001"), (0.001, ("learning_rate",), "0.001"),
     (1.5, ("accuracy",), "1.5"), (3.14159265, (), "3.142"), (None, (), "–"), (True, (), "yes"), (42, (), "42"),
     ({"norm": "linf", "bounds": [0, 1]}, (), "norm=linf, bounds=[0, 1]"), ([0.1, 0.3], ("eps",), "0.1, 0.3")],
)
def test_format_value(value, keys, expected):
    assert format_value(value, *keys) == expected


# --- the command ---------------------------------------------------------------------------------------


def test_cli_writes_the_page_and_prints_its_path(tmp_path):
    write_json(tmp_path / "card.json", train_card())
    res = run_cli("report", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(tmp_path / "report.html")
    assert "97.31%" in (tmp_path / "report.html").read_text()


def test_cli_empty_folder_is_one_line_and_exit_2(tmp_path):
    res = run_cli("report", str(tmp_path))
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "nothing to report" in res.stderr and "Traceback" not in res.stderr


def test_stage_table_gives_points_settled_before_any_attack_their_own_row():
    from squiggles.report.builders import stage_table

    stages = [{"stage": "clean", "accuracy": 0.98, "after_reuse": 0.90},
              {"stage": "apgd-ce", "accuracy": 0.85, "broken": 5, "forwards": 10, "backwards": 9, "seconds": 1.0}]
    rows = stage_table(stages).rows
    assert [r[0] for r in rows] == ["clean", "smaller budget / minimal-norm pre-pass", "apgd-ce"]
    assert rows[1][1] == 0.90
    assert [r[0] for r in stage_table([{"stage": "clean", "accuracy": 0.9, "after_reuse": 0.9}]).rows] == ["clean"]


def test_patch_summary_renders_its_curve_and_pictures(tmp_path):
    write_png(tmp_path / "patch.png")
    write_png(tmp_path / "worn.png")
    summary = {"kind": "patch", "action": "train", "target": 3, "success_rate": 0.93, "images": 900,
               "patch": {"threat": "patch", "height": 8, "width": 8}, "model": "mnist-standard",
               "history": [{"step": 100, "train_success": 0.5}, {"step": 200, "train_success": 0.9}],
               "files": ["patch.safetensors", "patch.png", "worn.png"]}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    html = write_report(tmp_path).read_text()
    assert "Universal patch to class 3 on mnist-standard" in html
    assert "train success" in html and html.count("data:image/png;base64") == 2
