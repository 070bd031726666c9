"""Saved models: ``model.safetensors`` (weights) plus ``card.json`` (everything needed to rebuild and trust them).

Nothing here unpickles: weights are safetensors, the card is JSON, and the architecture is rebuilt from
its registry name or the user's ``package.module:factory``.

Example:
    >>> import tempfile, torch
    >>> from squiggles import build_model, save_model, load_model
    >>> net = build_model("linear", in_shape=(4,), num_classes=3)
    >>> d = tempfile.mkdtemp()
    >>> _ = save_model(net, d, {"arch": "linear", "arch_kwargs": {"in_shape": [4], "num_classes": 3}})
    >>> bool(torch.equal(load_model(d)(torch.ones(1, 4)), net(torch.ones(1, 4))))
    True
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from squiggles._io import versions, write_json, write_safetensors
from squiggles.errors import ModelError
from squiggles.models import build_model

WEIGHTS = "model.safetensors"
CARD = "card.json"


@dataclass
class ModelCard:
    """What a saved model is, where it came from and how good it is."""

    arch: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    bounds: tuple[float, float] = (0.0, 1.0)
    recipe: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    wall_time_s: float | None = None
    versions: dict[str, str] = field(default_factory=versions)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        if "arch" not in data:
            raise ModelError("model card has no 'arch' field; cannot rebuild the architecture")
        known = {f.name for f in dataclasses.fields(cls)}
        card = cls(**{k: v for k, v in data.items() if k in known})
        card.bounds = tuple(card.bounds)  # type: ignore[assignment]
        return card


def save_model(
    model: nn.Module, directory: str | Path, card: ModelCard | dict[str, Any], *, overwrite: bool = False
) -> Path:
    """Write ``model.safetensors`` and ``card.json`` into ``directory`` (atomically, file by file).

    Refuses to replace an existing model unless ``overwrite=True``, so nothing a user had is lost.
    """
    directory = Path(directory)
    card = card if isinstance(card, ModelCard) else ModelCard.from_dict(dict(card))
    if (directory / WEIGHTS).exists() and not overwrite:
        raise ModelError(f"{directory / WEIGHTS} already exists; choose another folder or pass overwrite=True")
    state = {k: v for k, v in model.state_dict().items()}
    write_safetensors(directory / WEIGHTS, state, metadata={"format": "pt", "arch": card.arch})
    write_json(directory / CARD, card.to_dict())
    return directory


def read_card(directory: str | Path) -> ModelCard:
    """Read and validate ``card.json`` of a saved model."""
    path = Path(directory) / CARD
    if not path.exists():
        raise ModelError(
            f"no {CARD} in {str(directory)!r}: not a squiggles model folder (train one with `squiggles train`)"
        )
    try:
        return ModelCard.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ModelError(f"{path} is not a valid model card: {exc}") from None


def load_weights(model: nn.Module, weights: str | Path) -> nn.Module:
    """Load a safetensors state dict into ``model``, naming missing or unexpected keys on mismatch."""
    path = Path(weights)
    if not path.exists():
        raise ModelError(f"weights file {str(path)!r} does not exist")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"{path} is not a readable safetensors file: {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ModelError(f"weights in {path} do not fit the architecture: {' '.join(first[:3])}") from None
    return model


def load_model(directory: str | Path, device: str | torch.device | None = None) -> nn.Module:
    """Rebuild a saved model from its card and weights; returned in eval mode (on ``device`` if given)."""
    card = read_card(directory)
    model = build_model(card.arch, **_arch_kwargs(card.arch_kwargs))
    load_weights(model, Path(directory) / WEIGHTS)
    model.eval()
    return model.to(device) if device is not None else model


def load_user_model(ref: str, weights: str | Path | None, *, any_callable: bool = False, **kwargs: Any) -> nn.Module:
    """A user's own ``package.module:factory`` with optional safetensors weights, in eval mode.

    ``any_callable``: the factory may return any callable (a label-only model); it is returned as it is."""
    model = build_model(ref, any_callable=any_callable, **kwargs)
    if not isinstance(model, nn.Module):
        if weights is not None:
            raise ModelError(f"--weights: {ref} returned a {type(model).__name__}, not an nn.Module, so there is "
                             "nothing to load weights into; load them inside your factory")
        return model
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


def _arch_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    # JSON turns tuples into lists; registry factories want a tuple shape.
    out = dict(kwargs)
    if "in_shape" in out:
        out["in_shape"] = tuple(out["in_shape"])
    return out
