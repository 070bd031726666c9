"""The evaluation's working state: per-point outcomes, finished chunks and per-stage costs.

Saved atomically after every chunk (safetensors + a JSON header) so an interrupted evaluation continues
where it stopped. Under ``torchrun`` each process keeps its own state file and the states are merged at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from squiggles._io import read_state, write_state
from squiggles.errors import SquigglesError
from squiggles.evaluation.cascade import ROBUST, StageStats


@dataclass
class State:
    done: Tensor            # bool per chunk
    clean_correct: Tensor   # bool per point
    robust: Tensor          # bool, budgets x points
    broken_by: Tensor       # int64, budgets x points
    min_norms: Tensor       # per point, inf where unknown
    x_adv: Tensor | None    # budgets x points x ...
    queries: Tensor         # int64, budgets x points: model calls spent on each point
    stats: list[list[StageStats]]
    prepass: StageStats     # the minimal-norm pre-pass, when it runs

    def add_stats(self, k: int, si: int, s: StageStats) -> None:
        self.stats[k][si].add(s.forwards, s.backwards, s.seconds)

    def chunk_mask(self, starts: list[int], size: int) -> Tensor:
        """Points of the finished chunks."""
        return _points_of(self.done, starts, size, self.robust.shape[1])


def new_state(n: int, budgets: int, stages: int, chunks: int, shape: torch.Size, dtype: torch.dtype,
              keep_adv: bool) -> State:
    return State(
        done=torch.zeros(chunks, dtype=torch.bool), clean_correct=torch.zeros(n, dtype=torch.bool),
        robust=torch.zeros(budgets, n, dtype=torch.bool), broken_by=torch.full((budgets, n), ROBUST),
        min_norms=torch.full((n,), math.inf), x_adv=torch.zeros(budgets, n, *shape, dtype=dtype) if keep_adv else None,
        queries=torch.zeros(budgets, n, dtype=torch.long),
        stats=[[StageStats() for _ in range(stages)] for _ in range(budgets)], prepass=StageStats(),
    )


def _path(state_path: str | Path | None, rank: int) -> Path | None:
    if state_path is None:
        return None
    p = Path(state_path)
    return p if rank == 0 else p.with_name(f"{p.stem}.rank{rank}{p.suffix}")


def load_or_new(state_path: str | Path | None, rank: int, fingerprint: str, n: int, budgets: int, stages: int,
                chunks: int, shape: torch.Size, dtype: torch.dtype, keep_adv: bool) -> State:
    """The saved state for exactly this evaluation, or a fresh one. A state for other settings is an error."""
    fresh = new_state(n, budgets, stages, chunks, shape, dtype, keep_adv)
    path = _path(state_path, rank)
    if path is None or not path.exists():
        return fresh
    tensors, header = read_state(path, "evaluation state")
    if header.get("fingerprint") != fingerprint:
        raise SquigglesError(f"evaluation state {path} belongs to an evaluation with other settings or data; "
                             "use another --state file or delete this one")
    fresh.done, fresh.clean_correct = tensors["done"], tensors["clean_correct"]
    fresh.robust, fresh.broken_by, fresh.min_norms = tensors["robust"], tensors["broken_by"], tensors["min_norms"]
    if keep_adv:
        fresh.x_adv = tensors["x_adv"]
    fresh.queries = tensors.get("queries", fresh.queries)
    fresh.stats = [[StageStats(**s) for s in per] for per in header["stats"]]
    fresh.prepass = StageStats(**header["prepass"])
    return fresh


def save(state_path: str | Path | None, rank: int, st: State, fingerprint: str) -> None:
    path = _path(state_path, rank)
    if path is None:
        return
    tensors = {"done": st.done, "clean_correct": st.clean_correct, "robust": st.robust, "broken_by": st.broken_by,
               "min_norms": st.min_norms, "queries": st.queries}
    if st.x_adv is not None:
        tensors["x_adv"] = st.x_adv
    header = {"fingerprint": fingerprint, "stats": [[s.__dict__ for s in per] for per in st.stats],
              "prepass": st.prepass.__dict__}
    write_state(path, tensors, header)


def gather(st: State, world: int, starts: list[int], size: int) -> State:
    """Merge the chunks finished by every process (a no-op in a single process)."""
    if world == 1:
        return st
    import torch.distributed as dist

    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, st)
    merged = parts[0]
    for other in parts[1:]:
        theirs = other.done & ~merged.done
        merged.done |= theirs
        points = _points_of(theirs, starts, size, other.robust.shape[1])
        merged.clean_correct[points] = other.clean_correct[points]
        merged.robust[:, points] = other.robust[:, points]
        merged.broken_by[:, points] = other.broken_by[:, points]
        merged.min_norms[points] = other.min_norms[points]
        merged.queries[:, points] = other.queries[:, points]
        if merged.x_adv is not None:
            merged.x_adv[:, points] = other.x_adv[:, points]
        for k, per in enumerate(other.stats):
            for si, s in enumerate(per):
                merged.add_stats(k, si, s)
        merged.prepass.add(other.prepass.forwards, other.prepass.backwards, other.prepass.seconds)
    return merged


def _points_of(chunks: Tensor, starts: list[int], size: int, n: int) -> Tensor:
    mask = torch.zeros(n, dtype=torch.bool)
    for c in chunks.nonzero().flatten().tolist():
        mask[starts[c] : starts[c] + size] = True
    return mask
