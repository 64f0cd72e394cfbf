"""Train a ResCom model (or a Balanced-Softmax / CE baseline) on a long-tailed dataset.

    python training/train.py --config training/configs/digits_lt.yaml --output-dir runs/digits
    torchrun --nproc_per_node=8 training/train.py --config training/configs/imagenet_lt.yaml --data-dir /data

Config flows one way: defaults (rescom.config) ← YAML recipe ← flags ← ``key=value`` overrides, e.g.
``optim.lr=0.05 loss.num_negatives=200``. Writes ``last.pt``, ``best.pt``, ``config.yaml``, ``log.jsonl`` and
``metrics.json`` into ``--output-dir``. ``--resume`` continues exactly where ``last.pt`` stopped.

The run is five steps, each a function: :func:`build_trainer` (device, data, model, loss, optimiser),
:func:`resume_trainer`, :func:`run_epoch`, :func:`evaluate_and_checkpoint` and :func:`finish` (test metrics
of the selected model, temperature, ``metrics.json``). User errors (bad config, override or path) are one
line on stderr and exit status 2, checked before any data is loaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from rescom import __version__
from rescom import distributed as dist
from rescom.calibration import fit_temperature
from rescom.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint, to_plain
from rescom.config import ConfigError
from rescom.data import build_datasets
from rescom.data.transforms import TwoViewTransform, create_transforms
from rescom.losses import create_loss
from rescom.metrics import longtail_metrics
from rescom.models import create_model
from rescom.recipes import check as check_recipe
from rescom.recipes import contrastive_weight
from rescom.schedule import lr_multiplier
from training.cli import (
    check_paths,
    choose_num_threads,
    get_args_parser,
    option_name,
    print_error,
    resolve_config,
    unused_option_warnings,
)
from training.engine import NonFiniteLossError, predict_logits, train_one_epoch

__all__ = [
    "Trainer",
    "build_trainer",
    "cli",
    "evaluate_and_checkpoint",
    "finish",
    "get_args_parser",
    "main",
    "resolve_config",
    "resume_trainer",
    "run_epoch",
    "train",
]

log = logging.getLogger("rescom.train")
HEADLINE_METRICS = ("top1", "balanced_acc", "acc", "many", "medium", "few")


def select_device(spec: str) -> torch.device:
    """``auto`` picks this rank's GPU when CUDA is available, else the CPU."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist.get_local_rank() % torch.cuda.device_count())
        return torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {spec} asked for CUDA, but torch.cuda.is_available() is False here")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", dist.get_local_rank() % torch.cuda.device_count())
    return device


def select_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU supports it, else fp16 (with a GradScaler); none on the CPU unless asked."""
    if mode == "none" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "fp16":
        return torch.float16
    if mode == "bf16" or (device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup_logging(output_dir: Path) -> None:
    """Log to stderr on rank 0 and to ``train.log`` in the output folder; other ranks log warnings only."""
    level = logging.INFO if dist.is_main() else logging.WARNING
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if dist.is_main():
        handlers.append(logging.FileHandler(output_dir / "train.log"))
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True
    )


class JsonlLogger:
    """Appends one JSON object per epoch to ``log.jsonl`` (rank 0 only); optional TensorBoard mirror."""

    def __init__(self, path: Path, tensorboard_dir: Path | None) -> None:
        self.path = path
        self.writer = None
        if tensorboard_dir is not None and dist.is_main():
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.warning(
                    "train.tensorboard is on but tensorboard is not installed: pip install 'rescom[tensorboard]'"
                )
            else:
                self.writer = SummaryWriter(str(tensorboard_dir))

    def write(self, record: dict[str, Any]) -> None:
        if not dist.is_main():
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps(to_plain(record)) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and key != "epoch" and value is not None:
                    self.writer.add_scalar(key, value, record["epoch"])
            self.writer.flush()


def build_meta(cfg: dict[str, Any], splits: Any, model: Any) -> dict[str, Any]:
    """The checkpoint's ``meta``: everything export and serving need, without the training code."""
    return to_plain(
        {
            "arch": cfg["model"]["arch"],
            "arch_kwargs": cfg["model"]["kwargs"],
            "num_classes": len(splits.class_names),
            "feat_dim": model.feat_dim,
            "proj_dim": cfg["model"]["proj_dim"],
            "method": cfg["method"],
            "dataset": cfg["data"]["name"],
            "dataset_kwargs": cfg["data"]["kwargs"],
            "class_names": list(splits.class_names),
            "class_counts": [int(c) for c in splits.class_counts],
            "resize": int(splits.resize),
            "crop": int(splits.crop),
            "mean": [float(m) for m in splits.mean],
            "std": [float(s) for s in splits.std],
            "metrics": None,
            "temperature": None,
            "rescom_version": __version__,
        }
    )


def evaluate_split(
    model: Any,
    dataset: Any,
    device: torch.device,
    cfg: dict[str, Any],
    class_counts: Any,
    num_classes: int,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """top1 / balanced_acc / Many / Medium / Few (percent) of ``dataset``, plus its fp32 logits and labels."""
    logits, labels = predict_logits(
        model,
        dataset,
        device,
        num_classes=num_classes,
        batch_size=cfg["eval"]["batch_size"],
        num_workers=cfg["data"]["num_workers"],
        channels_last=cfg["train"]["channels_last"],
    )
    metrics = longtail_metrics(
        logits.argmax(axis=1),
        labels,
        class_counts,
        cfg["eval"]["many_threshold"],
        cfg["eval"]["few_threshold"],
    )
    return metrics, logits, labels


# ----------------------------------------------------------------------------------------------- build


@dataclass
class Trainer:
    """Everything one run holds; built by :func:`build_trainer`, advanced by :func:`run_epoch`."""

    cfg: dict[str, Any]
    out_dir: Path
    device: torch.device
    amp_dtype: torch.dtype | None
    splits: Any
    class_counts: list[int]
    sampler: Any
    loader_generator: torch.Generator
    train_loader: DataLoader
    model: torch.nn.Module  # DDP-wrapped when distributed
    model_without_ddp: torch.nn.Module
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    meta: dict[str, Any]
    jsonl: JsonlLogger
    start_epoch: int = 0
    best_val: float = -1.0
    best_epoch: int = -1

    @property
    def epochs(self) -> int:
        return int(self.cfg["optim"]["epochs"])

    @property
    def has_val(self) -> bool:
        return self.splits.val is not None and len(self.splits.val) > 0

    @property
    def select_metric(self) -> str:
        return str(self.cfg["eval"]["select_metric"])

    def checkpoint_state(self, epoch: int) -> dict[str, Any]:
        return {
            "model": self.model_without_ddp.state_dict(),
            "criterion": self.criterion.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": epoch,
            "best_val_acc": self.best_val,  # the value of eval.select_metric (name kept for old checkpoints)
            "select_metric": self.select_metric,
            "best_epoch": self.best_epoch,
            "rng": capture_rng_state(),
            "config": to_plain(self.cfg),
            "meta": self.meta,
        }


def build_data(cfg: dict[str, Any], device: torch.device) -> tuple[Any, Any, torch.Generator, DataLoader]:
    """Splits with their transforms, the train sampler, its generator and the train loader."""
    data_cfg = cfg["data"]
    try:
        splits = build_datasets(data_cfg["name"], data_cfg["dir"], **(data_cfg["kwargs"] or {}))
    except FileNotFoundError as err:
        raise ConfigError(f"{option_name('data.dir')}: {err}") from None
    except ValueError as err:
        raise ConfigError(f"data (data.name={data_cfg['name']}, data.kwargs): {err}") from None
    preset = data_cfg["preset"] or splits.default_preset
    train_tf = create_transforms(preset, True, splits.resize, splits.crop, splits.mean, splits.std)
    eval_tf = create_transforms(preset, False, splits.resize, splits.crop, splits.mean, splits.std)
    splits.train.transform = TwoViewTransform(train_tf)
    for ds in (splits.val, splits.test):
        if ds is not None:
            ds.transform = eval_tf
    world, rank, seed = dist.get_world_size(), dist.get_rank(), int(cfg["seed"])
    global_batch = int(cfg["optim"]["batch_size"])
    if global_batch % world:
        raise ConfigError(f"optim.batch_size ({global_batch}) must be divisible by the world size ({world})")
    drop_last = len(splits.train) >= 2 * global_batch
    generator = torch.Generator()
    if world > 1:
        sampler: Any = DistributedSampler(
            splits.train, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=drop_last
        )
    else:
        sampler = RandomSampler(splits.train, generator=generator)
    loader = DataLoader(
        splits.train,
        batch_size=global_batch // world,
        sampler=sampler,
        num_workers=data_cfg["num_workers"],
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
        persistent_workers=False,
        generator=generator,
    )
    counts = list(splits.class_counts)
    log.info(
        "data %s: %d train / %s val / %d test images, %d classes, counts %d..%d",
        data_cfg["name"],
        len(splits.train),
        len(splits.val) if splits.val is not None else "no",
        len(splits.test),
        len(counts),
        max(counts),
        min(counts),
    )
    return splits, sampler, generator, loader


def build_model(cfg: dict[str, Any], num_classes: int, device: torch.device) -> torch.nn.Module:
    """Encoder + linear classifier + projection head, on ``device`` (channels_last if asked)."""
    model = create_model(
        cfg["model"]["arch"],
        num_classes=num_classes,
        proj_dim=cfg["model"]["proj_dim"],
        pretrained_weights=cfg["model"]["pretrained_weights"],
        **(cfg["model"]["kwargs"] or {}),
    ).to(device)
    if cfg["train"]["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_criterion(cfg: dict[str, Any], class_counts: list[int], device: torch.device) -> torch.nn.Module:
    """The training criterion of ``cfg["method"]`` (ResCom holds the class-balanced queue)."""
    loss_cfg = cfg["loss"]
    try:
        criterion = create_loss(
            cfg["method"],
            class_counts=class_counts,
            dim=cfg["model"]["proj_dim"],
            **{k: loss_cfg[k] for k in ("queue_size", "num_positives", "num_negatives")},
            **{k: loss_cfg[k] for k in ("temperature", "con_weight", "beta")},
        )
    except ValueError as err:
        raise ConfigError(f"loss: {err}") from None
    return criterion.to(device)


def build_optimization(
    cfg: dict[str, Any], model: torch.nn.Module, device: torch.device, amp_dtype: torch.dtype | None
) -> tuple[torch.optim.Optimizer, Any, torch.amp.GradScaler | None]:
    """SGD, the LR schedule (per epoch) and, for fp16 autocast, a GradScaler on the same device type."""
    optim_cfg = cfg["optim"]
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=float(optim_cfg["lr"]),
        momentum=float(optim_cfg["momentum"]),
        weight_decay=float(optim_cfg["weight_decay"]),
        nesterov=bool(optim_cfg["nesterov"]),
    )
    multiplier = lr_multiplier(
        optim_cfg["schedule"],
        int(optim_cfg["epochs"]),
        int(optim_cfg["warmup_epochs"]),
        optim_cfg["milestones"],
        float(optim_cfg["gamma"]),
        float(optim_cfg["min_lr_ratio"]),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    return optimizer, scheduler, scaler


def setup_run(cfg: dict[str, Any]) -> tuple[Path, torch.device, torch.dtype | None]:
    """Output folder, logging, CPU threads, device, AMP dtype and seeds; logs what was chosen."""
    out_dir = Path(cfg["output_dir"])
    if dist.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    setup_logging(out_dir)
    threads, why = choose_num_threads(cfg)
    torch.set_num_threads(threads)
    device = select_device(str(cfg["device"]))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    amp_dtype = select_amp(cfg["train"]["amp"], device)
    seed_everything(int(cfg["seed"]))
    log.info(
        "rescom %s | method %s | device %s | world size %d | amp %s | CPU threads %d (%s)",
        __version__,
        cfg["method"],
        device,
        dist.get_world_size(),
        amp_dtype,
        torch.get_num_threads(),
        why,
    )
    return out_dir, device, amp_dtype


def build_trainer(cfg: dict[str, Any]) -> Trainer:
    """Set up the run and build data, model, criterion and optimisation (no training yet)."""
    out_dir, device, amp_dtype = setup_run(cfg)
    splits, sampler, generator, loader = build_data(cfg, device)
    class_counts = [int(c) for c in splits.class_counts]
    for warning in check_recipe(cfg, class_counts):  # K vs the rarest class, Qn vs K·(C−1), Qp vs K
        log.warning("%s", warning)
    model = build_model(cfg, len(class_counts), device)
    criterion = build_criterion(cfg, class_counts, device)
    optimizer, scheduler, scaler = build_optimization(cfg, model, device, amp_dtype)
    jsonl = JsonlLogger(
        out_dir / "log.jsonl", out_dir / "tensorboard" if cfg["train"]["tensorboard"] else None
    )
    return Trainer(
        cfg=cfg,
        out_dir=out_dir,
        device=device,
        amp_dtype=amp_dtype,
        splits=splits,
        class_counts=class_counts,
        sampler=sampler,
        loader_generator=generator,
        train_loader=loader,
        model=model,
        model_without_ddp=model,
        criterion=criterion,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        meta=build_meta(cfg, splits, model),
        jsonl=jsonl,
    )


def wrap_distributed(tr: Trainer) -> None:
    """SyncBN and DDP when there is more than one rank (after resuming, which loads plain state dicts)."""
    if dist.get_world_size() == 1:
        return
    if tr.cfg["model"]["sync_bn"]:
        tr.model_without_ddp = torch.nn.SyncBatchNorm.convert_sync_batchnorm(tr.model_without_ddp)
    device_ids = [tr.device.index] if tr.device.type == "cuda" else None
    tr.model = DistributedDataParallel(tr.model_without_ddp, device_ids=device_ids)


# ---------------------------------------------------------------------------------------------- resume


def resume_trainer(tr: Trainer, resume: str | None) -> None:
    """Load model, queue, optimiser, schedule, scaler and RNG state from a checkpoint (``auto``: last.pt)."""
    if resume is None:
        return
    path = tr.out_dir / "last.pt" if resume == "auto" else Path(resume)
    state = load_checkpoint(path)
    tr.model_without_ddp.load_state_dict(state["model"])
    tr.criterion.load_state_dict(state["criterion"])
    tr.optimizer.load_state_dict(state["optimizer"])
    tr.scheduler.load_state_dict(state["scheduler"])
    if tr.scaler is not None and state.get("scaler"):
        tr.scaler.load_state_dict(state["scaler"])
    restore_rng_state(state["rng"])
    tr.start_epoch = int(state["epoch"]) + 1
    tr.best_val, tr.best_epoch = float(state["best_val_acc"]), int(state["best_epoch"])
    saved_metric = state.get("select_metric", "top1")  # checkpoints before eval.select_metric used top-1
    if saved_metric != tr.select_metric and tr.best_epoch >= 0:
        log.warning(
            "the checkpoint selected best.pt by val %s, this run by val %s: the next evaluation starts afresh",
            saved_metric,
            tr.select_metric,
        )
        tr.best_val = -1.0
    log.info(
        "resumed from %s at epoch %d (best val %s %.2f at epoch %d)",
        path,
        tr.start_epoch,
        tr.select_metric,
        tr.best_val,
        tr.best_epoch + 1,
    )


# ------------------------------------------------------------------------------------------- one epoch


def run_epoch(tr: Trainer, epoch: int) -> dict[str, Any]:
    """Train one epoch (seeded per epoch, so a resumed run matches); returns its log record."""
    cfg = tr.cfg
    seed = int(cfg["seed"])
    # Per-epoch seeding makes a resumed run identical to an uninterrupted one (data order, augmentation).
    seed_everything(seed + 1009 * epoch + dist.get_rank())
    tr.loader_generator.manual_seed(seed + 7919 * epoch)
    if isinstance(tr.sampler, DistributedSampler):
        tr.sampler.set_epoch(epoch)
    progress = None
    if cfg["train"]["progress"] and dist.is_main():
        from tqdm.auto import tqdm

        progress = tqdm(
            total=len(tr.train_loader), desc=f"epoch {epoch + 1}/{tr.epochs}", leave=False, file=sys.stderr
        )
    lr = tr.optimizer.param_groups[0]["lr"]
    loss_cfg = cfg["loss"]
    if hasattr(tr.criterion, "con_weight"):  # λ warm-up while the queue fills (rescom.recipes)
        tr.criterion.con_weight = contrastive_weight(
            loss_cfg["con_weight"], epoch, loss_cfg["con_warmup_epochs"]
        )
    try:
        stats = train_one_epoch(
            tr.model,
            tr.criterion,
            tr.optimizer,
            tr.train_loader,
            tr.device,
            epoch=epoch,
            scaler=tr.scaler,
            amp_dtype=tr.amp_dtype,
            channels_last=cfg["train"]["channels_last"],
            grad_clip=cfg["train"]["grad_clip"],
            progress=progress,
            progress_every=int(cfg["train"]["progress_every"]),
        )
    except NonFiniteLossError as err:
        log.error("%s", err)
        raise SystemExit(f"stopped: {err}") from None
    finally:
        if progress is not None:
            progress.close()
    tr.scheduler.step()
    return {
        "epoch": epoch + 1,
        "lr": lr,
        "loss": stats.loss,
        "loss_cls": stats.loss_cls,
        "loss_con": stats.loss_con,
        "train_top1": stats.top1,
        "images_per_s": stats.images_per_s,
        "epoch_s": stats.seconds,
    }


# ------------------------------------------------------------------------------ evaluate and checkpoint


def evaluate_and_checkpoint(tr: Trainer, epoch: int, record: dict[str, Any]) -> dict[str, Any]:
    """Validate when due, keep best.pt by ``eval.select_metric``, always write last.pt, log the epoch."""
    is_best = False
    last_epoch = epoch + 1 == tr.epochs
    if tr.has_val and ((epoch + 1) % int(tr.cfg["train"]["eval_every"]) == 0 or last_epoch):
        val_metrics, _, _ = evaluate_split(
            tr.model_without_ddp, tr.splits.val, tr.device, tr.cfg, tr.class_counts, len(tr.class_counts)
        )
        record.update({f"val_{k}": v for k, v in val_metrics.items() if k != "per_class_acc"})
        value = val_metrics[tr.select_metric]
        if value is not None and value > tr.best_val:
            tr.best_val, tr.best_epoch, is_best = float(value), epoch, True
    elif not tr.has_val and last_epoch:
        tr.best_epoch, is_best = epoch, True
    if dist.is_main():
        state = tr.checkpoint_state(epoch)
        save_checkpoint(state, tr.out_dir / "last.pt")
        if is_best:
            save_checkpoint(state, tr.out_dir / "best.pt")
    dist.barrier()
    tr.jsonl.write(record)
    val = (
        f"val top1 {record['val_top1']:.2f} balanced {record['val_balanced_acc']:.2f} "
        if "val_top1" in record
        else ""
    )
    log.info(
        "epoch %d/%d lr %.4g loss %.4f (cls %.4f con %.4f) train top1 %.2f %s| %.0f img/s",
        epoch + 1,
        tr.epochs,
        record["lr"],
        record["loss"],
        record["loss_cls"],
        record["loss_con"],
        record["train_top1"],
        val,
        record["images_per_s"],
    )
    return record


# ---------------------------------------------------------------------------------------------- finish


def finish(tr: Trainer, train_seconds: float) -> dict[str, Any]:
    """Test the selected model, fit T on val, write metrics.json and the metrics into best.pt's meta."""
    cfg, num_classes = tr.cfg, len(tr.class_counts)
    best_state = load_checkpoint(tr.out_dir / "best.pt")
    tr.model_without_ddp.load_state_dict(best_state["model"])
    test_metrics, _, _ = evaluate_split(
        tr.model_without_ddp, tr.splits.test, tr.device, cfg, tr.class_counts, num_classes
    )
    temperature = None
    if tr.has_val:
        _, val_logits, val_labels = evaluate_split(
            tr.model_without_ddp, tr.splits.val, tr.device, cfg, tr.class_counts, num_classes
        )
        temperature = fit_temperature(val_logits, val_labels)
    summary = {
        "method": cfg["method"],
        "dataset": cfg["data"]["name"],
        "arch": cfg["model"]["arch"],
        "epoch": int(best_state["epoch"]) + 1,
        "epochs": tr.epochs,
        "select_metric": tr.select_metric,
        "best_val": tr.best_val if tr.has_val else None,
        **test_metrics,
        "temperature": temperature,
        "many_threshold": cfg["eval"]["many_threshold"],
        "few_threshold": cfg["eval"]["few_threshold"],
        "class_names": tr.meta["class_names"],
        "class_counts": tr.meta["class_counts"],
        "train_seconds": train_seconds,
        "num_threads": torch.get_num_threads(),
        "seed": int(cfg["seed"]),
        "rescom_version": __version__,
    }
    if dist.is_main():
        _write_outputs(tr, best_state, summary, test_metrics, temperature)
    return summary


def _write_outputs(
    tr: Trainer,
    best_state: dict[str, Any],
    summary: dict[str, Any],
    test_metrics: dict[str, Any],
    temperature: float | None,
) -> None:
    best_state["meta"] = {
        **best_state["meta"],
        "temperature": temperature,
        "metrics": {k: test_metrics[k] for k in HEADLINE_METRICS},
    }
    save_checkpoint(best_state, tr.out_dir / "best.pt")
    tmp = tr.out_dir / ".metrics.json.tmp"
    tmp.write_text(json.dumps(to_plain(summary), indent=2) + "\n")
    os.replace(tmp, tr.out_dir / "metrics.json")
    log.info(
        "test (best epoch %d by val %s): top1 %.2f | balanced %.2f | many %s | medium %s | few %s | T %s",
        summary["epoch"],
        tr.select_metric,
        summary["top1"],
        summary["balanced_acc"],
        _fmt(summary["many"]),
        _fmt(summary["medium"]),
        _fmt(summary["few"]),
        f"{temperature:.3f}" if temperature else "n/a",
    )
    names = ("last.pt", "best.pt", "config.yaml", "log.jsonl", "metrics.json")
    log.info("wrote %s", ", ".join(str(tr.out_dir / n) for n in names))


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


# --------------------------------------------------------------------------------------------- the run


def train(cfg: dict[str, Any], resume: str | None) -> dict[str, Any]:
    """build → resume → (one epoch → evaluate + checkpoint)* → finish; returns metrics.json's content."""
    tr = build_trainer(cfg)
    resume_trainer(tr, resume)
    wrap_distributed(tr)
    if dist.is_main():
        with (tr.out_dir / "config.yaml").open("w") as fh:
            yaml.safe_dump(to_plain(cfg), fh, sort_keys=False)
    if not tr.has_val:
        log.warning(
            "no validation split: the last epoch is kept as best.pt (the test split is never used to select)"
        )
    t_start = time.perf_counter()
    stop_after = cfg["train"]["stop_after_epochs"]
    stop_epoch = tr.epochs if stop_after is None else min(tr.epochs, int(stop_after))
    for epoch in range(tr.start_epoch, stop_epoch):
        evaluate_and_checkpoint(tr, epoch, run_epoch(tr, epoch))
    if stop_epoch < tr.epochs:
        log.info(
            "stopped after epoch %d of %d as asked (train.stop_after_epochs); continue with --resume",
            stop_epoch,
            tr.epochs,
        )
        return {"stopped_after_epoch": stop_epoch}
    return finish(tr, time.perf_counter() - t_start)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Resolve and check the config (no data loaded yet), then train; returns metrics.json's content.

    Raises:
        ConfigError: A user mistake (bad recipe, flag, override or path), before any data is loaded.
    """
    cfg = resolve_config(args)
    check_paths(cfg, args.resume)
    if dist.get_rank() == 0:
        for line in unused_option_warnings(cfg, args):
            print(f"train.py: warning: {line}", file=sys.stderr)
    dist.init_distributed(device=cfg["device"])
    try:
        return train(cfg, args.resume)
    finally:
        dist.destroy_distributed()


def cli(argv: list[str] | None = None) -> int:
    """Command-line entry point: exit status 0, or 2 with one ``train.py: error:`` line for a user error."""
    args = get_args_parser().parse_intermixed_args(argv)
    try:
        main(args)
    except ConfigError as err:
        if args.debug:
            raise
        print_error(str(err))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
