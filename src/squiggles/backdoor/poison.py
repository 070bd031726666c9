"""Poisoning a training set (BadNets, Gu et al. 2017, arXiv 1708.06733) and measuring the backdoor it plants.

`poison` stamps a trigger on an exact share of the *eligible* points (those a label map can change: every point not
already of the target class for all-to-one, every point for all-to-all) and relabels them; the count is
``floor(rate * eligible + 0.5)`` (the nearest integer, halves up) and the points are drawn by a generator seeded
with ``seed``, so a poisoning is reproducible from its `PoisonSpec` alone. The attack success rate (ASR) is the
share of stamped test points of the eligible classes that the model sends where the map says.

`squiggles train --poison ...` applies `poison_dataset` before the one training loop and keeps, beside the model,
``poison.json`` (the spec and the poisoned indices, so a scan can score its suspects) and ``trigger.safetensors``
(the trigger's mask and pattern).

Example:
    >>> import torch
    >>> from squiggles.backdoor.triggers import Pattern, LabelMap
    >>> x, y = torch.rand(100, 1, 8, 8), torch.arange(100) % 10
    >>> out = poison(x, y, Pattern(), LabelMap("all-to-one", 0), 0.1, num_classes=10, seed=0)
    >>> len(out.indices), out.eligible, bool((out.y[out.indices] == 0).all())
    (9, 90, True)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from squiggles.backdoor.triggers import MAPS, Bounds, LabelMap, Stamp, Trigger, make_trigger
from squiggles.errors import SquigglesError

POISON_FILE = "poison.json"
TRIGGER_FILE = "trigger.safetensors"


@dataclass(frozen=True)
class PoisonSpec:
    """Everything that determines a poisoning: the trigger (``describe()`` of one, or with ``image`` a file path
    for a blend), the label map and its target, the rate and the seed. JSON, so it lives in the card's recipe."""

    trigger: dict[str, Any]
    label_map: str = "all-to-one"
    target: int | None = 0
    rate: float = 0.1
    seed: int = 0

    def validate(self) -> None:
        """The checks that need no data: the rate, the map, the trigger's own options."""
        if not 0 < self.rate < 1:
            raise SquigglesError(f"--poison-rate must be in (0, 1), e.g. 0.1; got {self.rate}")
        if self.label_map not in MAPS:
            raise SquigglesError(f"--poison-map {self.label_map!r} is unknown; choose one of {', '.join(MAPS)}")
        self.make_trigger()

    def make_trigger(self) -> Trigger:
        options = {k: v for k, v in self.trigger.items() if k != "kind"}
        if isinstance(options.get("image"), str):
            options["image"] = load_image(options["image"])
        return make_trigger(str(self.trigger.get("kind")), **options)

    def labels(self) -> LabelMap:
        return LabelMap(self.label_map, self.target if self.label_map == "all-to-one" else None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PoisonSpec:
        known = {"trigger", "label_map", "target", "rate", "seed"}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Poisoned:
    """A poisoned copy of the data and which points were poisoned (sorted indices)."""

    x: Tensor
    y: Tensor
    indices: Tensor
    eligible: int


def poisoned_count(rate: float, eligible: int) -> int:
    """The exact number of points a ``rate`` poisons among ``eligible`` ones: the nearest integer, halves up."""
    return int(math.floor(rate * eligible + 0.5))


def poison(x: Tensor, y: Tensor, trigger: Trigger, label_map: LabelMap, rate: float, *, num_classes: int,
           bounds: Bounds = (0.0, 1.0), seed: int = 0) -> Poisoned:
    """A copy of ``(x, y)`` with ``poisoned_count(rate, eligible)`` eligible points stamped and relabelled.

    Example: ``poison(x, y, Pixel(), LabelMap("all-to-all"), 0.1, num_classes=10, seed=1)``.
    """
    if not 0 < rate < 1:
        raise SquigglesError(f"--poison-rate must be in (0, 1), e.g. 0.1; got {rate}")
    label_map.check(num_classes)
    trigger.check(tuple(x.shape[1:]))
    eligible = label_map.eligible(y).nonzero().flatten()
    k = poisoned_count(rate, len(eligible))
    if k == 0:
        raise SquigglesError(f"--poison-rate {rate} poisons no point of the {len(eligible)} eligible ones; "
                             f"raise it to at least {0.5 / max(len(eligible), 1):.2g}")
    g = torch.Generator().manual_seed(int(seed))
    pick = torch.randperm(len(eligible), generator=g)[:k]
    indices = eligible.cpu()[pick].sort().values.to(y.device)
    x, y = x.clone(), y.clone()
    x[indices] = trigger.apply(x[indices], bounds)
    y[indices] = label_map(y[indices], num_classes)
    return Poisoned(x, y, indices, len(eligible))


def poison_dataset(data: Any, spec: PoisonSpec) -> tuple[Any, Poisoned]:
    """`poison` on a `squiggles.data.Dataset` by ``spec``: the poisoned dataset and what was done."""
    from squiggles.data import Dataset

    spec.validate()
    out = poison(data.x, data.y, spec.make_trigger(), spec.labels(), spec.rate, num_classes=data.num_classes,
                 bounds=data.bounds, seed=spec.seed)
    return Dataset(data.name, data.split, out.x, out.y, data.num_classes, data.bounds), out


@torch.no_grad()
def attack_success_rate(model: nn.Module, x: Tensor, y: Tensor, trigger: Trigger, label_map: LabelMap, *,
                        num_classes: int, bounds: Bounds = (0.0, 1.0), batch_size: int = 1000) -> tuple[float, int]:
    """Share of the stamped eligible points of ``(x, y)`` that ``model`` sends where ``label_map`` says, and their
    count. Example: ``asr, n = attack_success_rate(model, test.x, test.y, Pattern(), LabelMap(), num_classes=10)``."""
    from squiggles.runtime import predict

    keep = label_map.eligible(y)
    xs, ys = x[keep], y[keep]
    if len(xs) == 0:
        raise SquigglesError("no test point of a class the label map changes: the attack success rate is undefined")
    hits = 0
    for i in range(0, len(xs), batch_size):
        stamped = trigger.apply(xs[i:i + batch_size], bounds)
        pred = predict(model, stamped, batch_size).argmax(1).to(ys.device)
        hits += int((pred == label_map(ys[i:i + batch_size], num_classes)).sum())
    return hits / len(xs), len(xs)


def save_poisoning(folder: Path, spec: PoisonSpec, poisoned: Poisoned, trigger: Trigger, shape: tuple[int, ...],
                   bounds: Bounds, n_train: int) -> list[str]:
    """Write ``poison.json`` (spec, indices, counts) and ``trigger.safetensors`` (mask, pattern) into ``folder``."""
    from squiggles._io import write_json, write_safetensors

    mask, pattern = trigger.stamp(shape, bounds)
    write_safetensors(folder / TRIGGER_FILE, {"mask": mask, "pattern": pattern})
    write_json(folder / POISON_FILE, {"spec": spec.to_dict(), "trigger": trigger.describe(),
                                      "label_map": spec.labels().describe(), "train_points": n_train,
                                      "eligible": poisoned.eligible, "poisoned": len(poisoned.indices),
                                      "indices": poisoned.indices.tolist()})
    return [POISON_FILE, TRIGGER_FILE]


def load_poisoning(folder: Path) -> dict[str, Any] | None:
    """What `save_poisoning` wrote, with ``"spec"`` (a `PoisonSpec`), ``"indices"``, ``"stamp"`` (the trigger as a
    `Stamp`) and ``"labels"`` (its `LabelMap`); None where there is none."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / POISON_FILE).is_file():
        return None
    try:
        record = json.loads((folder / POISON_FILE).read_text())
        spec = PoisonSpec.from_dict(record["spec"])
        tensors = load_file(str(folder / TRIGGER_FILE)) if (folder / TRIGGER_FILE).is_file() else None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SquigglesError(f"{folder / POISON_FILE} is unreadable ({exc}); retrain the model or remove the file") \
            from None
    trigger: Trigger = Stamp(tensors["mask"], tensors["pattern"]) if tensors else spec.make_trigger()
    return {**record, "spec": spec, "indices": torch.tensor(record["indices"], dtype=torch.int64),
            "stamp": trigger, "labels": spec.labels()}


def load_image(path: str | Path) -> Tensor:
    """One image for a blend trigger: array ``x`` of a ``.npz`` or ``.safetensors`` file (its first row if it holds
    several), as float32."""
    import numpy as np

    p = Path(path).expanduser()
    if p.suffix.lower() not in (".npz", ".safetensors") or not p.is_file():
        raise SquigglesError(f"--trigger-image {path}: no such .npz/.safetensors file holding an array 'x'")
    try:
        if p.suffix.lower() == ".npz":
            with np.load(p, allow_pickle=False) as z:
                x = torch.from_numpy(z["x"])
        else:
            from safetensors.torch import load_file

            x = load_file(str(p))["x"]
    except (OSError, ValueError, KeyError) as exc:
        raise SquigglesError(f"--trigger-image {path}: cannot read an array 'x' ({exc})") from None
    return x.to(torch.float32)
