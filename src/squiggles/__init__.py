"""squiggles: find adversarial examples in neural-network classifiers and iron them out.

Public names load lazily, so ``import squiggles`` (and ``squiggles --version``) stays quick.

Example:
    >>> import squiggles
    >>> net = squiggles.build_model("linear", in_shape=(4,), num_classes=3)
    >>> type(net).__name__
    'Sequential'
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_dataset": "squiggles.data",
    "load_tensors": "squiggles.data",
    "Dataset": "squiggles.data",
    "build_model": "squiggles.models",
    "Normalize": "squiggles.models",
    "with_normalization": "squiggles.models",
    "save_model": "squiggles.checkpoints",
    "load_model": "squiggles.checkpoints",
    "ModelCard": "squiggles.checkpoints",
    "TrainConfig": "squiggles.train",
    "train_model": "squiggles.train",
    "accuracy": "squiggles.runtime",
    "evaluate": "squiggles.evaluation",
    "EvalResult": "squiggles.evaluation",
    "SquigglesError": "squiggles.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'squiggles' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
