"""The page model: a tiny intermediate form between results JSON and HTML.

Every kind of result (evaluation, attack, training run, experiment, demo) is turned into these few dataclasses,
so one template renders them all and a new kind of result needs only a builder, never new HTML.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Table:
    """Rows of cells under headers; cells are raw values, formatted when rendered."""

    headers: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class Figure:
    """A PNG, SVG or JPEG file, inlined into the page as a data: URI."""

    path: Path
    caption: str = ""


@dataclass
class Section:
    """A titled part of the page. ``flags`` hold ``code``, ``message`` and optionally ``advice``;
    ``cards`` are model cards as dicts."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    flags: list[dict[str, str]] = field(default_factory=list)
    cards: list[dict[str, Any]] = field(default_factory=list)
    subsections: list[Section] = field(default_factory=list)


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


@dataclass
class Page:
    """The whole report: a title, its sections, the folder it came from and when it was rendered."""

    title: str
    subtitle: str = ""
    sections: list[Section] = field(default_factory=list)
    source: str = ""
    generated: str = field(default_factory=_now)


# Image files a figure may be, and the media type each is inlined as.
IMAGE_TYPES = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


# --- building tables from plain JSON values --------------------------------------------------------------


def key_value_table(data: dict[str, Any], caption: str = "", skip: Iterable[str] = ()) -> Table:
    """Two columns, the key (made readable) and its value; the key also decides how a number is shown."""
    skip = set(skip)
    return Table(["", "value"], [[label(k), v] for k, v in data.items() if k not in skip and v is not None], caption)


def records_table(records: Any, caption: str = "") -> Table | None:
    """A list of dicts as a table whose columns are every key that occurs, in order of appearance."""
    if not is_records(records):
        return None
    headers = list(dict.fromkeys(k for r in records for k in r))
    return Table([label(h) for h in headers], [[r.get(h) for h in headers] for r in records], caption)


def is_records(value: Any) -> bool:
    """A non-empty list of dicts: something to show as a table."""
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def label(key: Any) -> str:
    """``wall_time_s`` -> ``wall time (s)``."""
    text = str(key)
    text = text[:-2] + " (s)" if text.endswith("_s") else text
    return text.replace("_", " ")
