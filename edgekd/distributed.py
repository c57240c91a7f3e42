"""torchrun helpers shared by training and synthesis (DDP with gloo on CPU): who am I, and join the group if asked."""

from __future__ import annotations

import os

import torch.distributed as dist


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def maybe_init_distributed() -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1). Returns True if distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return dist.is_initialized()
