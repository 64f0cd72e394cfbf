"""Load benchmark of the service against raw ONNX Runtime on the same model, batch size and thread count.

    python benchmarks/serve_load.py                         # bundled models/digits_lt (or a ResNet-32-shaped stand-in)
    python benchmarks/serve_load.py --images-dir DIR        # PNG/JPEG files; DIR/<class name>/*.png gives labels
    python benchmarks/serve_load.py --url http://host:8000  # a server that is already running

What it does, bounded in time (``--requests`` per phase):

1. starts ``python -m service`` on 127.0.0.1 (a free port) unless ``--url`` is given, waits for readiness;
2. sends ``--requests`` single-image PNG requests (``POST /predict``, raw body) at a fixed ``--concurrency`` over
   keep-alive connections with a small raw-asyncio HTTP/1.1 client (cheaper than httpx, so the client does not
   steal the CPU it measures); prints throughput, p50/p99 latency, errors, accuracy (when labels are known) and
   the mean batch size from ``/metrics``;
3. repeats with ``RESCOM_MAX_BATCH_SIZE=1`` (no batching) unless ``--skip-no-batching``;
4. measures raw ONNX Runtime throughput of the same graph, same batch size, same thread settings, on the same
   preprocessed images (no HTTP, no decoding), before and after the service phases, and prints the ratios
   against the higher of the two (other load on the machine during one of them cannot flatter the service).

GPU: ``--providers cuda`` (or ``tensorrt``) starts the service with ``RESCOM_PROVIDERS=cuda``, and the raw ONNX Runtime
baseline uses the same provider list and options (``service.providers``), the same batch and threads; it is
measured both with ``session.run`` and through IO binding with pinned buffers (``service.iobinding``) and the
faster of the two counts. The provider the service and the baseline really ran on is printed, and a baseline that
fell back from a required GPU provider stops the benchmark with exit status 1.

Images, by default: the digits-LT test split (``rescom.data.build_datasets("digits_lt", None).test``, needs torch
and scikit-learn) when the bundled model is used, else seeded random images (no accuracy then).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import re
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rescom import model_repository as mr  # noqa: E402
from rescom.preprocess import resize_center_crop  # noqa: E402
from rescom_dev.machine import describe_machine, load_average  # noqa: E402
from rescom_dev.results import command_line, machine_lines  # noqa: E402
from rescom_dev.servers import free_port, service_process  # noqa: E402

# ---------------------------------------------------------------------------------------------- inputs


@dataclass
class Workload:
    """Encoded request bodies, their preprocessed arrays (for raw ORT) and labels (-1 = unknown)."""

    bodies: list[bytes]
    arrays: np.ndarray  # [N, crop, crop, 3] uint8
    labels: np.ndarray  # [N]
    class_names: list[str]
    source: str


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def load_workload(args: argparse.Namespace, meta: dict) -> Workload:
    """Images to send, from ``--images-dir``, the digits-LT test split, or seeded random pixels."""
    resize, crop = meta["preprocess"]["resize"], meta["preprocess"]["crop"]
    names = list(meta["class_names"])
    index = {n: i for i, n in enumerate(names)}
    images: list[Image.Image] = []
    labels: list[int] = []
    source = ""
    if args.images_dir:
        files = sorted(
            p for p in Path(args.images_dir).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")
        )
        if not files:
            raise SystemExit(f"no PNG/JPEG files under {args.images_dir}")
        for p in files:
            with Image.open(p) as im:
                images.append(im.copy())
            labels.append(index.get(p.parent.name, -1))
        source = f"{len(files)} files from {args.images_dir}"
    elif meta.get("dataset") == "digits_lt":
        try:
            from rescom.data import build_datasets

            test = build_datasets("digits_lt", None).test
            test.transform = None
            for i in range(len(test)):
                img, label = test[i]
                images.append(img)
                labels.append(int(label))
            source = f"digits-LT test split ({len(images)} images)"
        except Exception as err:  # torch / scikit-learn missing
            print(
                f"[bench] digits-LT test split unavailable ({type(err).__name__}: {err}); using random images"
            )
    if not images:
        rng = np.random.default_rng(0)
        for _ in range(512):
            colour = rng.integers(0, 256, (1, 1, 3))
            arr = np.clip(colour + rng.integers(-30, 31, (resize, resize, 3)), 0, 255).astype(np.uint8)
            images.append(Image.fromarray(arr))
            labels.append(-1)
        source = "512 seeded random images (no labels)"
    bodies = [_png(im) for im in images]
    arrays = np.stack([resize_center_crop(im, resize, crop) for im in images])
    return Workload(bodies, arrays, np.asarray(labels), names, source)


# ---------------------------------------------------------------------------------------------- server


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@contextlib.contextmanager
def server(repo: Path, model: str, env_overrides: dict[str, str]) -> Iterator[str]:
    """``python -m service`` in a subprocess on a free port; yields its base URL; SIGTERM afterwards."""
    port = free_port()
    env = {**env_overrides, "RESCOM_LOG_LEVEL": "warning", "RESCOM_POLL_INTERVAL_S": "0"}
    with service_process(
        repo, port, env, ready_timeout=120, extra=("--model", model), output=None, graceful_s=30
    ):
        yield f"http://127.0.0.1:{port}"


def batch_stats(url: str, model: str) -> tuple[float, float]:
    """(sum, count) of ``rescom_batch_size`` for ``model`` from ``/metrics``."""
    text = http_get(url + "/metrics")[1].decode()
    values = {}
    for key in ("sum", "count"):
        m = re.search(rf'^rescom_batch_size_{key}{{model="{re.escape(model)}"}} (\S+)$', text, re.M)
        values[key] = float(m.group(1)) if m else 0.0
    return values["sum"], values["count"]


# ---------------------------------------------------------------------------------------------- client


@dataclass
class LoadResult:
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    correct: int = 0
    labelled: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def quantile_ms(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        return 1000 * float(np.quantile(np.asarray(self.latencies), q))


async def keepalive_load(
    host: str,
    port: int,
    requests: list[bytes],
    n_requests: int,
    concurrency: int,
    score: Callable[[LoadResult, int, dict[bytes, bytes], bytes], None],
) -> LoadResult:
    """Send ``n_requests`` of the raw HTTP/1.1 ``requests`` (in rotation) over ``concurrency`` keep-alive
    connections; ``score(result, j, headers, body)`` judges each 200 answer to ``requests[j]``."""
    counter = iter(range(n_requests))
    result = LoadResult(0.0)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for i in counter:
                j = i % len(requests)
                start = time.perf_counter()
                writer.write(requests[j])
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                fields = response_headers(head)
                body = await reader.readexactly(int(fields.get(b"content-length", b"0")))
                elapsed = time.perf_counter() - start
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if status != 200:
                    result.errors += 1
                    continue
                result.latencies.append(elapsed)
                score(result, j, fields, body)
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - start
    return result


def response_headers(head: bytes) -> dict[bytes, bytes]:
    """The header fields of a raw HTTP response head, names lower-cased."""
    lines = head.split(b"\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines if line)}


async def _load(
    host: str, port: int, path: str, work: Workload, n_requests: int, concurrency: int
) -> LoadResult:
    requests = [
        (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(b)}\r\n\r\n"
        ).encode()
        + b
        for b in work.bodies
    ]

    def score(result: LoadResult, j: int, headers: dict[bytes, bytes], body: bytes) -> None:
        label = work.labels[j]
        if label >= 0:
            result.labelled += 1
            pred = json.loads(body)["predictions"][0]["class_id"]
            result.correct += int(pred == label)

    return await keepalive_load(host, port, requests, n_requests, concurrency, score)


def run_load(url: str, work: Workload, n_requests: int, concurrency: int, model: str) -> LoadResult:
    """Drive ``POST /predict?model=...`` with ``concurrency`` keep-alive connections."""
    rest = url.split("://", 1)[1]
    host, _, port = rest.partition(":")
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    return runner(
        _load(host, int(port or 80), f"/predict?model={model}&top_k=1", work, n_requests, concurrency)
    )


# ---------------------------------------------------------------------------------------------- raw ORT


def provider_entries(providers: str, onnx_path: Path, meta: dict, max_batch: int) -> list:
    """The provider list the service builds for ``RESCOM_PROVIDERS=providers`` (same options, same profile)."""
    import onnxruntime as ort

    from service import providers as prov

    trt = library = None
    if providers == "tensorrt":
        library = prov.tensorrt_libraries()
        name = meta["inputs"][0]["name"]
        crop = meta["preprocess"]["crop"]
        # the service's own cache folder (<root>/<model>/<version>), so the engine is built once for both
        root = os.environ.get("RESCOM_TRT_CACHE_DIR") or None
        cache = prov.trt_cache_root(Path(root) if root else None) / meta["name"] / onnx_path.parent.name
        cache.mkdir(parents=True, exist_ok=True)
        trt = prov.tensorrt_options(
            0, os.environ.get("RESCOM_TRT_FP16", "") == "1", cache, name, (crop, crop, 3), max_batch
        )
    try:
        return prov.provider_list(providers, ort.get_available_providers(), 0, trt, library)
    except prov.ProviderError as err:
        raise SystemExit(f"[bench] {err}") from None


def raw_ort(
    onnx_path: Path,
    arrays: np.ndarray,
    batch: int,
    threads: int,
    spinning: bool,
    n_images: int,
    instances: int = 1,
    providers: list | None = None,
    io_binding: bool = False,
) -> tuple[float, str]:
    """(images per second, provider really used) of raw ONNX Runtime on preprocessed batches of ``batch``.

    No HTTP, no decoding. ``instances`` threads call ``run`` on one session at once, as the service's batcher
    workers do. ``io_binding`` runs through :class:`service.iobinding.BoundRunner` (pinned buffers on a GPU).
    """
    from concurrent.futures import ThreadPoolExecutor

    import onnxruntime as ort

    from service.iobinding import BoundRunner

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    sess = ort.InferenceSession(str(onnx_path), so, providers=providers or ["CPUExecutionProvider"])
    provider = sess.get_providers()[0]
    name = sess.get_inputs()[0].name
    reps = np.resize(arrays, (max(batch, 1) * 4, *arrays.shape[1:]))  # cycle through the images
    batches = [np.ascontiguousarray(reps[i : i + batch]) for i in range(0, len(reps), batch)]
    if io_binding:
        out = sess.get_outputs()[0]
        runner = BoundRunner(
            sess,
            name,
            out.name,
            arrays.shape[1:],
            int(out.shape[1]),
            pinned=provider != "CPUExecutionProvider",
        )

        def call(b: np.ndarray) -> None:
            runner.run(b, len(b))
    else:

        def call(b: np.ndarray) -> None:
            sess.run(None, {name: b})

    for _ in range(2 if provider != "CPUExecutionProvider" else 1):
        for b in batches:
            call(b)
    calls = max(1, n_images // batch)

    def work(worker: int) -> None:
        for i in range(worker, calls, instances):
            call(batches[i % len(batches)])

    start = time.perf_counter()
    with ThreadPoolExecutor(instances) as pool:
        list(pool.map(work, range(instances)))
    return calls * batch / (time.perf_counter() - start), provider


def service_providers(url: str) -> dict[str, str]:
    """Model name -> provider it really runs on, from ``GET /health/ready``."""
    status, body = http_get(url + "/health/ready")
    if status != 200:
        return {}
    return {name: m.get("provider", "?") for name, m in json.loads(body).get("models", {}).items()}


# ---------------------------------------------------------------------------------------------- main


def resolve_model(args: argparse.Namespace, tmp: Path) -> tuple[Path, str, str]:
    """(repository, model name, description): the requested/bundled model, or a ResNet-32-shaped stand-in."""
    repo = Path(args.model_repository)
    name = args.model
    if name is None and repo.is_dir():
        candidates = sorted(p.name for p in repo.iterdir() if p.is_dir())
        name = "digits_lt" if "digits_lt" in candidates else (candidates[0] if candidates else None)
    if name is not None and (repo / name).is_dir():
        return repo, name, f"{repo}/{name}"
    if not args.synthetic_fallback:
        raise SystemExit(f"no model in {repo}; export one or pass --synthetic-fallback")
    from rescom_dev.onnx_models import write_version  # builds real ONNX graphs with onnx.helper

    write_version(tmp, "resnet32_standin", 1, kind="conv")
    return tmp, "resnet32_standin", "ResNet-32-shaped stand-in with random weights (no bundled model found)"


def latest_version(repo: Path, name: str) -> Path:
    return mr.version_path(repo, name, mr.latest_version(repo, name))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-repository", default=str(ROOT / "models"))
    p.add_argument("--model", default=None, help="model name (default: digits_lt, else the first model)")
    p.add_argument("--url", default=None, help="benchmark a running server instead of starting one")
    p.add_argument("--images-dir", default=None)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--requests", type=int, default=6000, help="requests per measured phase")
    p.add_argument("--warmup", type=int, default=500, help="requests before each measured phase")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--intra-op-threads", type=int, default=None, help="default: the service's default")
    p.add_argument("--skip-no-batching", action="store_true")
    p.add_argument(
        "--raw-images",
        type=int,
        default=None,
        help="images per raw ORT measurement (default: max(requests, 2000))",
    )
    p.add_argument("--no-synthetic-fallback", dest="synthetic_fallback", action="store_false")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    p.add_argument("--env", action="append", default=[], help="extra RESCOM_X=Y for the server (repeatable)")
    p.add_argument(
        "--providers",
        choices=("auto", "cpu", "cuda", "tensorrt"),
        default="auto",
        help="RESCOM_PROVIDERS of the service; the raw ORT baseline uses the same provider list",
    )
    return p.parse_args(argv)


def layout(args: argparse.Namespace, extra_env: dict[str, str]) -> tuple[int, int]:
    """(instances, ORT threads) as the service resolves them: 2 x cores/2 on CPU, 1 x 1 on a GPU provider."""
    from service.config import usable_cpus

    gpu = args.providers in ("cuda", "tensorrt")
    instances = int(extra_env.get("RESCOM_INSTANCES", 1 if gpu else min(2, usable_cpus())))
    threads = args.intra_op_threads or (1 if gpu else max(1, usable_cpus() // instances))
    return instances, threads


def measure_raw(
    args, onnx_file: Path, work: Workload, providers: list, threads: int, spinning: bool, instances: int
):
    """Raw ORT img/s (plain run, and IO binding on a GPU: the faster counts) and the provider really used."""
    n_raw = args.raw_images or max(args.requests, 2000)
    rate, used = raw_ort(
        onnx_file, work.arrays, args.max_batch_size, threads, spinning, n_raw, instances, providers
    )
    if args.providers in ("cuda", "tensorrt"):
        bound, _ = raw_ort(
            onnx_file, work.arrays, args.max_batch_size, threads, spinning, n_raw, instances, providers, True
        )
        print(f"[bench] raw ORT on {used}: session.run {rate:.1f} img/s, IO binding {bound:.1f} img/s")
        rate = max(rate, bound)
    return rate, used


def run_phase(args, url: str, work: Workload, model: str, label: str) -> dict:
    """Warm-up, then ``--requests`` measured requests; the phase's figures (and prints them)."""
    run_load(url, work, args.warmup, args.concurrency, model)
    s0, c0 = batch_stats(url, model)
    res = run_load(url, work, args.requests, args.concurrency, model)
    s1, c1 = batch_stats(url, model)
    mean_batch = (s1 - s0) / (c1 - c0) if c1 > c0 else float("nan")
    acc = 100.0 * res.correct / res.labelled if res.labelled else None
    acc_text = f"{acc:.2f} %" if acc is not None else "n/a (no labels)"
    print(
        f"[bench] service, {label:11s}: {res.throughput:8.1f} img/s  p50 {res.quantile_ms(0.5):7.2f} ms  "
        f"p99 {res.quantile_ms(0.99):7.2f} ms  mean batch {mean_batch:5.2f}  errors {res.errors}  "
        f"accuracy {acc_text}"
    )
    return {
        "img_per_s": res.throughput,
        "p50_ms": res.quantile_ms(0.5),
        "p99_ms": res.quantile_ms(0.99),
        "mean_batch": mean_batch,
        "errors": res.errors,
        "statuses": res.statuses,
        "accuracy": acc,
        "requests": len(res.latencies),
    }


def markdown_report(summary: dict) -> str:
    """``serve_load.md``: the command, the machine and its load, then the phases and ratios of ``summary``."""
    lines = [
        "# serve_load",
        "",
        f"- command: `{summary['command']}`",
        *machine_lines(summary["machine"], summary["load_average_end"]),
        f"- model: {summary['model']}; images: {summary['images']}; concurrency {summary['concurrency']}; "
        f"max batch {summary['max_batch_size']}; {summary['instances']} model instance(s) x {summary['threads']} "
        f"ORT thread(s); providers {summary['providers']} (service ran on {summary['service_provider']})",
        "",
        "| phase | img/s | p50 ms | p99 ms | mean batch | errors | accuracy |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, ph in summary["phases"].items():
        acc = "n/a" if ph["accuracy"] is None else f"{ph['accuracy']:.2f} %"
        lines.append(
            f"| service, {label} | {ph['img_per_s']:.1f} | {ph['p50_ms']:.2f} | {ph['p99_ms']:.2f} | "
            f"{ph['mean_batch']:.2f} | {ph['errors']} | {acc} |"
        )
    lines += [
        f"| raw ONNX Runtime, batch {summary['max_batch_size']}, {summary['instances']} x {summary['threads']} "
        f"threads (as the service), no decode, no HTTP | {summary['raw_ort_img_per_s']:.1f} | | | | | |",
        f"| raw ONNX Runtime, one session with all cores | {summary['raw_ort_single_session_img_per_s']:.1f} "
        "| | | | | |",
        "",
    ]
    if "service_vs_raw" in summary:
        lines.append(f"- service / raw ORT (same layout): {100 * summary['service_vs_raw']:.1f} %")
    if "batching_speedup" in summary:
        lines.append(f"- batching / no batching: {summary['batching_speedup']:.2f}x")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from service.config import usable_cpus

    machine = describe_machine()

    extra_env = dict(item.partition("=")[::2] for item in args.env)
    instances, threads = layout(args, extra_env)
    gpu = args.providers in ("cuda", "tensorrt")
    with tempfile.TemporaryDirectory() as tmp:
        repo, model, described = resolve_model(args, Path(tmp))
        vdir = latest_version(repo, model)
        meta = json.loads((vdir / mr.METADATA_FILE).read_text())
        work = load_workload(args, meta)
        print(f"[bench] model: {described} (version {vdir.name}); images: {work.source}")
        print(
            f"[bench] {usable_cpus()} usable CPUs; providers {args.providers}; concurrency {args.concurrency}; "
            f"{args.requests} requests per phase; max batch {args.max_batch_size}; {instances} model instance(s) "
            f"x {threads} ORT thread(s)"
        )
        env = {
            "RESCOM_PROVIDERS": args.providers,
            "RESCOM_MAX_BATCH_SIZE": str(args.max_batch_size),
            "RESCOM_INTRA_OP_THREADS": str(threads),
            "RESCOM_INSTANCES": str(instances),
            "RESCOM_MAX_QUEUE_SIZE": str(max(256, 4 * args.concurrency)),
        }
        if args.max_batch_size > 32:  # the service's default padded sizes stop at 32
            sizes = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
            env["RESCOM_BATCH_SIZES"] = ",".join(str(b) for b in sizes if b <= args.max_batch_size)
        env.update(extra_env)
        spinning = env.get("RESCOM_ORT_SPINNING", "false").lower() in ("1", "true", "yes")
        onnx_file = vdir / meta.get("onnx", {}).get("file", "model.onnx")
        providers = provider_entries(args.providers, onnx_file, meta, args.max_batch_size)
        # Raw ONNX Runtime is measured before and after the service phases; the higher figure is used, so that
        # load from other processes during one of them cannot flatter the service.
        raw_before, raw_provider = measure_raw(args, onnx_file, work, providers, threads, spinning, instances)
        wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
        print(f"[bench] raw ONNX Runtime runs on {raw_provider} (asked for {wanted})")
        if gpu and raw_provider != wanted:
            print(
                f"[bench] FAIL: raw ONNX Runtime fell back from {wanted} to {raw_provider}", file=sys.stderr
            )
            return 1
        phases: dict[str, dict] = {}
        service_provider = "?"
        modes = [("batching", args.max_batch_size)] + ([] if args.skip_no_batching else [("no batching", 1)])
        for label, max_batch in modes:
            if args.url and max_batch != args.max_batch_size:
                continue  # cannot reconfigure a server we did not start
            ctx = (
                contextlib.nullcontext(args.url)
                if args.url
                else server(repo, model, {**env, "RESCOM_MAX_BATCH_SIZE": str(max_batch)})
            )
            with ctx as url:
                service_provider = service_providers(url).get(model, "?")
                print(f"[bench] service ({label}) runs {model} on {service_provider}")
                phases[label] = run_phase(args, url, work, model, label)
        raw_after, _ = measure_raw(args, onnx_file, work, providers, threads, spinning, instances)
        raw = max(raw_before, raw_after)
        print(
            f"[bench] raw ONNX Runtime, batch {args.max_batch_size}, {instances} x {threads} threads (as the "
            f"service), {raw_provider}: {raw:8.1f} img/s (before {raw_before:.1f}, after {raw_after:.1f})"
        )
        best = raw
        if not gpu and (instances * threads != usable_cpus() or instances != 1):
            best, _ = raw_ort(
                onnx_file,
                work.arrays,
                args.max_batch_size,
                usable_cpus(),
                spinning,
                args.raw_images or max(args.requests, 2000),
            )
            print(
                f"[bench] raw ONNX Runtime, batch {args.max_batch_size}, 1 x {usable_cpus()} threads: "
                f"{best:8.1f} img/s"
            )
        summary = {
            "model": described,
            "images": work.source,
            "cpus": usable_cpus(),
            "providers": args.providers,
            "service_provider": service_provider,
            "raw_provider": raw_provider,
            "threads": threads,
            "instances": instances,
            "concurrency": args.concurrency,
            "max_batch_size": args.max_batch_size,
            "raw_ort_img_per_s": raw,
            "raw_ort_single_session_img_per_s": best,
            "phases": phases,
        }
        if "batching" in phases:
            ratio = phases["batching"]["img_per_s"] / raw
            summary["service_vs_raw"] = ratio
            target = 90 if gpu else 80
            print(f"[bench] service / raw ORT (same layout): {100 * ratio:.1f} % (target >= {target} %)")
            if best is not raw:
                print(
                    f"[bench] service / raw ORT (1 session, all cores): "
                    f"{100 * phases['batching']['img_per_s'] / best:.1f} %"
                )
            if "no batching" in phases:
                speedup = phases["batching"]["img_per_s"] / phases["no batching"]["img_per_s"]
                summary["batching_speedup"] = speedup
                print(f"[bench] batching / no batching: {speedup:.2f}x (target >= 1.8x)")
        if args.json:
            summary["machine"] = machine
            summary["command"] = command_line()
            summary["load_average_end"] = [round(x, 2) for x in load_average()]
            Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
            Path(args.json).with_suffix(".md").write_text(markdown_report(summary))
        if args.providers != "auto" and not args.url and service_provider != raw_provider:
            print(f"[bench] FAIL: the service ran on {service_provider}, not {raw_provider}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
