"""The trainer's checkpoint: one safetensors file holding model, optimiser and RNG state, and a JSON header.

One file means one atomic rename per epoch: a kill at any moment leaves the previous epoch's checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from squiggles._io import read_state, write_state
from squiggles.train.averaging import WeightAverage

CHECKPOINT = "checkpoint.safetensors"


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    header: dict[str, Any],
    extra: dict[str, torch.Tensor] | None = None,
) -> None:
    """Atomically write model and optimiser tensors, the global RNG state, ``extra`` tensors (the weight
    average) and a JSON ``header``."""
    tensors: dict[str, torch.Tensor] = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update(extra or {})
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, pstate in opt["state"].items():
        for name, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{idx}/{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    tensors["rng/torch"] = torch.get_rng_state()
    meta = dict(header, param_groups=opt["param_groups"], optim_scalars=scalars)
    write_state(path, tensors, meta)


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, average: WeightAverage | None = None
) -> dict[str, Any]:
    """Restore model, optimiser, global RNG state and (when given) the weight average from ``path``; return the
    JSON header."""
    tensors, header = read_state(path, "checkpoint")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = value.to(device) if value.dim() > 0 else value
    for idx, extra in header.pop("optim_scalars").items():
        state.setdefault(int(idx), {}).update(extra)
    optimizer.load_state_dict({"state": state, "param_groups": header.pop("param_groups")})
    torch.set_rng_state(tensors["rng/torch"])
    if average is not None:
        average.load({k: v.to(device) for k, v in tensors.items() if k.startswith("average/")},
                     int(header.get("average_updates", 0)))
    return header
