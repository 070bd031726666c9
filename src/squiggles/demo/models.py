"""The demo's cast: which model plays which role, and where each comes from.

A role is filled by a zoo name (the default), a model folder, or the user's own ``package.module:factory``
with its weights written as ``package.module:factory@weights.safetensors``. A zoo model whose weights are not
in this build (or every zoo model, with ``retrain``) is trained from its recipe into ``OUT/models/NAME``;
an earlier demo's training there is reused rather than repeated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from squiggles.errors import SquigglesError

# Role -> default zoo model. The observers stand in for human judges in the wormholes experiment: robust
# models trained with other seeds and architectures, never attacked themselves.
DEFAULT_ROLES: dict[str, str] = {
    "standard": "mnist-standard",
    "robust": "mnist-linf-0.3",
    "l2": "mnist-l2-2.0",
}
DEFAULT_OBSERVERS: tuple[str, ...] = ("mnist-l2-observer-a", "mnist-l2-observer-b")


@dataclass
class Cast:
    """The loaded models by role, and for each where it came from (reported in the results)."""

    models: dict[str, nn.Module]
    observers: list[nn.Module]
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``module:factory@weights`` -> (``module:factory``, ``weights``); anything else -> (ref, None)."""
    from squiggles.models import is_import_path

    head, sep, weights = ref.rpartition("@")
    if sep and is_import_path(head):
        return head, weights
    return ref, None


def load_ref(ref: str, models_dir: Path, *, retrain: bool, device: Any, log: Callable[[str], None],
             progress: bool) -> tuple[nn.Module, dict[str, Any]]:
    """One role's model and a description of its source: ``{"ref", "kind", "card", "trained_now"}``."""
    from squiggles.checkpoints import load_model, load_user_model, read_card
    from squiggles.models import is_import_path
    from squiggles.zoo import ZOO, is_shipped, load_zoo_model, zoo_card

    target, weights = parse_ref(ref)
    if is_import_path(target):
        if weights is None:
            raise SquigglesError(f"{ref!r}: a factory needs its weights, written as {target}@weights.safetensors")
        return load_user_model(target, weights).to(device), {"ref": ref, "kind": "factory", "card": None,
                                                            "trained_now": False}
    if Path(target).exists():
        return load_model(target, device), {"ref": ref, "kind": "folder", "card": read_card(target).to_dict(),
                                            "trained_now": False}
    if target not in ZOO:
        raise SquigglesError(f"{ref!r} is not a model folder, a zoo name ({', '.join(ZOO)}) or "
                             "package.module:factory@weights.safetensors")
    if is_shipped(target) and not retrain:
        return load_zoo_model(target, device), {"ref": ref, "kind": "zoo", "card": zoo_card(target).to_dict(),
                                                "trained_now": False}
    folder, trained = _train_zoo_model(target, models_dir, retrain=retrain, log=log, progress=progress)
    return load_model(folder, device), {"ref": ref, "kind": "zoo (trained here)", "folder": str(folder),
                                        "card": read_card(folder).to_dict(), "trained_now": trained}


def _train_zoo_model(name: str, models_dir: Path, *, retrain: bool, log: Callable[[str], None],
                     progress: bool) -> tuple[Path, bool]:
    """``models_dir/name``, trained from the zoo recipe unless a complete earlier run is there."""
    from squiggles.train.state import CHECKPOINT
    from squiggles.zoo import get_entry, reproduce, train_command

    folder = models_dir / name
    if _finished(folder) and not retrain:
        log(f"reusing {name} trained by an earlier demo in {folder}")
        return folder, False
    if retrain and folder.exists():
        _set_aside(folder)
    log(f"training {name} (not in this build{' or --retrain' if retrain else ''}): "
        f"{train_command(get_entry(name).train_args, str(folder))}")
    resume = (folder / CHECKPOINT).exists()
    reproduce(name, folder, extra_args=("--resume",) if resume else (), progress=progress)
    return folder, True


def _finished(folder: Path) -> bool:
    """A training folder whose card records every epoch of its recipe (an interrupted run is resumed instead)."""
    from squiggles.checkpoints import WEIGHTS, read_card

    if not (folder / WEIGHTS).is_file():
        return False
    try:
        card = read_card(folder)
    except SquigglesError:
        return False
    return len(card.metrics.get("history", [])) >= int(card.recipe.get("epochs", 0) or 0) > 0


def _set_aside(folder: Path) -> None:
    """Keep the previous training of a retrained model (nothing the user had is lost) as ``NAME.old-K``."""
    k = 1
    while folder.with_name(f"{folder.name}.old-{k}").exists():
        k += 1
    folder.rename(folder.with_name(f"{folder.name}.old-{k}"))


def load_cast(roles: dict[str, str], observers: list[str], models_dir: Path, *, retrain: bool, device: Any,
              log: Callable[[str], None], progress: bool) -> Cast:
    """Every role's model (training what is missing) and the observers."""
    cast = Cast(models={}, observers=[])
    for role, ref in roles.items():
        model, source = load_ref(ref, models_dir, retrain=retrain, device=device, log=log, progress=progress)
        cast.models[role] = model
        cast.sources[role] = source
    for k, ref in enumerate(observers):
        model, source = load_ref(ref, models_dir, retrain=retrain, device=device, log=log, progress=progress)
        cast.observers.append(model)
        cast.sources[f"observer-{k + 1}"] = source
    return cast
