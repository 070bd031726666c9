"""The model zoo: trained models shipped with squiggles, each with the recipe that reproduces it.

``ZOO`` maps names to `ZooEntry` (summary, role, ``squiggles train`` arguments). The weights and card of a
shipped model live in ``squiggles/zoo/weights/<name>/``; set ``SQUIGGLES_ZOO_DIR`` to a folder laid out
the same way to have it searched first. Any ``--model`` flag accepts a zoo name.

Example:
    >>> from squiggles.zoo import get_entry, list_entries
    >>> [e.name for e in list_entries()][:2]
    ['mnist-standard', 'mnist-linf-0.3']
    >>> get_entry("mnist-l2-2.0").role
    'l2-robust'
"""

from squiggles.zoo.registry import (
    ENV_DIR,
    PACKAGED_DIR,
    ZOO,
    ZooEntry,
    get_entry,
    is_shipped,
    list_entries,
    load_zoo_model,
    register,
    train_command,
    weights_dir,
    zoo_card,
)
from squiggles.zoo.reproduce import card_command, compare, recipe_changes, reproduce

__all__ = [
    "ENV_DIR",
    "PACKAGED_DIR",
    "ZOO",
    "ZooEntry",
    "card_command",
    "compare",
    "get_entry",
    "is_shipped",
    "list_entries",
    "load_zoo_model",
    "recipe_changes",
    "register",
    "reproduce",
    "train_command",
    "weights_dir",
    "zoo_card",
]
