"""torch.distributed under torchrun, in one place: join the group the launcher describes, know rank and world size,
pick this process's device, leave cleanly. gloo on CPU, nccl on GPU.

Example (alone, without torchrun, everything is a no-op):
    >>> from squiggles.distributed import rank_world, torchrun_group
    >>> with torchrun_group("cpu") as rank:
    ...     print(rank, rank_world())
    None (0, 1)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str) -> int | None:
    """Join the process group when started by torchrun; return this process's rank (None when alone)."""
    if not launched_by_torchrun():
        return None
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        use_nccl = torch.cuda.is_available() and device != "cpu"
        dist.init_process_group(backend="nccl" if use_nccl else "gloo")
    return dist.get_rank()


@contextlib.contextmanager
def torchrun_group(device: str) -> Iterator[int | None]:
    """The process group for the block when under torchrun (destroyed after, so workers exit without warnings)."""
    rank = init_from_env(device)
    try:
        yield rank
    finally:
        if rank is not None:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the process group in use, or (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_device(device: str) -> str:
    """Under torchrun on a GPU machine, each process takes the GPU named by LOCAL_RANK."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available() and launched_by_torchrun():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
