"""ClassBalancedQueue: vectorised enqueue == sequential per-sample ring-buffer writes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rescom.queue import ClassBalancedQueue


def sequential_enqueue(keys, ptr, filled, z, y):
    """The obvious reference: one sample at a time, in batch order (what the official code does)."""
    keys, ptr, filled = keys.clone(), ptr.clone(), filled.clone()
    k = keys.shape[1]
    for zi, yi in zip(z, y.tolist(), strict=True):
        p = int(ptr[yi])
        keys[yi, p] = zi
        filled[yi, p] = True
        ptr[yi] = (p + 1) % k
    return keys, ptr, filled


def assert_same_state(queue, keys, ptr, filled):
    torch.testing.assert_close(queue.keys.cpu(), keys.cpu(), rtol=0, atol=0)
    assert torch.equal(queue.ptr.cpu(), ptr.cpu())
    assert torch.equal(queue.filled.cpu(), filled.cpu())


def test_buffers_and_initial_state():
    q = ClassBalancedQueue(5, 4, 3)
    assert q.keys.shape == (5, 3, 4) and q.ptr.shape == (5,) and q.filled.shape == (5, 3)
    assert q.ptr.dtype == torch.long and q.filled.dtype == torch.bool and not q.filled.any()
    torch.testing.assert_close(q.keys.norm(dim=-1), torch.ones(5, 3), rtol=0, atol=1e-6)
    assert set(dict(q.named_buffers())) == {"keys", "ptr", "filled"}


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="positive int"):
        ClassBalancedQueue(3, 4, bad)


def test_flat_layout_is_class_major():
    q = ClassBalancedQueue(4, 3, 2)
    assert q.keys_flat().shape == (8, 3)
    assert q.key_labels().tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    q.enqueue(torch.ones(1, 3), torch.tensor([2]))
    assert q.filled_flat().tolist() == [False, False, False, False, True, False, False, False]
    torch.testing.assert_close(q.keys_flat()[4], torch.ones(3))


def test_wrap_around_small_example():
    q = ClassBalancedQueue(2, 1, 3)
    q.enqueue(torch.tensor([[1.0], [2.0]]), torch.tensor([0, 0]))
    assert q.ptr.tolist() == [2, 0] and q.filled.tolist() == [[True, True, False], [False, False, False]]
    q.enqueue(torch.tensor([[3.0], [4.0]]), torch.tensor([0, 0]))  # slot 2, then wraps to slot 0
    assert q.keys[0].flatten().tolist() == [4.0, 2.0, 3.0]
    assert q.ptr.tolist() == [1, 0] and q.filled[0].all()


def test_more_than_k_of_one_class_keeps_the_last_k():
    q = ClassBalancedQueue(2, 1, 3)
    z = torch.arange(1.0, 8.0)[:, None]  # 7 samples of class 1
    q.enqueue(z, torch.ones(7, dtype=torch.long))
    # sequential: slots 0,1,2,0,1,2,0 <- 1..7, so slot 0=7, 1=5, 2=6
    assert q.keys[1].flatten().tolist() == [7.0, 5.0, 6.0]
    assert q.ptr.tolist() == [0, 1]


@pytest.mark.parametrize("seed", range(6))
def test_random_batches_match_sequential_reference(seed, device):
    g = torch.Generator().manual_seed(seed)
    c, d, k = 5, 3, 4
    q = ClassBalancedQueue(c, d, k, generator=g).to(device)
    keys, ptr, filled = q.keys.clone(), q.ptr.clone(), q.filled.clone()
    for _ in range(8):
        n = int(torch.randint(0, 15, (1,), generator=g))
        # skewed labels, so some class often has more than K samples in one batch
        prior = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5])
        y = torch.multinomial(prior, max(n, 1), replacement=True, generator=g)[:n]
        z = F.normalize(torch.randn(n, d, generator=g), dim=1)
        keys, ptr, filled = sequential_enqueue(keys, ptr, filled, z.to(device), y)
        q.enqueue(z.to(device), y.to(device))
        assert_same_state(q, keys, ptr, filled)
    assert q.keys.device.type == torch.device(device).type


def test_filled_mask_grows_only_where_written():
    q = ClassBalancedQueue(3, 2, 2)
    q.enqueue(torch.randn(1, 2), torch.tensor([1]))
    assert q.filled.tolist() == [[False, False], [True, False], [False, False]]
    q.enqueue(torch.randn(3, 2), torch.tensor([1, 1, 0]))
    assert q.filled.tolist() == [[True, False], [True, True], [False, False]]


def test_enqueue_casts_and_detaches():
    q = ClassBalancedQueue(3, 2, 2)
    z = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    q.enqueue(z, torch.tensor([0, 2], dtype=torch.int32))
    assert q.keys.dtype == torch.float32 and not q.keys.requires_grad
    torch.testing.assert_close(q.keys[2, 0], z[1].detach().float())


def test_empty_batch_is_a_no_op():
    q = ClassBalancedQueue(3, 2, 2)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    q.enqueue(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
    for name, value in q.state_dict().items():
        assert torch.equal(value, before[name])


def test_shape_and_dtype_errors():
    q = ClassBalancedQueue(3, 2, 2)
    with pytest.raises(ValueError, match=r"keys must have shape \[n, 2\]"):
        q.enqueue(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must have shape \[4\]"):
        q.enqueue(torch.zeros(4, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        q.enqueue(torch.zeros(4, 2), torch.zeros(4))


def test_state_dict_round_trip():
    q = ClassBalancedQueue(4, 3, 2)
    q.enqueue(torch.randn(5, 3), torch.tensor([0, 0, 0, 2, 3]))
    restored = ClassBalancedQueue(4, 3, 2)
    restored.load_state_dict(q.state_dict())
    assert_same_state(restored, q.keys, q.ptr, q.filled)
    # and it continues identically
    z, y = torch.randn(6, 3), torch.tensor([0, 1, 1, 2, 0, 0])
    q.enqueue(z, y)
    restored.enqueue(z, y)
    assert_same_state(restored, q.keys, q.ptr, q.filled)


def test_state_dict_shape_mismatch_is_refused():
    with pytest.raises(RuntimeError, match="size mismatch"):
        ClassBalancedQueue(4, 3, 5).load_state_dict(ClassBalancedQueue(4, 3, 2).state_dict())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_enqueue_does_not_synchronise():
    q = ClassBalancedQueue(10, 4, 3).cuda()
    z, y = torch.randn(32, 4, device="cuda"), torch.randint(0, 10, (32,), device="cuda")
    ref = sequential_enqueue(q.keys.cpu(), q.ptr.cpu(), q.filled.cpu(), z.cpu(), y.cpu())
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        q.enqueue(z, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_same_state(q, *ref)
