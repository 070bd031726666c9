"""Small file helpers shared by checkpoints, results and datasets: atomic writes and provenance."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from squiggles.errors import SquigglesError


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through a temporary file in the same folder and rename it into place.

    A crash at any moment leaves either the old file or the new one, never half of one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    atomic_write(path, lambda p: p.write_text(text))


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomically write tensors (moved to CPU, made contiguous) as a safetensors file."""
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    atomic_write(path, lambda p: save_file(flat, str(p), metadata=metadata))


def write_state(path: Path, tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> None:
    """Atomically write tensors plus a JSON header (in the safetensors metadata): one file, one rename."""
    write_safetensors(path, tensors, metadata={"header": json.dumps(header, default=_json_default)})


def read_state(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and JSON header written by `write_state`; a clear error names ``what`` when it is unreadable."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {})["header"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as exc:
        raise SquigglesError(f"{what} {path} is unreadable ({exc}); delete it to start afresh") from None
    return tensors, header


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def versions() -> dict[str, str]:
    """Library versions recorded in every card and result, for provenance."""
    import numpy

    from squiggles import __version__

    return {
        "squiggles": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def ensure_writable_dir(path: Path) -> Path:
    """Create ``path`` if needed and check we can write there; a clear error otherwise."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SquigglesError(f"cannot create output folder {str(path)!r}: {exc.strerror}") from None
    if not path.is_dir():
        raise SquigglesError(f"output path {str(path)!r} exists and is not a folder")
    if not os.access(path, os.W_OK):
        raise SquigglesError(f"output folder {str(path)!r} is not writable")
    return path
