"""Time and peak memory of the ResCom loss + class-balanced queue + hard pair mining alone, at iNaturalist scale.

    python benchmarks/loss_scale.py [--classes 8142] [--queue-size 8] [--dim 128] [--batch 128]
                                    [--negatives 2000] [--steps 10] [--runs 3] [--device cpu] [--name loss_scale]

One step = ``ResComLoss.forward`` on a Siamese batch (2 x batch rows of logits [2b, C] and L2-normalised
embeddings [2b, d]; Balanced Softmax, queue similarities [2b, C*K], mining, class-balanced SupCon, enqueue of
view 1) followed by ``backward``. The queue starts completely filled, so mining sees every key.

Memory method (CPU): the measurement runs in a fresh Python subprocess. After importing torch, running one
step of the criterion on a tiny problem (so the kernels' code pages are loaded) and building the inputs, it
records ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the peak resident set size so far); it then
builds the criterion (queue buffers included), runs the steps and records ru_maxrss again. The difference is
the peak RSS increase caused by loss + queue + mining. It is an upper bound on what they need (allocator
caching counts too). On CUDA the script reports ``torch.cuda.max_memory_allocated`` over the same span.

``--runs`` fresh processes are measured one after the other; the script prints each and the medians (wall
ms/step, CPU ms/step of the process from ``time.process_time``, and MB), and writes ``benchmarks/results/<name>.json`` and ``.md`` with the machine, load average and command.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=8142, help="C (iNaturalist 2018: 8142)")
    p.add_argument("--queue-size", type=int, default=8, help="K keys per class")
    p.add_argument("--dim", type=int, default=128, help="d, embedding dimension")
    p.add_argument("--batch", type=int, default=128, help="b, images per view (rows = 2b)")
    p.add_argument("--positives", type=int, default=1, help="Qp")
    p.add_argument("--negatives", type=int, default=2000, help="Qn (training/configs/inat2018.yaml: 2000)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--device", default="cpu")
    p.add_argument("--runs", type=int, default=3, help="fresh processes measured; medians are reported")
    p.add_argument("--name", default="loss_scale", help="results file stem in benchmarks/results/")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _warm_up_kernels(device, args: argparse.Namespace) -> None:
    """One step of the same criterion on a tiny problem (C=16), so library code pages are already resident."""
    import torch
    import torch.nn.functional as F

    from rescom.losses import create_loss

    crit = create_loss(
        "rescom", class_counts=[4] * 16, dim=args.dim, queue_size=args.queue_size, num_negatives=8
    )
    crit = crit.to(device)
    crit.queue.filled.fill_(True)
    labels = torch.arange(8, device=device).repeat(2)  # [16]
    logits = torch.randn(16, 16, device=device, requires_grad=True)  # [16, C]
    raw = torch.randn(16, args.dim, device=device, requires_grad=True)  # [16, d]
    crit({"logits": logits, "embedding": F.normalize(raw, dim=1)}, labels)["loss"].backward()


def measure(args: argparse.Namespace) -> dict[str, object]:
    import torch
    import torch.nn.functional as F

    from rescom.losses import create_loss

    torch.manual_seed(0)
    device = torch.device(args.device)
    c, b = args.classes, args.batch
    counts = [max(2, int(1000 * (0.002 ** (i / (c - 1))))) for i in range(c)]  # long-tailed, IF 500
    y = torch.multinomial(torch.tensor(counts, dtype=torch.float), b, replacement=True).to(device)
    labels = torch.cat([y, y])  # [2b]
    logits = torch.randn(2 * b, c, device=device, requires_grad=True)  # [2b, C]
    raw = torch.randn(2 * b, args.dim, device=device, requires_grad=True)  # [2b, d]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20
    _warm_up_kernels(device, args)  # load the kernels' code pages first: they are not the loss's memory
    rss_before = _peak_rss_mb()

    crit = create_loss(
        "rescom",
        class_counts=counts,
        dim=args.dim,
        queue_size=args.queue_size,
        num_positives=args.positives,
        num_negatives=args.negatives,
        temperature=0.2,
        con_weight=0.5,
        beta=0.999999,
    ).to(device)
    with torch.no_grad():  # a full queue, filled in place (no large temporaries)
        crit.queue.keys.normal_()
        crit.queue.keys.div_(crit.queue.keys.norm(dim=-1, keepdim=True))
        crit.queue.filled.fill_(True)

    times, cpu_times = [], []
    for step in range(args.warmup + args.steps):
        logits.grad = raw.grad = None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        out = crit({"logits": logits, "embedding": F.normalize(raw, dim=1)}, labels)
        out["loss"].backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    ms = 1000 * statistics.median(times)
    cpu_ms = 1000 * statistics.median(cpu_times)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20 - base
        how = "torch.cuda.max_memory_allocated increase"
    else:
        peak = _peak_rss_mb() - rss_before
        how = "peak RSS increase (ru_maxrss delta, fresh process)"
    queue_mb = crit.queue.keys.numel() * crit.queue.keys.element_size() / 2**20
    setup = (
        f"C={c} K={args.queue_size} d={args.dim} batch 2x{b} Qp={args.positives} Qn={args.negatives} "
        f"device={device} threads={torch.get_num_threads()} torch {torch.__version__}; queue keys {queue_mb:.0f} MB"
    )
    return {
        "setup": setup,
        "ms_per_step": ms,
        "cpu_ms_per_step": cpu_ms,
        "peak_mb": peak,
        "memory_method": how,
    }


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    if args.child:
        print(json.dumps(measure(args)), flush=True)
        return
    from rescom_dev.machine import describe_machine
    from rescom_dev.results import write_result

    machine = describe_machine()
    argv = argv if argv is not None else sys.argv[1:]
    runs = []
    for i in range(args.runs):
        # A fresh interpreter each time, so ru_maxrss starts from this measurement alone.
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--child"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
        r = runs[-1]
        print(
            f"run {i + 1}: {r['ms_per_step']:.1f} ms/step (CPU {r['cpu_ms_per_step']:.1f} ms), +{r['peak_mb']:.0f} MB",
            flush=True,
        )
    ms = statistics.median(r["ms_per_step"] for r in runs)
    cpu_ms = statistics.median(r["cpu_ms_per_step"] for r in runs)
    mb = statistics.median(r["peak_mb"] for r in runs)
    lines = [
        f"setup: {runs[0]['setup']}",
        "",
        f"inat-scale loss+queue+mining (forward+backward), median of {args.runs} fresh processes "
        f"x {args.steps} steps: **{ms:.1f} ms/step** wall (target <= 150), {cpu_ms:.1f} ms/step CPU time of the "
        f"process, **+{mb:.0f} MB** (target <= +200; {runs[0]['memory_method']})",
    ]
    print("\n".join(lines))
    write_result(
        args.name,
        {"runs": runs, "ms_per_step": ms, "cpu_ms_per_step": cpu_ms, "peak_mb": mb},
        "\n".join(lines),
        machine,
    )


if __name__ == "__main__":
    main()
