"""The rendered report in a real browser: headless Chromium (Debian's) driven by Playwright.

Skipped when Chromium or Playwright is missing, unless ``SQUIGGLES_REQUIRE_BROWSER=1`` (CI), where that is a
failure. ``SQUIGGLES_SCREENSHOT=FILE.png`` keeps the full-page screenshot for a person to look at.
`check_page_in_browser` is meant for reuse by other tests (the demo's report, for one).
"""

from __future__ import annotations

import importlib.util
import io
import os
from pathlib import Path
from typing import Any

import pytest
from test_report import attack_summary, evaluation, experiment, train_card, write_json, write_png

from squiggles.report.html import write_report

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL = "apt-get install chromium && pip install playwright"


def require_browser() -> None:
    """Skip (or, under ``SQUIGGLES_REQUIRE_BROWSER=1``, fail) when Chromium or Playwright is missing."""
    missing = [what for what, ok in (("chromium", CHROMIUM.exists()), ("playwright", _has_playwright())) if not ok]
    if not missing:
        return
    message = f"needs {' and '.join(missing)} for the browser check: {INSTALL}"
    if os.environ.get("SQUIGGLES_REQUIRE_BROWSER") == "1":
        pytest.fail(message)
    pytest.skip(message)


def _has_playwright() -> bool:
    return importlib.util.find_spec("playwright") is not None


def check_page_in_browser(html_path: Path, screenshot: Path | None = None) -> dict[str, Any]:
    """Open ``html_path`` in headless Chromium; report console errors, page errors, each image's natural width,
    and the distinct colours and non-white fraction of a full-page screenshot (saved to ``screenshot`` if given)."""
    from playwright.sync_api import sync_playwright

    console_errors: list[str] = []
    page_errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            page.goto(Path(html_path).resolve().as_uri(), wait_until="load")
            widths = page.evaluate("() => Array.from(document.images, img => img.complete ? img.naturalWidth : 0)")
            png = page.screenshot(full_page=True, path=str(screenshot) if screenshot else None)
        finally:
            browser.close()
    return {"console_errors": console_errors, "page_errors": page_errors, "image_widths": widths, **_colours(png)}


def _colours(png: bytes) -> dict[str, Any]:
    """How much is drawn: distinct colours, and the fraction of pixels that are not (near) white."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    colours = img.getcolors(maxcolors=img.width * img.height) or []
    non_white = sum(count for count, rgb in colours if min(rgb) < 240)
    return {"distinct_colours": len(colours), "non_white_fraction": non_white / (img.width * img.height)}


def write_fixture_report(folder: Path) -> Path:
    """A report with every part the template draws: flags, cards, tables, a guard, and three inlined PNGs."""
    write_json(folder / "results.json", experiment())
    write_png(folder / "a.png", (320, 200)), write_png(folder / "b.png", (200, 120))
    write_json(folder / "linf.json", evaluation())
    write_png(folder / "linf.curve.png", (240, 160))
    write_json(folder / "summary.json", attack_summary())  # its examples.png is missing: a visible note
    write_json(folder / "card.json", train_card())
    return write_report(folder)


def test_report_renders_cleanly_in_chromium(tmp_path):
    require_browser()
    html = write_fixture_report(tmp_path)
    shot = Path(os.environ["SQUIGGLES_SCREENSHOT"]) if os.environ.get("SQUIGGLES_SCREENSHOT") else None
    found = check_page_in_browser(html, shot or tmp_path / "report.png")
    assert found["console_errors"] == [] and found["page_errors"] == []
    assert len(found["image_widths"]) == 3 and all(w > 0 for w in found["image_widths"])
    assert found["distinct_colours"] > 10
    assert 0.02 < found["non_white_fraction"] < 0.98
