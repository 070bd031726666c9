"""Render a `Page` as one self-contained HTML file: Jinja2 with autoescaping, images inlined, CSS inline.

Everything from a results file (model names, paths, card fields, flag messages) reaches the page through
autoescaping; the template marks nothing ``|safe``.
"""

from __future__ import annotations

import base64
import functools
import math
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from squiggles.errors import SquigglesError
from squiggles.report.builders import build_page
from squiggles.report.page import IMAGE_TYPES, Page

TEMPLATE = "report.html.j2"
GENERATOR = '<meta name="generator" content="squiggles'
# The compact block a model card is shown as: (dotted key in the card, label).
CARD_FIELDS = (
    ("arch", "architecture"),
    ("arch_kwargs", "arguments"),
    ("weights", "weights"),
    ("dataset", "dataset"),
    ("recipe", "recipe"),
    ("metrics.clean_accuracy", "clean accuracy"),
    ("metrics.robust_accuracy", "robust accuracy"),
    ("seed", "seed"),
    ("wall_time_s", "wall time (s)"),
    ("versions", "versions"),
    ("created", "created"),
)


def render(page: Page) -> str:
    """The page as one HTML document."""
    from squiggles import __version__

    return environment().get_template(TEMPLATE).render(page=page, version=__version__)


def write_report(folder_or_file: str | Path, out: Path | None = None, overwrite: bool = False) -> Path:
    """Render a results folder (or one results ``.json``) and write the page; return its path.

    The default output is ``FOLDER/report.html`` (``<stem>.html`` beside a file). An earlier page written by
    squiggles is replaced; any other file is refused unless ``overwrite=True``, so nothing a user had is lost.
    """
    from squiggles._io import atomic_write  # imports torch: only when a page is really written

    source = Path(folder_or_file)
    page = build_page(source)
    target = Path(out) if out is not None else default_output(source)
    check_replaceable(target, overwrite)
    text = render(page)
    atomic_write(target, lambda p: p.write_text(text, encoding="utf-8"))
    return target


def default_output(source: Path) -> Path:
    return source.with_suffix(".html") if source.is_file() else source / "report.html"


def check_replaceable(target: Path, overwrite: bool) -> None:
    """Refuse an output that is not an HTML file name, is a folder, or is someone else's file."""
    if target.suffix.lower() not in (".html", ".htm"):
        raise SquigglesError(f"{target}: give an .html file name for the report")
    if target.is_dir():
        raise SquigglesError(f"{target} is a folder; give an .html file name for the report")
    if target.exists() and not overwrite and not written_by_squiggles(target):
        raise SquigglesError(
            f"{target} exists and was not written by squiggles; use --overwrite (overwrite=True) or another --out"
        )


def written_by_squiggles(path: Path) -> bool:
    """Whether ``path`` carries our generator tag, which sits in the first lines of every page we write."""
    try:
        with path.open("rb") as f:
            head = f.read(4096).decode("utf-8", errors="replace")
    except OSError:
        return False
    return GENERATOR in head


# --- the template's environment and filters ------------------------------------------------------------


@functools.cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("squiggles.report", "templates"),
        autoescape=select_autoescape(("html", "j2"), default_for_string=True, default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(fmt=format_value, data_uri=data_uri, card_rows=card_rows)
    return env


def format_value(value: Any, *keys: Any) -> str:
    """A cell as text. Fractions under a key naming an accuracy or a rate become percentages with 2 decimals;
    other floats keep 4 significant digits. Returns plain text, which the template escapes."""
    return _compact(value, keys, nested=False)


def _compact(value: Any, keys: tuple[Any, ...], nested: bool) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return _float(value, keys)
    if isinstance(value, dict):
        text = ", ".join(f"{k}={_compact(v, (k,), True)}" for k, v in value.items())
        return f"{{{text}}}" if nested else text
    if isinstance(value, list | tuple):
        text = ", ".join(_compact(v, keys, True) for v in value)
        return f"[{text}]" if nested else text
    return str(value)


def _float(value: float, keys: tuple[Any, ...]) -> str:
    if math.isfinite(value) and 0.0 <= value <= 1.0 and any(is_fraction_key(k) for k in keys):
        return f"{100 * value:.2f}%"
    return f"{value:.4g}"


def is_fraction_key(key: Any) -> bool:
    """``robust_accuracy``, ``accuracy after``, ``success rate``, ``test_acc``; not ``learning_rate``."""
    if not isinstance(key, str):
        return False
    words = key.lower().replace("-", "_").replace(" ", "_").split("_")
    if "learning" in words:
        return False
    return any(w.endswith("accuracy") or w in ("acc", "rate") for w in words)


def data_uri(path: Path) -> str:
    """The image file as a ``data:`` URI, or "" when it is missing, unreadable or not an image type we know."""
    kind = IMAGE_TYPES.get(Path(path).suffix.lower())
    try:
        raw = Path(path).read_bytes() if kind else b""
    except OSError:
        return ""
    return f"data:{kind};base64,{base64.b64encode(raw).decode('ascii')}" if raw else ""


def card_rows(card: dict[str, Any]) -> list[tuple[str, str]]:
    """A model card's headline fields as (label, text); missing fields are left out."""
    rows = []
    for dotted, label in CARD_FIELDS:
        value: Any = card
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value not in (None, "", {}, []):
            rows.append((label, format_value(value, dotted.rsplit(".", 1)[-1])))
    return rows
