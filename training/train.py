"""Train a ResCom model (or a Balanced-Softmax / CE baseline) on a long-tailed dataset.

    python training/train.py --config training/configs/digits_lt.yaml --output-dir runs/digits
    torchrun --nproc_per_node=8 training/train.py --config training/configs/imagenet_lt.yaml --data-dir /data

Config flows one way: defaults (rescom.config) ← YAML recipe ← flags ← ``key=value`` overrides, e.g.
``optim.lr=0.05 loss.num_negatives=200``. Writes ``last.pt``, ``best.pt``, ``config.yaml``, ``log.jsonl`` and
``metrics.json`` into ``--output-dir``. ``--resume`` continues exactly where ``last.pt`` stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
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
from rescom.config import METHODS, apply_overrides, load_config, validate_config
from rescom.data import build_datasets
from rescom.data.transforms import TwoViewTransform, create_transforms
from rescom.losses import create_loss
from rescom.metrics import longtail_metrics
from rescom.models import create_model
from rescom.recipes import check as check_recipe
from rescom.recipes import contrastive_weight
from rescom.schedule import lr_multiplier
from training.engine import NonFiniteLossError, predict_logits, train_one_epoch

log = logging.getLogger("rescom.train")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The command line; every flag is optional and overrides the YAML recipe."""
    p = argparse.ArgumentParser(description="Train ResCom on long-tailed data.", add_help=add_help)
    p.add_argument(
        "--config", default="training/configs/digits_lt.yaml", help="YAML recipe (default: %(default)s)"
    )
    p.add_argument("--method", choices=METHODS, help="rescom (default), or a baseline on the same recipe")
    p.add_argument("--epochs", type=int, help="number of epochs (overrides optim.epochs)")
    p.add_argument("--batch-size", type=int, help="global batch size per view (overrides optim.batch_size)")
    p.add_argument("--lr", type=float, help="base learning rate (overrides optim.lr)")
    p.add_argument("--output-dir", help="where checkpoints and logs go (default: runs/<config name>)")
    p.add_argument("--data-dir", help="dataset root (overrides data.dir)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument(
        "--resume", nargs="?", const="auto", help="checkpoint to resume; bare flag = OUTPUT_DIR/last.pt"
    )
    p.add_argument("--seed", type=int, help="random seed (default: 0)")
    p.add_argument("--workers", type=int, help="data-loading worker processes (overrides data.num_workers)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=0.05")
    return p


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults ← recipe ← flags ← overrides, validated."""
    cfg = load_config(args.config)
    flags = {
        "method": args.method,
        "optim.epochs": args.epochs,
        "optim.batch_size": args.batch_size,
        "optim.lr": args.lr,
        "data.dir": args.data_dir,
        "device": args.device,
        "seed": args.seed,
        "data.num_workers": args.workers,
    }
    cfg = apply_overrides(cfg, [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None])
    if args.no_progress:
        cfg["train"]["progress"] = False
    cfg = apply_overrides(cfg, args.overrides)
    if args.output_dir:
        cfg["output_dir"] = args.output_dir
    elif args.config and cfg["output_dir"] == "runs/default":
        cfg["output_dir"] = f"runs/{Path(args.config).stem}"
    validate_config(cfg)
    return cfg


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
    amp_dtype: torch.dtype | None,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Top-1 / Many / Medium / Few (percent) of ``dataset`` plus its raw logits and labels."""
    logits, labels = predict_logits(
        model,
        dataset,
        device,
        batch_size=cfg["eval"]["batch_size"],
        num_workers=cfg["data"]["num_workers"],
        amp_dtype=amp_dtype,
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


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train, select on validation, evaluate on test; returns the content of metrics.json."""
    cfg = resolve_config(args)
    dist.init_distributed()
    try:
        return _train(cfg, args.resume)
    finally:
        dist.destroy_distributed()


def _train(cfg: dict[str, Any], resume: str | None) -> dict[str, Any]:
    out_dir = Path(cfg["output_dir"])
    if dist.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    setup_logging(out_dir)
    device = select_device(str(cfg["device"]))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    amp_dtype = select_amp(cfg["train"]["amp"], device)
    seed = int(cfg["seed"])
    seed_everything(seed)
    world, rank = dist.get_world_size(), dist.get_rank()
    log.info(
        "rescom %s | method %s | device %s | world size %d | amp %s",
        __version__,
        cfg["method"],
        device,
        world,
        amp_dtype,
    )

    # --- data ---------------------------------------------------------------------------------------------
    data_cfg = cfg["data"]
    splits = build_datasets(data_cfg["name"], data_cfg["dir"], **(data_cfg["kwargs"] or {}))
    preset = data_cfg["preset"] or splits.default_preset
    train_tf = create_transforms(preset, True, splits.resize, splits.crop, splits.mean, splits.std)
    eval_tf = create_transforms(preset, False, splits.resize, splits.crop, splits.mean, splits.std)
    splits.train.transform = TwoViewTransform(train_tf)
    for ds in (splits.val, splits.test):
        if ds is not None:
            ds.transform = eval_tf
    class_counts = list(splits.class_counts)
    for warning in check_recipe(cfg, class_counts):
        log.warning("%s", warning)
    global_batch = int(cfg["optim"]["batch_size"])
    if global_batch % world:
        raise SystemExit(f"optim.batch_size ({global_batch}) must be divisible by the world size ({world})")
    batch = global_batch // world
    drop_last = len(splits.train) >= 2 * global_batch
    loader_generator = torch.Generator()
    if world > 1:
        sampler: Any = DistributedSampler(
            splits.train, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=drop_last
        )
    else:
        sampler = RandomSampler(splits.train, generator=loader_generator)
    train_loader = DataLoader(
        splits.train,
        batch_size=batch,
        sampler=sampler,
        num_workers=data_cfg["num_workers"],
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
        persistent_workers=False,
        generator=loader_generator,
    )
    log.info(
        "data %s: %d train / %s val / %d test images, %d classes, counts %d..%d",
        data_cfg["name"],
        len(splits.train),
        len(splits.val) if splits.val is not None else "no",
        len(splits.test),
        len(class_counts),
        max(class_counts),
        min(class_counts),
    )

    # --- model, loss, optimiser ---------------------------------------------------------------------------
    model = create_model(
        cfg["model"]["arch"],
        num_classes=len(class_counts),
        proj_dim=cfg["model"]["proj_dim"],
        pretrained_weights=cfg["model"]["pretrained_weights"],
        **(cfg["model"]["kwargs"] or {}),
    ).to(device)
    if cfg["train"]["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    loss_cfg = cfg["loss"]
    criterion = create_loss(
        cfg["method"],
        class_counts=class_counts,
        dim=cfg["model"]["proj_dim"],
        queue_size=loss_cfg["queue_size"],
        num_positives=loss_cfg["num_positives"],
        num_negatives=loss_cfg["num_negatives"],
        temperature=loss_cfg["temperature"],
        con_weight=loss_cfg["con_weight"],
        beta=loss_cfg["beta"],
    ).to(device)
    optim_cfg = cfg["optim"]
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=float(optim_cfg["lr"]),
        momentum=float(optim_cfg["momentum"]),
        weight_decay=float(optim_cfg["weight_decay"]),
        nesterov=bool(optim_cfg["nesterov"]),
    )
    epochs = int(optim_cfg["epochs"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lr_multiplier(
            optim_cfg["schedule"],
            epochs,
            int(optim_cfg["warmup_epochs"]),
            optim_cfg["milestones"],
            float(optim_cfg["gamma"]),
            float(optim_cfg["min_lr_ratio"]),
        ),
    )
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    meta = build_meta(cfg, splits, model)

    start_epoch, best_val, best_epoch = 0, -1.0, -1
    resume_path = out_dir / "last.pt" if resume == "auto" else (Path(resume) if resume else None)
    if resume_path is not None:
        state = load_checkpoint(resume_path)
        model.load_state_dict(state["model"])
        criterion.load_state_dict(state["criterion"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        start_epoch = int(state["epoch"]) + 1
        best_val, best_epoch = float(state["best_val_acc"]), int(state["best_epoch"])
        log.info(
            "resumed from %s at epoch %d (best val %.2f at epoch %d)",
            resume_path,
            start_epoch,
            best_val,
            best_epoch + 1,
        )

    model_without_ddp = model
    if cfg["model"]["sync_bn"] and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model_without_ddp = model
    if world > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    if dist.is_main():
        with (out_dir / "config.yaml").open("w") as fh:
            yaml.safe_dump(to_plain(cfg), fh, sort_keys=False)
    jsonl = JsonlLogger(
        out_dir / "log.jsonl", out_dir / "tensorboard" if cfg["train"]["tensorboard"] else None
    )
    has_val = splits.val is not None and len(splits.val) > 0
    if not has_val:
        log.warning(
            "no validation split: the last epoch is kept as best.pt (the test split is never used to select)"
        )

    def checkpoint_state(epoch: int) -> dict[str, Any]:
        return {
            "model": model_without_ddp.state_dict(),
            "criterion": criterion.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": epoch,
            "best_val_acc": best_val,
            "best_epoch": best_epoch,
            "rng": capture_rng_state(),
            "config": to_plain(cfg),
            "meta": meta,
        }

    # --- loop ---------------------------------------------------------------------------------------------
    t_start = time.perf_counter()
    stop_after = cfg["train"]["stop_after_epochs"]
    stop_epoch = epochs if stop_after is None else min(epochs, int(stop_after))
    for epoch in range(start_epoch, stop_epoch):
        # Per-epoch seeding makes a resumed run identical to an uninterrupted one (data order, augmentation).
        seed_everything(seed + 1009 * epoch + rank)
        loader_generator.manual_seed(seed + 7919 * epoch)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        progress = None
        if cfg["train"]["progress"] and dist.is_main():
            from tqdm.auto import tqdm

            progress = tqdm(
                total=len(train_loader), desc=f"epoch {epoch + 1}/{epochs}", leave=False, file=sys.stderr
            )
        lr = optimizer.param_groups[0]["lr"]
        if hasattr(criterion, "con_weight"):  # λ warm-up while the queue fills (rescom.recipes)
            criterion.con_weight = contrastive_weight(
                loss_cfg["con_weight"], epoch, loss_cfg["con_warmup_epochs"]
            )
        try:
            stats = train_one_epoch(
                model,
                criterion,
                optimizer,
                train_loader,
                device,
                epoch=epoch,
                scaler=scaler,
                amp_dtype=amp_dtype,
                channels_last=cfg["train"]["channels_last"],
                grad_clip=cfg["train"]["grad_clip"],
                progress=progress,
            )
        except NonFiniteLossError as err:
            log.error("%s", err)
            raise SystemExit(f"stopped: {err}") from None
        finally:
            if progress is not None:
                progress.close()
        scheduler.step()
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": lr,
            "loss": stats.loss,
            "loss_cls": stats.loss_cls,
            "loss_con": stats.loss_con,
            "train_acc": stats.acc,
            "images_per_s": stats.images_per_s,
            "epoch_s": stats.seconds,
        }
        is_best = False
        last_epoch = epoch + 1 == epochs
        if has_val and ((epoch + 1) % int(cfg["train"]["eval_every"]) == 0 or last_epoch):
            val_metrics, _, _ = evaluate_split(
                model_without_ddp, splits.val, device, cfg, class_counts, amp_dtype
            )
            record.update({f"val_{k}": v for k, v in val_metrics.items() if k != "per_class_acc"})
            if val_metrics["acc"] > best_val:
                best_val, best_epoch, is_best = float(val_metrics["acc"]), epoch, True
        elif not has_val and last_epoch:
            best_epoch, is_best = epoch, True
        if dist.is_main():
            state = checkpoint_state(epoch)
            save_checkpoint(state, out_dir / "last.pt")
            if is_best:
                save_checkpoint(state, out_dir / "best.pt")
        dist.barrier()
        jsonl.write(record)
        log.info(
            "epoch %d/%d lr %.4g loss %.4f (cls %.4f con %.4f) train acc %.2f %s| %.0f img/s",
            epoch + 1,
            epochs,
            lr,
            stats.loss,
            stats.loss_cls,
            stats.loss_con,
            stats.acc,
            f"val acc {record['val_acc']:.2f} " if "val_acc" in record else "",
            stats.images_per_s,
        )

    if stop_epoch < epochs:
        log.info(
            "stopped after epoch %d of %d as asked (train.stop_after_epochs); continue with --resume",
            stop_epoch,
            epochs,
        )
        return {"stopped_after_epoch": stop_epoch}

    # --- final evaluation of the selected model -----------------------------------------------------------
    best_path = out_dir / "best.pt"
    best_state = load_checkpoint(best_path)
    model_without_ddp.load_state_dict(best_state["model"])
    test_metrics, _, _ = evaluate_split(model_without_ddp, splits.test, device, cfg, class_counts, amp_dtype)
    temperature = None
    if has_val:
        _, val_logits, val_labels = evaluate_split(
            model_without_ddp, splits.val, device, cfg, class_counts, amp_dtype
        )
        temperature = fit_temperature(val_logits, val_labels)
    summary = {
        "method": cfg["method"],
        "dataset": cfg["data"]["name"],
        "arch": cfg["model"]["arch"],
        "epoch": int(best_state["epoch"]) + 1,
        "epochs": epochs,
        "val_acc": best_val if has_val else None,
        **test_metrics,
        "temperature": temperature,
        "many_threshold": cfg["eval"]["many_threshold"],
        "few_threshold": cfg["eval"]["few_threshold"],
        "class_names": meta["class_names"],
        "class_counts": meta["class_counts"],
        "train_seconds": time.perf_counter() - t_start,
        "seed": seed,
        "rescom_version": __version__,
    }
    if dist.is_main():
        best_state["meta"] = {
            **best_state["meta"],
            "temperature": temperature,
            "metrics": {k: test_metrics[k] for k in ("acc", "many", "medium", "few")},
        }
        save_checkpoint(best_state, best_path)
        tmp = out_dir / ".metrics.json.tmp"
        tmp.write_text(json.dumps(to_plain(summary), indent=2) + "\n")
        os.replace(tmp, out_dir / "metrics.json")
        log.info(
            "test (best epoch %d): acc %.2f | many %s | medium %s | few %s | T %s",
            summary["epoch"],
            summary["acc"],
            _fmt(summary["many"]),
            _fmt(summary["medium"]),
            _fmt(summary["few"]),
            f"{temperature:.3f}" if temperature else "n/a",
        )
        log.info(
            "wrote %s",
            ", ".join(
                str(out_dir / n) for n in ("last.pt", "best.pt", "config.yaml", "log.jsonl", "metrics.json")
            ),
        )
    return summary


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main(get_args_parser().parse_intermixed_args())
