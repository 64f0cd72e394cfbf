"""Class-balanced key queue (the "Siamese batch" of ResCom): one ring buffer of K keys per class.

Unlike the FIFO memory of MoCo/PaCo, whose class make-up follows the long-tailed training distribution, every
class owns exactly K slots, so each anchor always sees K same-class keys and K·(C−1) other-class keys. Keys
are detached projections of the current encoder (ResCom has no momentum encoder).

Layout is class-major: flat slot ``j`` of :meth:`ClassBalancedQueue.keys_flat` belongs to class ``j // K``.
The ``filled`` mask marks slots that hold a real key; the others still hold the random unit vectors the queue
starts with, and :mod:`rescom.mining` never selects them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rescom import distributed as dist

__all__ = ["ClassBalancedQueue"]

_FULL_CHECK_EVERY = 50  # enqueues between host reads of "every slot filled" (until it holds)


class ClassBalancedQueue(nn.Module):
    """Per-class ring buffers of K keys, held as registered buffers so they live in ``state_dict``.

    Buffers:
        keys: ``[C, K, d]`` float, initialised with random unit vectors.
        ptr: ``[C]`` long, the next slot to write for each class.
        filled: ``[C, K]`` bool, whether a slot has been written at least once.

    Args:
        num_classes: Number of classes C.
        dim: Key dimension d (the projection dimension).
        size_per_class: Keys per class K (``queue_size`` in the configs).
        generator: Optional RNG for the random initial keys.
    """

    keys: torch.Tensor
    ptr: torch.Tensor
    filled: torch.Tensor

    def __init__(
        self, num_classes: int, dim: int, size_per_class: int, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("dim", dim), ("size_per_class", size_per_class)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.num_classes = num_classes
        self.dim = dim
        self.size_per_class = size_per_class
        keys = F.normalize(torch.randn(num_classes, size_per_class, dim, generator=generator), dim=-1)
        self.register_buffer("keys", keys)  # [C, K, d]
        self.register_buffer("ptr", torch.zeros(num_classes, dtype=torch.long))  # [C]
        self.register_buffer("filled", torch.zeros(num_classes, size_per_class, dtype=torch.bool))  # [C, K]
        self._all_filled: bool | None = None  # None: unknown, read `filled` on the next query
        self._enqueues = 0

    def extra_repr(self) -> str:
        """Classes C, key dimension d and keys per class K in the module's repr."""
        return f"num_classes={self.num_classes}, dim={self.dim}, size_per_class={self.size_per_class}"

    def keys_flat(self) -> torch.Tensor:
        """All keys as ``[C*K, d]`` (a view; slot ``j`` belongs to class ``j // K``)."""
        return self.keys.view(self.num_classes * self.size_per_class, self.dim)

    def key_labels(self) -> torch.Tensor:
        """Class of every flat slot, ``[C*K]`` long on the buffers' device."""
        classes = torch.arange(self.num_classes, device=self.keys.device)
        return classes.repeat_interleave(self.size_per_class)  # [C*K]

    def filled_flat(self) -> torch.Tensor:
        """Whether each flat slot holds a real key, ``[C*K]`` bool (a view)."""
        return self.filled.view(-1)

    def unfilled_mask_needed(self) -> torch.Tensor | None:
        """``filled_flat()``, or ``None`` once every slot has been written (mining can then skip the mask).

        "All filled" never reverts during training, so it is checked with one host read only every
        ``_FULL_CHECK_EVERY`` enqueues (a sync on CUDA) until it holds; loading a state dict re-checks.
        """
        if self._all_filled is None:
            self._all_filled = bool(self.filled.all())
        return None if self._all_filled else self.filled_flat()

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[override]
        super()._load_from_state_dict(*args, **kwargs)
        self._all_filled = None

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        """Write keys into their classes' ring buffers; gathers from every rank first when distributed.

        Under DDP every rank must pass the same ``n`` (training batches from ``DistributedSampler`` are equal).

        The result equals writing the (gathered) samples one at a time in batch order, slot ``ptr_c`` of class
        ``c`` and then ``ptr_c = (ptr_c + 1) % K``; when a class has more than K samples in one call, only its
        last K survive. The update is vectorised (no Python loop over samples and no host synchronisation on
        a single process): sample ``i``, the ``r``-th of its class ``c`` in this call (of ``m_c``), goes to
        slot ``(ptr_c + r) % K`` and carries the key of the last sample of its class that maps to that slot,
        so duplicate writes to one slot all write the same value.

        Args:
            keys: ``[n, d]`` projections (detached here; cast to the buffers' device and dtype).
            labels: ``[n]`` integer classes in ``[0, C)``; not range-checked, to avoid a host sync.

        Raises:
            ValueError: If the shapes do not match ``[n, d]`` and ``[n]``.
        """
        if keys.dim() != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"keys must have shape [n, {self.dim}], got {list(keys.shape)}")
        if labels.dim() != 1 or labels.shape[0] != keys.shape[0]:
            raise ValueError(f"labels must have shape [{keys.shape[0]}], got {list(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
        # One collective for both, no size exchange: DistributedSampler gives every rank the same batch size.
        keys, labels = dist.concat_all_gather_many([keys, labels], equal_sizes=True)  # [n, d], [n] all ranks
        n = labels.shape[0]
        if n == 0:
            return
        device, k = self.keys.device, self.size_per_class
        keys = keys.to(device=device, dtype=self.keys.dtype)
        labels = labels.to(device=device, dtype=torch.long)

        order = torch.argsort(labels, stable=True)  # [n] sample indices grouped by class, batch order kept
        counts = torch.zeros(self.num_classes, dtype=torch.long, device=device)
        counts.scatter_add_(0, labels, torch.ones_like(labels))  # [C] m_c (bincount would sync on CUDA)
        starts = torch.cumsum(counts, 0) - counts  # [C] first position of each class in `order`
        rank_sorted = torch.arange(n, device=device) - starts[labels[order]]  # [n]
        rank = torch.empty_like(rank_sorted).scatter_(0, order, rank_sorted)  # [n] r: rank within class
        m = counts[labels]  # [n]
        # The last writer of the slot that sample i maps to is the largest r' ≡ r (mod K) with r' < m_c.
        last = rank + k * torch.div(m - 1 - rank, k, rounding_mode="floor")  # [n]
        source = order[starts[labels] + last]  # [n] sample whose key ends up in that slot
        slot = (self.ptr[labels] + rank) % k  # [n]
        self.keys.index_put_((labels, slot), keys[source])  # duplicates write identical values
        self.filled.index_put_((labels, slot), torch.ones_like(slot, dtype=torch.bool))
        self.ptr.copy_((self.ptr + counts) % k)
        self._enqueues += 1
        if self._all_filled is False and self._enqueues % _FULL_CHECK_EVERY == 0:
            self._all_filled = None
