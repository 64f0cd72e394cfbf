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

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist

__all__ = [
    "DistEnv",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "concat_all_gather",
    "concat_all_gather_many",
    "destroy_distributed",
    "get_backend",
    "get_local_rank",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main",
    "process_group_kwargs",
    "read_env",
    "select_backend",
]


@dataclass(frozen=True)
class DistEnv:
    """Process placement as announced by the launcher.

    Attributes:
        rank: Global rank of this process (``RANK``), 0 when not launched by torchrun.
        world_size: Number of processes (``WORLD_SIZE``), 1 when not launched by torchrun.
        local_rank: Rank on this node (``LOCAL_RANK``), used to pick the GPU; 0 when absent.
        local_world_size: Processes on this node (``LOCAL_WORLD_SIZE``); ``world_size`` when absent.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int | None = None

    @property
    def processes_on_node(self) -> int:
        """``local_world_size``, or ``world_size`` when the launcher did not say (one node)."""
        return self.local_world_size if self.local_world_size is not None else self.world_size


def _env_opt_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer (set by torchrun)")


def _env_int(name: str, default: int) -> int:
    value = _env_opt_int(name)
    return default if value is None else value


def read_env() -> DistEnv:
    """Read the torchrun variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``.

    Returns:
        The placement; a single process (rank 0 of 1) when the variables are absent.

    Raises:
        ValueError: If a variable is not an integer or the values are inconsistent.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    local_world = _env_opt_int("LOCAL_WORLD_SIZE")
    if (
        world_size < 1
        or not 0 <= rank < world_size
        or local_rank < 0
        or (local_world is not None and not local_rank < local_world <= world_size)
    ):
        raise ValueError(
            f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world_size}, LOCAL_RANK={local_rank}, "
            f"LOCAL_WORLD_SIZE={local_world}; expected WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE, "
            "0 <= LOCAL_RANK < LOCAL_WORLD_SIZE <= WORLD_SIZE"
        )
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, local_world_size=local_world)


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised in this process."""
    return tdist.is_available() and tdist.is_initialized()


def select_backend(
    device: str | torch.device | None, processes_on_node: int = 1, gpus_on_node: int | None = None
) -> str:
    """The process-group backend for the training device: NCCL for CUDA, gloo for the CPU.

    NCCL needs its own GPU per process; with more processes on a node than GPUs (e.g. two ranks on one GPU,
    as ``scripts/gpu_check.sh`` runs them) gloo is used instead, which all-reduces CUDA tensors too.

    Args:
        device: The training device (``--device``): ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"`` or ``None``
            (= ``"auto"``: CUDA when available).
        processes_on_node: Ranks on this node (``LOCAL_WORLD_SIZE``).
        gpus_on_node: Visible CUDA devices; ``None`` asks torch.

    Returns:
        ``"nccl"`` or ``"gloo"``.
    """
    spec = "auto" if device is None else str(device)
    if spec == "auto":
        on_cuda = torch.cuda.is_available()
    else:
        try:
            on_cuda = torch.device(spec).type == "cuda"
        except RuntimeError:
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {spec!r}") from None
    if not on_cuda:
        return "gloo"
    gpus = torch.cuda.device_count() if gpus_on_node is None else gpus_on_node
    return "nccl" if processes_on_node <= gpus else "gloo"


def init_distributed(backend: str | None = None, device: str | torch.device | None = None) -> DistEnv:
    """Join the process group announced by torchrun, or do nothing for a single process.

    The group is initialised only when ``WORLD_SIZE > 1``; with one process every collective in this module
    passes its input through. Calling it again after the group exists is a no-op.

    Args:
        backend: ``"nccl"`` or ``"gloo"``; ``None`` picks it from ``device`` (:func:`select_backend`), so
            ``--device cpu`` uses gloo even on a machine with CUDA.
        device: The training device (``auto``, ``cpu``, ``cuda``, ``cuda:N``); ``None`` means ``auto``.
            With NCCL the current CUDA device is set to ``LOCAL_RANK`` (modulo the visible devices) and passed
            to ``init_process_group`` as ``device_id`` (eager NCCL communicator on the right GPU).

    Returns:
        The placement of this process.

    Raises:
        ValueError: If the torchrun variables are invalid or ``backend``/``device`` is unknown.
        RuntimeError: If ``torch.distributed`` is not available in this build of torch.
    """
    env = read_env()
    if is_distributed():
        return DistEnv(tdist.get_rank(), tdist.get_world_size(), env.local_rank, env.local_world_size)
    if backend not in (None, "nccl", "gloo"):
        raise ValueError(f"backend must be 'nccl', 'gloo' or None (auto), got {backend!r}")
    if env.world_size == 1:
        return env
    if not tdist.is_available():
        raise RuntimeError(
            f"WORLD_SIZE={env.world_size} but this torch build has no torch.distributed support"
        )
    backend = backend or select_backend(device, env.processes_on_node)
    gpus = torch.cuda.device_count() if backend == "nccl" else 0
    kwargs = process_group_kwargs(backend, env, gpus)
    if "device_id" in kwargs:
        torch.cuda.set_device(kwargs["device_id"])
    tdist.init_process_group(**kwargs)
    return env


def process_group_kwargs(backend: str, env: DistEnv, gpus: int) -> dict[str, Any]:
    """Arguments of ``torch.distributed.init_process_group`` for this rank.

    With NCCL, ``device_id`` is this rank's GPU (``LOCAL_RANK`` modulo ``gpus``): the communicator is bound
    to it eagerly, instead of NCCL guessing the device at the first collective.

    Raises:
        ValueError: NCCL without a visible GPU.
    """
    kwargs: dict[str, Any] = {
        "backend": backend,
        "init_method": "env://",
        "rank": env.rank,
        "world_size": env.world_size,
    }
    if backend == "nccl":
        if gpus < 1:
            raise ValueError(
                "backend nccl needs a CUDA device, but none is visible; use gloo or --device cpu"
            )
        kwargs["device_id"] = torch.device("cuda", env.local_rank % gpus)
    return kwargs


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


def get_backend() -> str | None:
    """The backend of the process group (``"nccl"``, ``"gloo"``), ``None`` without one."""
    return str(tdist.get_backend()) if is_distributed() else None


def is_main() -> bool:
    """Whether this is rank 0, the process that writes files and logs."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every process of the group; a no-op without a process group."""
    if is_distributed():
        tdist.barrier()


def _row_bytes(tensor: torch.Tensor) -> int:
    """Bytes in one row (everything after dim 0) of ``tensor``."""
    return math.prod(tensor.shape[1:]) * tensor.element_size()


def _to_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """``[n, ...]`` of any dtype -> ``[n, row_bytes]`` uint8, a reinterpretation of the same bytes."""
    n, width = tensor.shape[0], math.prod(tensor.shape[1:])
    rows = tensor.detach().reshape(n, width).contiguous()  # [n, m]
    if width == 0:
        return torch.empty(n, 0, dtype=torch.uint8, device=tensor.device)
    return rows.view(torch.uint8)  # [n, m * itemsize]


def _from_bytes(data: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_to_bytes`: ``[N, row_bytes]`` uint8 -> ``[N, ...]`` with the dtype of ``like``."""
    if data.shape[1] == 0:
        return torch.empty(data.shape[0], *like.shape[1:], dtype=like.dtype, device=data.device)
    return data.contiguous().view(like.dtype).reshape(data.shape[0], *like.shape[1:])


def _gather_rows(packed: torch.Tensor, world: int) -> list[torch.Tensor]:
    parts = [torch.empty_like(packed) for _ in range(world)]
    tdist.all_gather(parts, packed)
    return parts


@torch.no_grad()
def concat_all_gather_many(
    tensors: Sequence[torch.Tensor], *, equal_sizes: bool = False
) -> list[torch.Tensor]:
    """:func:`concat_all_gather` of several tensors with the same first dimension, in ONE collective.

    The rows of all tensors are packed byte-wise into one ``[n, bytes]`` uint8 buffer (any dtypes), gathered
    once, and unpacked. The class-balanced queue uses it for its keys and labels.

    Args:
        tensors: ``[n_r, ...]`` each, same ``n_r`` within a rank, same device; dtypes and trailing shapes equal
            on every rank.
        equal_sizes: Promise that every rank holds the same ``n_r`` (true for training batches, which
            ``DistributedSampler`` makes equal): skips the size exchange and its host synchronisation. With
            unequal sizes and this promise the collective fails or hangs, so pass it only when it holds.

    Returns:
        ``[sum_r n_r, ...]`` for each input, detached, in rank order.
    """
    if not tensors:
        return []
    n = tensors[0].shape[0] if tensors[0].dim() else None
    if any(t.dim() == 0 for t in tensors) or any(t.shape[0] != n for t in tensors):
        shapes = [list(t.shape) for t in tensors]
        raise ValueError(f"concat_all_gather needs tensors of equal first dimension, got shapes {shapes}")
    if not is_distributed() or tdist.get_world_size() == 1:
        return [t.detach() for t in tensors]
    world = tdist.get_world_size()
    packed = torch.cat([_to_bytes(t) for t in tensors], dim=1)  # [n, row_bytes]
    if equal_sizes:
        gathered = torch.cat(_gather_rows(packed, world))  # [world * n, row_bytes]
    else:
        size = torch.tensor([packed.shape[0]], device=packed.device, dtype=torch.long)
        sizes = [torch.empty_like(size) for _ in range(world)]
        tdist.all_gather(sizes, size)
        counts = torch.cat(sizes).tolist()  # one host sync: the receive buffers need the sizes
        longest = max(counts)
        if packed.shape[0] < longest:
            packed = torch.cat([packed, packed.new_zeros(longest - packed.shape[0], packed.shape[1])])
        parts = _gather_rows(packed, world)  # [longest, row_bytes] each
        gathered = torch.cat([part[:c] for part, c in zip(parts, counts, strict=True)])
    out, offset = [], 0
    for t in tensors:
        width = _row_bytes(t)
        out.append(_from_bytes(gathered[:, offset : offset + width], t))
        offset += width
    return out


@torch.no_grad()
def concat_all_gather(tensor: torch.Tensor, *, equal_sizes: bool = False) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, in rank order; no gradient flows back.

    By default ranks may hold different first dimensions (ragged batches, e.g. the last evaluation shard, or
    an empty one): the sizes are gathered first (one host sync), every rank pads to the largest, and the padding
    is cut off again. ``equal_sizes=True`` is the training fast path: one collective, no host sync. All other
    dimensions and the dtype must agree across ranks. Every rank must call this function (it is a collective).

    Args:
        tensor: ``[n_r, ...]`` on the device the backend expects (CUDA for NCCL, any for gloo).
        equal_sizes: See :func:`concat_all_gather_many`.

    Returns:
        ``[sum_r n_r, ...]``, detached. With world size 1 this is ``tensor.detach()`` (no copy).
    """
    if tensor.dim() == 0:
        raise ValueError("concat_all_gather needs a tensor with at least one dimension, got a scalar")
    return concat_all_gather_many([tensor], equal_sizes=equal_sizes)[0]


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
