"""rescom.distributed: single-process passthrough, backend choice, and 2-process gloo runs where the queue agrees."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from rescom import distributed as dist
from rescom.losses import ResComLoss
from rescom.queue import ClassBalancedQueue

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
NUM_CLASSES, DIM, K = 6, 4, 3
BATCHES = [
    5,
    0,
    7,
    2,
]  # per-rank batch size, step by step; equal on every rank, as DistributedSampler makes it


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


def test_local_world_size(monkeypatch):
    for name, value in (("RANK", "3"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "1"), ("LOCAL_WORLD_SIZE", "2")):
        monkeypatch.setenv(name, value)
    assert dist.read_env().processes_on_node == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # LOCAL_RANK 1 cannot exist on a node of 1
    with pytest.raises(ValueError, match="inconsistent torchrun environment"):
        dist.read_env()
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert dist.read_env().processes_on_node == 4  # one node assumed


@pytest.mark.parametrize(
    ("device", "processes", "gpus", "backend"),
    [
        ("cpu", 2, 8, "gloo"),  # --device cpu under torchrun on a CUDA machine: gloo, never NCCL
        ("cuda", 2, 2, "nccl"),
        ("cuda:1", 8, 8, "nccl"),
        ("cuda", 2, 1, "gloo"),  # two ranks on one GPU: NCCL refuses duplicate GPUs
        ("cuda", 1, 1, "nccl"),
    ],
)
def test_backend_follows_the_device(device, processes, gpus, backend):
    assert dist.select_backend(device, processes, gpus) == backend


def test_backend_auto_and_bad_device():
    want = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= 1 else "gloo"
    assert dist.select_backend("auto", 1) == dist.select_backend(None, 1) == want
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N"):
        dist.select_backend("tpu", 1, 1)


def test_nccl_gets_its_device_id():
    env = dist.DistEnv(rank=5, world_size=8, local_rank=3, local_world_size=4)
    kwargs = dist.process_group_kwargs("nccl", env, gpus=2)
    assert kwargs == {
        "backend": "nccl",
        "init_method": "env://",
        "rank": 5,
        "world_size": 8,
        "device_id": torch.device("cuda", 1),
    }
    assert "device_id" not in dist.process_group_kwargs("gloo", env, gpus=2)
    with pytest.raises(ValueError, match="backend nccl needs a CUDA device"):
        dist.process_group_kwargs("nccl", env, gpus=0)


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


class _CountingAllGather:
    """Wraps the real ``torch.distributed.all_gather`` and counts its calls (the collective still runs)."""

    def __init__(self) -> None:
        self.real = torch.distributed.all_gather
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.real(*args, **kwargs)


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    env = dist.init_distributed(device="cpu")
    try:
        result = {"env": (env.rank, env.world_size, dist.get_rank(), dist.get_world_size(), dist.is_main())}
        result["backend"] = dist.get_backend()
        # ragged concat_all_gather (the default path): float, bool, and an empty shard with its real width
        x = torch.full((rank + 2, 3), float(rank))
        result["gather"] = dist.concat_all_gather(x)
        result["gather_bool"] = dist.concat_all_gather(torch.tensor([True, False] * (rank + 1)))
        result["gather_empty"] = dist.concat_all_gather(torch.full((3 * rank, 5), 7.0))  # rank 0: [0, 5]
        result["sum"] = dist.all_reduce_sum(torch.tensor([1.0, float(rank)]))
        result["mean"] = dist.all_reduce_mean(torch.tensor([2.0 * rank]))
        # several dtypes and shapes in one collective, equal sizes
        many = [
            torch.full((2, 2, 3), rank + 0.5, dtype=torch.bfloat16),
            torch.tensor([rank, 10**12 + rank]),
            torch.tensor([rank == 0, True]),
        ]
        counter = _CountingAllGather()
        torch.distributed.all_gather = counter
        try:
            result["many"] = dist.concat_all_gather_many(many, equal_sizes=True)
            result["collectives_many"] = counter.calls
            counter.calls = 0
            queue = ClassBalancedQueue(NUM_CLASSES, DIM, K, generator=torch.Generator().manual_seed(0))
            for step, n in enumerate(BATCHES):
                queue.enqueue(*_batch(rank, step, n))
            result["collectives_per_enqueue"] = counter.calls / len(BATCHES)
        finally:
            torch.distributed.all_gather = counter.real
        result["queue"] = {k: v.clone() for k, v in queue.state_dict().items()}

        # the criterion: each rank has its own Siamese batch, the queue must still agree
        torch.manual_seed(0)
        crit = ResComLoss([30, 20, 10, 5, 3, 2], dim=DIM, queue_size=K, num_positives=1, num_negatives=8)
        for step in range(3):
            b = 2 + step
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
    assert [r["backend"] for r in results] == ["gloo", "gloo"]
    want = torch.cat([torch.full((2, 3), 0.0), torch.full((3, 3), 1.0)])
    for r in results:
        assert torch.equal(r["gather"], want)
        assert r["gather_bool"].dtype == torch.bool and r["gather_bool"].tolist() == [True, False] * 3
        assert torch.equal(r["gather_empty"], torch.full((3, 5), 7.0))
        assert r["sum"].tolist() == [2.0, 1.0] and r["mean"].tolist() == [1.0]
        f, i, b = r["many"]
        assert f.dtype == torch.bfloat16 and f.shape == (4, 2, 3)
        assert f[:2].eq(0.5).all() and f[2:].eq(1.5).all()
        assert i.tolist() == [0, 10**12, 1, 10**12 + 1]
        assert b.dtype == torch.bool and b.tolist() == [True, True, False, True]
        # one collective per call: no size exchange (and no .item() host sync), keys and labels together
        assert r["collectives_many"] == 1 and r["collectives_per_enqueue"] == 1

    # the queue agrees across ranks and equals a single queue fed the gathered batches in rank order
    reference = ClassBalancedQueue(NUM_CLASSES, DIM, K, generator=torch.Generator().manual_seed(0))
    for step, n in enumerate(BATCHES):
        parts = [_batch(rank, step, n) for rank in range(world)]
        reference.enqueue(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    for name, value in reference.state_dict().items():
        for r in results:
            torch.testing.assert_close(r["queue"][name], value, rtol=0, atol=0)
    assert reference.filled.sum() > 0
    for name in results[0]["criterion_queue"]:
        torch.testing.assert_close(
            results[0]["criterion_queue"][name], results[1]["criterion_queue"][name], rtol=0, atol=0
        )


@pytest.mark.distributed
@pytest.mark.timeout(180)
def test_torchrun_ddp_training_steps_agree(tmp_path, no_torchrun):
    """scripts/ddp_check.py under the real launcher: 2 ranks, DDP, ResCom loss; queue and weights agree."""
    out = tmp_path / "ddp.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["scripts/ddp_check.py", "--device", "cpu", "--steps", "2", "--batch", "8", "--json", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["backend"] == "gloo" and result["world_size"] == 2
    assert result["queue_identical"] and result["queue_filled_as_global"] and result["params_identical"]


def test_ddp_check_refuses_a_single_process(no_torchrun):
    proc = subprocess.run(
        [sys.executable, "scripts/ddp_check.py"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "run it under torchrun" in proc.stderr
