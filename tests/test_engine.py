"""training/engine.py on its own: running sums, one epoch, the fp16 GradScaler path, fp32 evaluation, shards."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from rescom import distributed as dist
from rescom.losses import create_loss
from training.engine import (
    NonFiniteLossError,
    RunningSums,
    ShardSampler,
    optimizer_step,
    predict_logits,
    train_one_epoch,
)

C, D, DIM = 4, 6, 3


class TinyModel(nn.Module):
    """``{"logits": [n, C], "embedding": [n, d]}`` from ``[n, D]`` inputs (the interface of ResComModel)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(D, 8)
        self.fc = nn.Linear(8, C)
        self.proj = nn.Linear(8, DIM)

    def forward(self, x):
        h = torch.relu(self.body(x.flatten(1)))
        return {"logits": self.fc(h), "embedding": F.normalize(self.proj(h), dim=1)}


def two_view_batches(n_batches=3, b=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        x = torch.randn(b, D, generator=g)
        views = [x + 0.05 * torch.randn(b, D, generator=g), x + 0.05 * torch.randn(b, D, generator=g)]
        out.append((views, torch.randint(0, C, (b,), generator=g)))
    return out


class Bar:
    """Records what a tqdm bar would be told."""

    def __init__(self) -> None:
        self.updates: list[int] = []
        self.postfix: list[dict] = []

    def update(self, n):
        self.updates.append(n)

    def set_postfix(self, refresh=True, **kwargs):
        self.postfix.append(kwargs)


def test_running_sums_count_on_the_host_and_average():
    sums = RunningSums(torch.device("cpu"))
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    losses = {"loss": torch.tensor(1.0), "loss_cls": torch.tensor(0.5), "loss_con": torch.tensor(2.0)}
    sums.add(losses, logits, torch.tensor([0, 1, 1]))
    sums.add({k: v * 3 for k, v in losses.items()}, logits[:1], torch.tensor([0]))
    assert sums.count == 4 and isinstance(sums.count, int)
    loss, cls, con, top1 = sums.means()
    assert loss == pytest.approx((3 * 1.0 + 1 * 3.0) / 4) and cls == pytest.approx((1.5 + 1.5) / 4)
    assert con == pytest.approx((6 + 6) / 4) and top1 == pytest.approx(75.0)


def test_train_one_epoch_learns_and_reports_progress():
    torch.manual_seed(0)
    model = TinyModel()
    criterion = create_loss("rescom", class_counts=[8, 4, 2, 2], dim=DIM, queue_size=2, num_negatives=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    bar = Bar()
    stats = train_one_epoch(
        model,
        criterion,
        optimizer,
        two_view_batches(7),
        torch.device("cpu"),
        epoch=0,
        progress=bar,
        progress_every=3,
    )
    assert bar.updates == [3, 3, 1]  # every 3 steps, then the rest
    assert [set(p) for p in bar.postfix] == [{"loss", "top1", "img_s"}] * 3
    assert len({p["loss"] for p in bar.postfix}) > 1, "the running loss moves during the epoch"
    assert (
        np.isfinite(stats.loss) and stats.loss_con > 0 and 0 <= stats.top1 <= 100 and stats.images_per_s > 0
    )
    assert stats.loss == pytest.approx(stats.loss_cls + 0.5 * stats.loss_con, rel=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert criterion.queue.filled.any()


def test_non_finite_loss_raises():
    model = TinyModel()
    criterion = create_loss("ce", class_counts=[1] * C)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e30)
    with pytest.raises(NonFiniteLossError, match="loss became"):
        for epoch in range(3):
            train_one_epoch(
                model, criterion, optimizer, two_view_batches(4), torch.device("cpu"), epoch=epoch
            )


def test_fp16_grad_scaler_path_on_cpu():
    """fp16 autocast + GradScaler: steps are taken, an inf gradient skips the step and halves the scale."""
    torch.manual_seed(0)
    model = TinyModel()
    criterion = create_loss("balanced_softmax", class_counts=[8, 4, 2, 2])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    before = [p.detach().clone() for p in model.parameters()]
    stats = train_one_epoch(
        model,
        criterion,
        optimizer,
        two_view_batches(3),
        torch.device("cpu"),
        epoch=0,
        scaler=scaler,
        amp_dtype=torch.float16,
        grad_clip=1.0,  # exercises unscale_ before clipping
    )
    assert np.isfinite(stats.loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    scale = scaler.get_scale()
    after_good = [p.detach().clone() for p in model.parameters()]
    bad = model.fc.weight.sum() * float("inf")  # inf gradients: the scaler must skip this step
    optimizer_step(bad, model, optimizer, scaler, grad_clip=None)
    assert scaler.get_scale() == scale / 2
    assert all(torch.equal(a, b) for a, b in zip(after_good, model.parameters(), strict=True))


def test_predict_logits_is_fp32_and_in_dataset_order():
    model = TinyModel().eval()
    x = torch.randn(11, D)
    data = TensorDataset(x, torch.arange(11) % C)
    logits, labels = predict_logits(model, data, torch.device("cpu"), num_classes=C, batch_size=4)
    assert logits.dtype == np.float32 and logits.shape == (11, C)
    np.testing.assert_array_equal(labels, np.arange(11) % C)
    np.testing.assert_allclose(logits, model(x)["logits"].detach().numpy(), rtol=1e-6, atol=1e-6)


def test_shard_sampler_splits_without_overlap():
    shards = [list(ShardSampler(7, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(7)) and [len(s) for s in shards] == [3, 2, 2]
    assert list(ShardSampler(1, 1, 2)) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _eval_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    dist.init_distributed("gloo")
    try:
        torch.manual_seed(0)
        model = TinyModel()
        data = TensorDataset(torch.randn(1, D), torch.tensor([2]))  # one sample: rank 1's shard is empty
        logits, labels = predict_logits(model, data, torch.device("cpu"), num_classes=C)
        torch.save(
            {"logits": torch.from_numpy(logits), "labels": torch.from_numpy(labels)}, f"{out_dir}/r{rank}.pt"
        )
    finally:
        dist.destroy_distributed()


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_empty_eval_shard_does_not_hang_two_ranks(tmp_path, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    mp.spawn(_eval_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"r{r}.pt", weights_only=True) for r in range(2)]
    for r in results:
        assert r["logits"].shape == (1, C) and r["labels"].tolist() == [2]
    assert torch.equal(results[0]["logits"], results[1]["logits"])
