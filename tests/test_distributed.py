"""rescom.distributed: single-process passthrough, and a 2-process gloo run where the queue agrees."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from rescom import distributed as dist
from rescom.losses import ResComLoss
from rescom.queue import ClassBalancedQueue

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
NUM_CLASSES, DIM, K = 6, 4, 3
BATCHES = {0: [5, 0, 7, 2], 1: [3, 4, 1, 9]}  # ragged per-rank batch sizes, step by step (incl. an empty one)


@pytest.fixture
def no_torchrun(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)


def test_single_process_defaults(no_torchrun):
    env = dist.init_distributed()
    assert env == dist.DistEnv(rank=0, world_size=1, local_rank=0)
    assert not dist.is_distributed()
    assert (dist.get_rank(), dist.get_world_size(), dist.get_local_rank(), dist.is_main()) == (0, 1, 0, True)
    x = torch.randn(3, 2, requires_grad=True)
    gathered = dist.concat_all_gather(x)
    assert torch.equal(gathered, x) and not gathered.requires_grad
    y = torch.arange(4.0)
    assert dist.all_reduce_sum(y) is y and dist.all_reduce_mean(y) is y
    dist.barrier()
    dist.destroy_distributed()


def test_read_env(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist.read_env() == dist.DistEnv(1, 4, 1)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="inconsistent torchrun environment"):
        dist.read_env()
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ValueError, match="RANK='one' must be an integer"):
        dist.read_env()


def test_bad_backend(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="backend must be"):
        dist.init_distributed("mpi")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(rank: int, step: int, n: int):
    g = torch.Generator().manual_seed(1000 * rank + step)
    z = F.normalize(torch.randn(n, DIM, generator=g), dim=1)
    y = (
        torch.randint(0, 2, (n,), generator=g)
        if step == 3
        else torch.randint(0, NUM_CLASSES, (n,), generator=g)
    )
    return z, y  # step 3 crowds classes 0-1, so some class has more than K keys in one gathered batch


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    env = dist.init_distributed("gloo")
    try:
        result = {"env": (env.rank, env.world_size, dist.get_rank(), dist.get_world_size(), dist.is_main())}
        # ragged concat_all_gather, float and bool
        x = torch.full((rank + 2, 3), float(rank))
        result["gather"] = dist.concat_all_gather(x)
        result["gather_bool"] = dist.concat_all_gather(torch.tensor([True, False] * (rank + 1)))
        result["sum"] = dist.all_reduce_sum(torch.tensor([1.0, float(rank)]))
        result["mean"] = dist.all_reduce_mean(torch.tensor([2.0 * rank]))

        queue = ClassBalancedQueue(NUM_CLASSES, DIM, K, generator=torch.Generator().manual_seed(0))
        for step, n in enumerate(BATCHES[rank]):
            queue.enqueue(*_batch(rank, step, n))
        result["queue"] = {k: v.clone() for k, v in queue.state_dict().items()}

        # the criterion: each rank has its own (ragged) Siamese batch, the queue must still agree
        torch.manual_seed(0)
        crit = ResComLoss([30, 20, 10, 5, 3, 2], dim=DIM, queue_size=K, num_positives=1, num_negatives=8)
        for step in range(3):
            b = 2 + rank + step
            z, y = _batch(rank, 10 + step, b)
            logits = torch.randn(2 * b, NUM_CLASSES, requires_grad=True)
            z2 = F.normalize(z + 0.1 * torch.randn_like(z), dim=1)
            out = crit({"logits": logits, "embedding": torch.cat([z, z2])}, torch.cat([y, y]))
            out["loss"].backward()
        result["criterion_queue"] = {k: v.clone() for k, v in crit.queue.state_dict().items()}
        dist.barrier()
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_distributed()


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_two_process_gloo_queue_agrees(tmp_path, no_torchrun):
    world = 2
    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]

    assert [r["env"] for r in results] == [(0, 2, 0, 2, True), (1, 2, 1, 2, False)]
    want = torch.cat([torch.full((2, 3), 0.0), torch.full((3, 3), 1.0)])
    for r in results:
        assert torch.equal(r["gather"], want)
        assert r["gather_bool"].dtype == torch.bool and r["gather_bool"].tolist() == [True, False] * 3
        assert r["sum"].tolist() == [2.0, 1.0] and r["mean"].tolist() == [1.0]

    # the queue agrees across ranks and equals a single queue fed the gathered batches in rank order
    reference = ClassBalancedQueue(NUM_CLASSES, DIM, K, generator=torch.Generator().manual_seed(0))
    for step in range(len(BATCHES[0])):
        parts = [_batch(rank, step, BATCHES[rank][step]) for rank in range(world)]
        reference.enqueue(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    for name, value in reference.state_dict().items():
        for r in results:
            torch.testing.assert_close(r["queue"][name], value, rtol=0, atol=0)
    assert reference.filled.sum() > 0
    for name in results[0]["criterion_queue"]:
        torch.testing.assert_close(
            results[0]["criterion_queue"][name], results[1]["criterion_queue"][name], rtol=0, atol=0
        )
