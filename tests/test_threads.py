"""Thread control: the one-thread loss path gives the values and gradients of the default path."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from rescom.losses import ResComLoss
from rescom.threads import available_cpus, limit_threads, run_on_threads


def test_available_cpus_is_the_affinity_mask():
    assert available_cpus() == len(os.sched_getaffinity(0))


def test_limit_threads_restores_the_count():
    before = torch.get_num_threads()
    with limit_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_run_on_threads_returns_the_same_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 200, generator=g, requires_grad=True)  # large enough to be split across threads
    b = torch.randn(200, 150, generator=g, requires_grad=True)

    def fn(a, b):
        prod = a @ b
        return prod.logsumexp(dim=1).mean(), (prod * prod).sum()

    want = fn(a, b)
    sum(want).backward()
    want_grads = a.grad.clone(), b.grad.clone()
    a.grad = b.grad = None
    got = run_on_threads(fn, 1, a, b)
    sum(got).backward()
    for x, y in zip(got, want, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a.grad, want_grads[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(b.grad, want_grads[1], rtol=1e-6, atol=1e-6)


def _rescom_step(crit, logits, raw, labels):
    logits = logits.clone().requires_grad_(True)
    raw = raw.clone().requires_grad_(True)
    out = crit({"logits": logits, "embedding": F.normalize(raw, dim=1)}, labels)
    out["loss"].backward()
    return out, logits.grad, raw.grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_one_thread_loss_path_equals_default_path(dtype):
    """Same criterion state, one step with the one-thread path forced on and off: same loss and gradients."""
    c, d, b = 30, 16, 64
    counts = [max(2, int(200 * 0.05 ** (i / (c - 1)))) for i in range(c)]
    kwargs = {"class_counts": counts, "dim": d, "queue_size": 4, "num_positives": 1, "num_negatives": 50}
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, c, (b,), generator=g)
    labels = torch.cat([y, y])
    logits = torch.randn(2 * b, c, generator=g, dtype=dtype)
    raw = torch.randn(2 * b, d, generator=g, dtype=dtype)
    one, many = ResComLoss(**kwargs).to(dtype), ResComLoss(**kwargs).to(dtype)
    fill = F.normalize(torch.randn(3 * c, d, generator=g, dtype=dtype), dim=1)
    start = {k: v.clone() for k, v in one.queue.state_dict().items()}
    for crit in (one, many):
        crit.queue.load_state_dict(start)
        crit.queue.enqueue(fill, torch.arange(c).repeat(3))
    one.single_thread_max_work, many.single_thread_max_work = 2**40, -1
    with limit_threads(2):
        got = _rescom_step(one, logits, raw, labels)
        want = _rescom_step(many, logits, raw, labels)
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    for key in ("loss", "loss_cls", "loss_con"):
        torch.testing.assert_close(got[0][key], want[0][key], **tol)
    torch.testing.assert_close(got[1], want[1], **tol)
    torch.testing.assert_close(got[2], want[2], **tol)
    for key, value in one.queue.state_dict().items():
        assert torch.equal(value, many.queue.state_dict()[key]), key
