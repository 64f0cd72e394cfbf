"""Side-by-side serving benchmark: the same ONNX model and the same per-request work behind five servers.

    .venv/bin/python benchmarks/serving/run_all.py            # full run (~10 min on 2 cores)
    .venv/bin/python benchmarks/serving/run_all.py --quick    # development run (~4 min)
    .venv/bin/python benchmarks/serving/run_all.py --servers rescom,mosec --concurrencies 1,64

Servers: our service (``python -m service``), Mosec, LitServe, BentoML and Triton via PyTriton, each in its own
virtual environment under ``benchmarks/serving/.envs/`` built from ``requirements-<name>.txt`` (exact pins).
For each server: start on 127.0.0.1, wait for readiness, accuracy pass over every digits-LT test image (labels
must equal offline ONNX Runtime), a short warm-up, then one wrk point per concurrency (closed loop, real PNG
bodies), then stop. The repeated top concurrencies run in further rounds, every server restarted in each round
(``--sequential``: all runs of a server at once). A raw ONNX Runtime reference (no HTTP) is measured in this
process first and last.

Writes ``<out>/serving.{md,json,png}`` (``--out`` defaults to ``benchmarks/results``); logs and wrk output go
to ``<out>/raw/serving/``. Every server runs N model instances x T ORT threads (``--instances``,
``--ort-threads``; default 2 x 1, the service's own default on 2 cores). A server that cannot be installed or
started is recorded with the reason and the run goes on. Needs ``wrk`` (``apt-get install -y wrk``) and the project's ``.venv``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.serving import report  # noqa: E402
from benchmarks.serving.accuracy import check_server, offline_reference  # noqa: E402
from benchmarks.serving.apps.pipeline import AppSettings, Pipeline  # noqa: E402
from benchmarks.serving.config import RESULTS_DIR, BenchConfig  # noqa: E402
from benchmarks.serving.envs import ensure_env, package_versions  # noqa: E402
from benchmarks.serving.reference import measure_engine, measure_reference  # noqa: E402
from benchmarks.serving.servers import SERVERS, RunningServer, ServerSpec, describe, start_server  # noqa: E402
from benchmarks.serving.workload import Image, load_images, write_wrk_requests  # noqa: E402
from benchmarks.serving.wrk import run_wrk, wrk_version  # noqa: E402
from rescom import model_repository as mr  # noqa: E402
from rescom_dev.machine import busy_cpu_seconds, describe_machine, load_average  # noqa: E402

VERSION_PACKAGES = {
    "rescom": ["fastapi", "uvicorn", "onnxruntime", "numpy", "pillow"],
    "mosec": ["mosec", "onnxruntime", "numpy", "pillow"],
    "litserve": ["litserve", "fastapi", "uvicorn", "onnxruntime", "numpy", "pillow"],
    "bentoml": ["bentoml", "onnxruntime", "numpy", "pillow"],
    "pytriton": ["nvidia-pytriton", "onnxruntime", "numpy", "pillow"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short points (3 s) for development")
    p.add_argument("--servers", default=",".join(s.key for s in SERVERS), help="comma-separated subset")
    p.add_argument("--concurrencies", default="1,16,64,256", help="comma-separated wrk connection counts")
    p.add_argument("--repeats", type=int, default=3, help="runs of each of the two highest concurrencies")
    p.add_argument(
        "--instances",
        type=int,
        default=2,
        help="model instances of every server (default 2: the service's own)",
    )
    p.add_argument(
        "--ort-threads",
        type=int,
        default=1,
        help="ORT intra-op threads per instance, every server (default 1)",
    )
    p.add_argument("--duration", type=float, default=None, help="seconds per point (default 12, quick 3)")
    p.add_argument("--model-dir", type=Path, default=None, help="models/NAME/N (default: newest digits_lt)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="where serving.{md,json,png} go")
    p.add_argument(
        "--service-root",
        type=Path,
        default=None,
        help="run our service from another checkout (its service/ and rescom/), e.g. to measure a patch",
    )
    p.add_argument(
        "--sequential",
        action="store_true",
        help="measure every run of a server before the next server (default: interleaved rounds)",
    )
    p.add_argument(
        "--render-only",
        action="store_true",
        help="rebuild serving.md and serving.png from --out/serving.json",
    )
    return p.parse_args(argv)


def newest_version(model_root: Path) -> Path:
    """``model_root/N`` with the largest N that holds a model.onnx."""
    versions = [
        v
        for v in mr.list_versions(model_root.parent, model_root.name)
        if (mr.version_path(model_root.parent, model_root.name, v) / "model.onnx").is_file()
    ]
    if not versions:
        raise SystemExit(f"no version with model.onnx under {model_root}; run `make bundle-model` first")
    return mr.version_path(model_root.parent, model_root.name, versions[-1])


def children_cpu_seconds() -> float:
    """CPU seconds of this process's finished children (wrk, once it has exited)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def round_plans(cfg: BenchConfig, interleave: bool) -> list[list[tuple[int, int]]]:
    """The (concurrency, run index) points of each round.

    Without interleaving: one round with every run of every point. Interleaved: round 1 measures each
    concurrency once; each further round restarts every server and measures the repeated concurrencies once
    more, so that the drift of a shared machine over minutes reaches every server alike instead of favouring
    the one measured first.
    """
    if not interleave:
        return [[(c, r) for c in cfg.concurrencies for r in range(cfg.runs_at(c))]]
    rounds = max(cfg.runs_at(c) for c in cfg.concurrencies)
    first = [(c, 0) for c in cfg.concurrencies]
    return [first] + [[(c, r) for c in cfg.concurrencies if cfg.runs_at(c) > r] for r in range(1, rounds)]


def measure_points(
    server: RunningServer, manifest: Path, cfg: BenchConfig, log: Path, plan: list[tuple[int, int]]
) -> list[dict[str, Any]]:
    """Warm up, then one wrk point per ``(concurrency, run)`` of ``plan`` with batch statistics, CPU and load."""
    run_wrk(
        server.base_url, manifest, 16, cfg.warmup_s, threads=cfg.wrk_threads, timeout_s=cfg.timeout_s, log=log
    )
    points = []
    for c, run in plan:
        before, split0 = server.batch_stats(), server.cpu_split()
        busy0, wrk0 = busy_cpu_seconds(), children_cpu_seconds()
        point = run_wrk(
            server.base_url,
            manifest,
            c,
            cfg.duration_s,
            threads=cfg.wrk_threads,
            timeout_s=cfg.timeout_s,
            log=log,
        )
        after, split1 = server.batch_stats(), server.cpu_split()
        cpu0, cpu1 = sum(split0.values()), sum(split1.values())
        busy1, wrk1 = busy_cpu_seconds(), children_cpu_seconds()
        row = point.to_dict()
        row["run"] = run + 1
        row["mean_batch"] = None
        if before is not None and after is not None and after[0] > before[0]:
            row["mean_batch"] = (after[1] - before[1]) / (after[0] - before[0])
        row["cpu_ms_per_req"] = (cpu1 - cpu0) * 1e3 / point.ok if point.ok else None
        row[
            "cpu_split_ms_per_req"
        ] = {  # where the server's CPU went: threads of the started process, children
            label: round((split1[label] - split0.get(label, 0.0)) * 1e3 / point.ok, 3)
            for label in split1
            if point.ok and split1[label] - split0.get(label, 0.0) > 0
        }
        row["load_1m"] = load_average()[0]
        row["wrk_cpu_pct"] = 100.0 * (wrk1 - wrk0) / point.duration_s
        # Everything else the machine did meanwhile (other users, the OS, steal): should be near 0.
        other = (busy1 - busy0) - (cpu1 - cpu0) - (wrk1 - wrk0)
        row["other_cpu_pct"] = max(0.0, 100.0 * other / point.duration_s)
        points.append(row)
        print(
            f"    c={c:<4d} run {run + 1} {point.throughput:7.0f} req/s  p50 {point.p50_ms:7.2f}  p99 {point.p99_ms:7.2f} ms  "
            f"errors {point.error_count}  batch {row['mean_batch'] or 0:.1f}  "
            f"cpu {row['cpu_ms_per_req'] or 0:.2f} ms/req  other {row['other_cpu_pct']:.0f}%  "
            + ", ".join(f"{label} {ms:.2f}" for label, ms in row["cpu_split_ms_per_req"].items()),
            flush=True,
        )
        # let the queues drain before the next point
        time.sleep(1.0)
    return points


def reference_run(settings: AppSettings, images: list[Image], cfg: BenchConfig, when: str) -> dict[str, Any]:
    """Raw ONNX Runtime reference (fresh sessions, as the servers have), printed and returned as a dict."""
    ref = measure_reference(Pipeline(settings), images, cfg.max_batch_size, cfg.ort_threads, cfg.quick)
    ref.instances = cfg.instances
    ref.engine_img_s, ref.ort_batch_img_s_instances = measure_engine(
        settings, cfg.instances, images, cfg.max_batch_size, cfg.quick
    )
    print(
        f"== raw ORT ({when}): batch-1 {ref.ort_b1_p50_ms:.2f} ms, batch-{cfg.max_batch_size} "
        f"{ref.ort_batch_img_s:.0f} img/s (1 session), decode {ref.decode_ms * 1e3:.0f} us/img, "
        f"calibration+JSON {ref.respond_ms * 1e3:.0f} us/img; {cfg.instances} x {cfg.ort_threads} threads: "
        f"ORT batch-{cfg.max_batch_size} {ref.ort_batch_img_s_instances:.0f} img/s, engine (decode + ORT + "
        f"top-k + JSON) {ref.engine_img_s:.0f} img/s",
        flush=True,
    )
    return {**ref.to_dict(), "when": when, "load_1m": load_average()[0]}


def new_entry(spec: ServerSpec, cfg: BenchConfig, service_root: Path | None) -> dict[str, Any]:
    """The result record of one server, before any point."""
    entry: dict[str, Any] = {
        "title": spec.title,
        "notes": describe(spec, cfg),
        "instances": cfg.instances,
        "ort_threads": cfg.ort_threads,
        "fmt": spec.fmt,
        "points": [],
        "error": None,
    }
    if spec.key == "rescom" and service_root is not None:
        entry["notes"] += f"; service/ from {service_root}"
    return entry


def run_server(
    spec: ServerSpec,
    entry: dict[str, Any],
    plan: list[tuple[int, int]],
    model_dir: Path,
    cfg: BenchConfig,
    images: list[Image],
    expected: list[Any] | None,
    manifests: dict[str, Path],
    raw_dir: Path,
    service_root: Path | None = None,
) -> None:
    """Start one server, check its answers (when ``expected`` is given), measure ``plan`` into ``entry``.

    ``entry["error"]`` says why when it could not run.
    """
    print(f"== {spec.title}", flush=True)
    env = ensure_env(spec.key)
    if env.python is None:
        entry["error"] = f"install failed: {env.error}"
        print(f"   {entry['error']}", flush=True)
        return
    entry["versions"] = package_versions(env.python, VERSION_PACKAGES.get(spec.key, []))
    entry.setdefault("load_1m_before", load_average()[0])
    log = raw_dir / f"{spec.key}.log"
    wrk_log = raw_dir / f"{spec.key}.wrk.txt"
    if expected is not None:
        wrk_log.write_text("")
    try:
        with start_server(spec, env.python, model_dir, cfg, log, service_root) as server:
            if expected is not None:
                acc = check_server(server.base_url, spec.fmt, images, expected)
                entry["accuracy"] = acc.to_dict()
                print(
                    f"   accuracy pass: {acc.label_match}/{acc.images} labels as offline ORT, "
                    f"{acc.accuracy_pct:.1f}% top-1, {acc.seconds:.1f} s {acc.failures[:2]}",
                    flush=True,
                )
            entry["points"] += measure_points(server, manifests[spec.fmt], cfg, wrk_log, plan)
    except (RuntimeError, OSError, subprocess.SubprocessError) as err:
        message = f"could not run: {err}"
        print(f"   {message}", flush=True)
        if entry["points"]:  # a later round: the runs already measured stand; this round is missing
            entry.setdefault("round_errors", []).append(message)
        else:
            entry["error"] = message


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the results."""
    args = parse_args(argv)
    if args.instances < 1 or args.ort_threads < 1:
        print("--instances and --ort-threads must be at least 1", file=sys.stderr)
        return 2
    if args.render_only:
        results = json.loads((args.out / "serving.json").read_text())
        write_outputs(results, args.out)
        return 0
    wrk = wrk_version()
    if wrk is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    cfg = BenchConfig(
        concurrencies=tuple(int(c) for c in args.concurrencies.split(",") if c),
        duration_s=args.duration or (3.0 if args.quick else 12.0),
        warmup_s=1.0 if args.quick else 2.0,
        repeats=args.repeats,
        instances=args.instances,
        ort_threads=args.ort_threads,
        quick=args.quick,
    )
    wanted = [k.strip() for k in args.servers.split(",") if k.strip()]
    unknown = set(wanted) - {s.key for s in SERVERS}
    if unknown:
        print(f"unknown servers: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    specs = [s for s in SERVERS if s.key in wanted]
    model_dir = (args.model_dir or newest_version(ROOT / "models" / "digits_lt")).resolve()
    machine = describe_machine()
    if machine["load_average_start"][0] > report.LOAD_LIMIT:
        print(
            f"WARNING: load average {machine['load_average_start']}: numbers will not be comparable",
            flush=True,
        )
    raw_dir = args.out / "raw" / "serving"  # logs and wrk request files next to the results
    raw_dir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)

    images = load_images()
    manifests = {
        fmt: write_wrk_requests(fmt, images, raw_dir / "requests" / fmt) for fmt in {s.fmt for s in specs}
    }
    settings = AppSettings(
        model_dir=model_dir,
        max_batch_size=cfg.max_batch_size,
        instances=cfg.instances,
        ort_threads=cfg.ort_threads,
    )
    expected = offline_reference(Pipeline(settings), images, cfg.max_batch_size)
    references = {"start": reference_run(settings, images, cfg, "start")}

    servers = {spec.key: new_entry(spec, cfg, args.service_root) for spec in specs}
    for round_index, plan in enumerate(round_plans(cfg, not args.sequential)):
        for spec in specs:
            entry = servers[spec.key]
            if entry["error"] is None and plan:
                check = expected if round_index == 0 else None
                run_server(
                    spec, entry, plan, model_dir, cfg, images, check, manifests, raw_dir, args.service_root
                )
    other = [p["other_cpu_pct"] for s in servers.values() for p in s["points"]]

    references["end"] = reference_run(settings, images, cfg, "end")
    best = min(references.values(), key=lambda r: r["c1_floor_ms"])  # the stricter floor for the c=1 check
    results: dict[str, Any] = {
        "meta": {
            "command": " ".join(
                ["python benchmarks/serving/run_all.py", *(sys.argv[1:] if argv is None else argv)]
            ),
            "finished_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "machine": machine,
            "max_other_cpu_pct": round(max(other, default=0.0), 1),
            "mean_other_cpu_pct": round(sum(other) / max(1, len(other)), 1),
            "wrk": wrk,
            "model_dir": str(model_dir.relative_to(ROOT) if model_dir.is_relative_to(ROOT) else model_dir),
            "images": len(images),
            "config": {**cfg.__dict__, "concurrencies": list(cfg.concurrencies)},
        },
        "reference": best,
        "references": references,
        "servers": servers,
    }
    write_outputs(results, args.out)
    return 0


def write_outputs(results: dict[str, Any], out: Path) -> None:
    """Target checks, ``serving.json``, ``serving.png`` and ``serving.md`` in ``out``; print the checks."""
    results["checks"] = report.evaluate_targets(results)
    report.write_json(results, out / "serving.json")
    report.write_plot(results, out / "serving.png")
    report.write_markdown(results, out / "serving.md", "serving.png")
    print(f"wrote {out / 'serving.md'}, serving.json, serving.png", flush=True)
    for c in results["checks"]:
        print(f"  [{ {True: 'pass', False: 'FAIL', None: 'n/a'}[c['passed']] }] {c['name']}: {c['detail']}")


if __name__ == "__main__":
    sys.exit(main())
