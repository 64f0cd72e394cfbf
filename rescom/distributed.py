"""Optional multi-process support: torchrun environment, process group, and collectives that pass through.

Every function here works without ``torch.distributed`` being initialised: the process is then rank 0 of a
world of size 1 and each collective returns its input unchanged. Launch several processes with ``torchrun``,
which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; this module is the
only place that reads those variables.

Example::

    from rescom import distributed as dist

    dist.init_distributed()          # no-op for a single process
    try:
        ...
        if dist.is_main():
            save(...)
    finally:
        dist.destroy_distributed()
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist

__all__ = [
    "DistEnv",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "concat_all_gather",
    "destroy_distributed",
    "get_local_rank",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main",
    "read_env",
]


@dataclass(frozen=True)
class DistEnv:
    """Process placement as announced by the launcher.

    Attributes:
        rank: Global rank of this process (``RANK``), 0 when not launched by torchrun.
        world_size: Number of processes (``WORLD_SIZE``), 1 when not launched by torchrun.
        local_rank: Rank on this node (``LOCAL_RANK``), used to pick the GPU; 0 when absent.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer (set by torchrun)")


def read_env() -> DistEnv:
    """Read the torchrun variables ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``.

    Returns:
        The placement; a single process (rank 0 of 1) when the variables are absent.

    Raises:
        ValueError: If a variable is not an integer or the values are inconsistent.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(
            f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world_size}, LOCAL_RANK={local_rank}; "
            "expected WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0"
        )
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank)


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised in this process."""
    return tdist.is_available() and tdist.is_initialized()


def init_distributed(backend: str | None = None) -> DistEnv:
    """Join the process group announced by torchrun, or do nothing for a single process.

    The group is initialised only when ``WORLD_SIZE > 1``; with one process every collective in this module
    passes its input through. Calling it again after the group exists is a no-op.

    Args:
        backend: ``"nccl"`` or ``"gloo"``; ``None`` picks ``"nccl"`` when CUDA is available, else ``"gloo"``.
            With NCCL the current CUDA device is set to ``LOCAL_RANK`` (modulo the visible devices).

    Returns:
        The placement of this process.

    Raises:
        ValueError: If the torchrun variables are invalid or ``backend`` is unknown.
        RuntimeError: If ``torch.distributed`` is not available in this build of torch.
    """
    env = read_env()
    if is_distributed():
        return DistEnv(rank=tdist.get_rank(), world_size=tdist.get_world_size(), local_rank=env.local_rank)
    if env.world_size == 1:
        return env
    if not tdist.is_available():
        raise RuntimeError(
            f"WORLD_SIZE={env.world_size} but this torch build has no torch.distributed support"
        )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend must be 'nccl', 'gloo' or None (auto), got {backend!r}")
    if backend == "nccl":
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
    tdist.init_process_group(backend=backend, init_method="env://", rank=env.rank, world_size=env.world_size)
    return env


def destroy_distributed() -> None:
    """Leave and destroy the process group; a no-op when none is initialised."""
    if is_distributed():
        tdist.destroy_process_group()


def get_rank() -> int:
    """Global rank of this process (0 without a process group)."""
    return tdist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes in the group (1 without a process group)."""
    return tdist.get_world_size() if is_distributed() else 1


def get_local_rank() -> int:
    """Rank of this process on its node (``LOCAL_RANK``; 0 without torchrun)."""
    return read_env().local_rank


def is_main() -> bool:
    """Whether this is rank 0, the process that writes files and logs."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every process of the group; a no-op without a process group."""
    if is_distributed():
        tdist.barrier()


@torch.no_grad()
def concat_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, in rank order. **No gradient flows back.**

    Ranks may hold different first dimensions (ragged batches, e.g. the last evaluation shard): the sizes are
    gathered first, every rank pads to the largest, and the padding is cut off again. All other dimensions
    and the dtype must agree across ranks. Every rank must call this function (it is a collective).

    Args:
        tensor: ``[n_r, ...]`` on the device the backend expects (CUDA for NCCL, any for gloo).

    Returns:
        ``[sum_r n_r, ...]``, detached. With world size 1 this is ``tensor.detach()`` (no copy).
    """
    if not is_distributed() or tdist.get_world_size() == 1:
        return tensor.detach()
    if tensor.dim() == 0:
        raise ValueError("concat_all_gather needs a tensor with at least one dimension, got a scalar")
    world = tdist.get_world_size()
    tensor = tensor.detach().contiguous()
    is_bool = tensor.dtype == torch.bool
    if is_bool:  # not every backend reduces/gathers bool tensors
        tensor = tensor.to(torch.uint8)
    size = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    sizes = [torch.empty_like(size) for _ in range(world)]
    tdist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]  # needed on the host to allocate the receive buffers
    longest = max(counts)
    if tensor.shape[0] < longest:
        pad = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        tensor = torch.cat([tensor, pad])
    parts = [torch.empty_like(tensor) for _ in range(world)]
    tdist.all_gather(parts, tensor)
    out = torch.cat([part[:n] for part, n in zip(parts, counts, strict=True)])
    return out.to(torch.bool) if is_bool else out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of ``tensor`` over all ranks.

    Args:
        tensor: Same shape and dtype on every rank.

    Returns:
        A new tensor holding the sum (the input is not modified); with world size 1 the input itself.
    """
    if not is_distributed() or tdist.get_world_size() == 1:
        return tensor
    out = tensor.detach().clone()
    tdist.all_reduce(out, op=tdist.ReduceOp.SUM)
    return out


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise mean of ``tensor`` over all ranks (integer inputs give a floating-point mean).

    Args:
        tensor: Same shape and dtype on every rank.

    Returns:
        A new tensor holding the mean; with world size 1 the input itself.
    """
    if not is_distributed() or tdist.get_world_size() == 1:
        return tensor
    return all_reduce_sum(tensor) / tdist.get_world_size()
