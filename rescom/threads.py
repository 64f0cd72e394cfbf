"""CPU thread control: how many intra-op threads to use, and running a small computation on fewer of them.

PyTorch splits every CPU op on a tensor of 32k elements or more across its intra-op threads. A small loss
made of many such ops then pays a thread hand-off per op, which on a busy machine (other processes on the
cores) costs more than the op itself. :func:`run_on_threads` runs a function, and its backward, with a given
thread count; values and gradients are those of the same ops (see ``tests/test_threads.py``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence

import torch

__all__ = ["available_cpus", "limit_threads", "run_on_threads"]


def available_cpus() -> int:
    """CPUs this process may run on (``os.sched_getaffinity``: respects taskset and cgroup cpusets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def limit_threads(num_threads: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(num_threads)`` and restore the previous count after."""
    previous = torch.get_num_threads()
    if previous == num_threads:
        yield
        return
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _OnThreads(torch.autograd.Function):
    """Forward: run ``fn`` on ``num_threads`` keeping its graph; backward: differentiate that graph likewise."""

    @staticmethod
    def forward(ctx, fn, num_threads, *inputs):  # type: ignore[override]
        leaves = [x.detach().requires_grad_(x.requires_grad) for x in inputs]
        with torch.enable_grad(), limit_threads(num_threads):
            outputs = fn(*leaves)
        ctx.num_threads = num_threads
        ctx.leaves = leaves
        ctx.outputs = outputs
        return tuple(out.detach() for out in outputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):  # type: ignore[override]
        wanted = [i for i, leaf in enumerate(ctx.leaves) if leaf.requires_grad]
        pairs = [(o, g) for o, g in zip(ctx.outputs, grads, strict=True) if o.requires_grad and g is not None]
        result: list[torch.Tensor | None] = [None] * len(ctx.leaves)
        if wanted and pairs:
            with limit_threads(ctx.num_threads):
                found = torch.autograd.grad(
                    [o for o, _ in pairs],
                    [ctx.leaves[i] for i in wanted],
                    [g for _, g in pairs],
                    allow_unused=True,
                    retain_graph=True,  # freed with ctx, i.e. with the outer graph; gradcheck re-runs backward
                )
            for i, grad in zip(wanted, found, strict=True):
                result[i] = grad
        return (None, None, *result)


def run_on_threads(
    fn: Callable[..., Sequence[torch.Tensor]], num_threads: int, *inputs: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """``fn(*inputs)`` with forward and backward on ``num_threads`` CPU threads (same values and gradients).

    Args:
        fn: Takes the tensors ``inputs`` and returns a sequence of tensors; everything else it needs (buffers,
            labels) comes from its closure and gets no gradient.
        num_threads: Intra-op threads for the forward and the backward of ``fn``.
        inputs: The differentiable inputs.

    Returns:
        ``fn``'s outputs, connected to ``inputs`` for autograd.
    """
    if not torch.is_grad_enabled() or not any(x.requires_grad for x in inputs):
        with limit_threads(num_threads):
            return tuple(fn(*inputs))
    return _OnThreads.apply(fn, num_threads, *inputs)
