"""What each piece of one ``POST /predict`` costs, measured in this process (issue 12's options, one by one).

    python benchmarks/request_costs.py                    # writes benchmarks/results/request_costs.{json,md}

Pieces, on the bundled digits model and the benchmark's real test PNGs (``benchmarks/serving/.cache``):

- **decode**: the service's two steps (:func:`service.images.open_images` + :func:`service.images.decode_opened`)
  against the bare Pillow path the peer servers run (``Image.open`` + ``load`` + ``resize_center_crop``), per image;
  and what a ``warnings.catch_warnings()`` block costs (the service used two per image before).
- **response**: calibration ``softmax(z / T + b + log π)`` + top-k + the JSON document, per request, as the
  service does it (one ``[1, C]`` row) and as one vectorised call for a batch of 32; JSON with orjson and with
  the standard library.
- **engine layout**: ONNX Runtime alone on batches of 32, one session with 2 intra-op threads against 2 sessions
  with 1 thread each called from 2 threads at once: images/s and CPU milliseconds per image (process CPU time,
  all threads).

Timings are the best of several repeats (``timeit``), so they are floors for a quiet core; the engine layout is
wall time over a fixed number of calls. Nothing else should run meanwhile: the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import timeit
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the repository root holds rescom/, service/, rescom_dev/
    sys.path.insert(0, str(ROOT))

from benchmarks.serving.apps.pipeline import AppSettings, Pipeline  # noqa: E402
from rescom.calibration import calibrated_probs, prior_from_counts  # noqa: E402
from rescom.model_repository import METADATA_FILE  # noqa: E402
from rescom_dev.machine import describe_machine  # noqa: E402
from rescom_dev.results import RESULTS, write_result  # noqa: E402
from service.images import decode_opened, open_images  # noqa: E402

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is part of the serve extra
    orjson = None  # type: ignore[assignment]

PNG_DIR = ROOT / "benchmarks" / "serving" / ".cache" / "digits_test"
MODEL_DIR = ROOT / "models" / "digits_lt" / "1"


def best_us(fn: Callable[[], object], per_call: int, number: int = 5, repeat: int = 5) -> float:
    """Best-of-``repeat`` microseconds per item, ``fn`` handling ``per_call`` items each call."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / (number * per_call) * 1e6


def load_pngs(limit: int) -> list[bytes]:
    """Up to ``limit`` test PNGs of the serving benchmark (fetched by ``benchmarks/serving/run_all.py``)."""
    files = sorted(PNG_DIR.rglob("*.png"))[:limit]
    if not files:
        raise SystemExit(
            f"no PNGs under {PNG_DIR}: run `python benchmarks/serving/run_all.py --quick` once first"
        )
    return [f.read_bytes() for f in files]


def decode_costs(blobs: list[bytes], pipeline: Pipeline) -> dict[str, float]:
    """Microseconds per image for the service's decode and for the peers' bare Pillow path."""
    resize, crop = pipeline.resize, pipeline.crop

    def service_path() -> None:
        for data in blobs:
            opened = open_images([data], resize=resize, max_pixels=1 << 30, max_decoded_bytes=1 << 40)
            decode_opened(opened, resize=resize, crop=crop)

    def bare_pillow() -> None:
        for data in blobs:
            pipeline.decode(data)

    def catch_warnings_block() -> None:
        for _ in blobs:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)

    return {
        "service_decode_us": best_us(service_path, len(blobs)),
        "bare_pillow_decode_us": best_us(bare_pillow, len(blobs)),
        "catch_warnings_block_us": best_us(catch_warnings_block, len(blobs)),
    }


def response_costs(meta: dict[str, Any], batch: int = 32, top_k: int = 5) -> dict[str, float]:
    """Microseconds per request: calibration + top-k + JSON, per row and vectorised; orjson vs json."""
    names = list(meta["class_names"])
    calibration = meta.get("calibration") or {}
    temperature = float(calibration.get("temperature") or 1.0)
    prior = prior_from_counts(meta["class_counts"])
    logits = np.random.default_rng(0).normal(size=(batch, len(names))).astype(np.float32)  # [B, C]
    encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)

    def document(idx: list[int], scores: list[float]) -> dict[str, Any]:
        top = [{"label": names[c], "class_id": c, "score": s} for c, s in zip(idx, scores, strict=True)]
        return {"model": "m", "version": 1, "predictions": [{"label": names[idx[0]], "top_k": top}]}

    def per_row(dumps: Callable[[Any], object]) -> Callable[[], None]:
        def run() -> None:
            for i in range(batch):
                probs = calibrated_probs(logits[i : i + 1], temperature=temperature, prior=prior)  # [1, C]
                order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]  # [1, k]
                scores = np.take_along_axis(probs, order, axis=1).tolist()
                dumps(document(order.tolist()[0], scores[0]))

        return run

    def vectorised() -> None:
        probs = calibrated_probs(logits, temperature=temperature, prior=prior)  # [B, C]
        order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]  # [B, k]
        scores = np.take_along_axis(probs, order, axis=1).tolist()
        for idx, sc in zip(order.tolist(), scores, strict=True):
            orjson.dumps(document(idx, sc)) if orjson else encoder.encode(document(idx, sc))

    out = {
        "per_request_stdlib_json_us": best_us(per_row(encoder.encode), batch),
        "vectorised_batch_us": best_us(vectorised, batch),
    }
    if orjson is not None:
        out["per_request_orjson_us"] = best_us(per_row(orjson.dumps), batch)
    return out


def engine_layout(calls: int = 60) -> list[dict[str, Any]]:
    """ORT alone, batch 32: 1 session x 2 threads vs 2 sessions x 1 thread (called concurrently).

    The sessions are the peer servers' (:class:`benchmarks.serving.apps.pipeline.Pipeline`), whose options are
    the service's.
    """
    rows = []
    for sessions, threads in ((1, 2), (2, 1)):
        pool = [Pipeline(AppSettings(model_dir=MODEL_DIR, ort_threads=threads)) for _ in range(sessions)]
        x = np.random.default_rng(0).integers(0, 256, (32, pool[0].crop, pool[0].crop, 3), dtype=np.uint8)

        def loop(p: Pipeline, x: np.ndarray = x) -> None:
            for _ in range(calls):
                p.session.run([p.output_name], {p.input_name: x})  # [32, C]

        cpu0, t0 = time.process_time(), time.perf_counter()
        workers = [threading.Thread(target=loop, args=(p,)) for p in pool]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        images = 32 * calls * sessions
        rows.append(
            {
                "sessions": sessions,
                "threads": threads,
                "img_s": images / wall,
                "cpu_ms_per_img": cpu / images * 1e3,
            }
        )
    return rows


def table(figures: dict[str, Any]) -> str:
    """The Markdown body."""
    d, r = figures["decode"], figures["response"]
    lines = [
        "| piece | cost |",
        "| --- | --- |",
        f"| decode, service path (header checks + decode + preprocess) | {d['service_decode_us']:.1f} us / image |",
        f"| decode, bare Pillow path of the peer servers | {d['bare_pillow_decode_us']:.1f} us / image |",
        f"| one `warnings.catch_warnings()` block | {d['catch_warnings_block_us']:.2f} us |",
        f"| calibration + top-5 + JSON per request, stdlib json | {r['per_request_stdlib_json_us']:.1f} us |",
    ]
    if "per_request_orjson_us" in r:
        lines.append(
            f"| calibration + top-5 + JSON per request, orjson | {r['per_request_orjson_us']:.1f} us |"
        )
    lines.append(f"| the same, vectorised over a batch of 32 | {r['vectorised_batch_us']:.1f} us / request |")
    lines += ["", "| ORT alone, batch 32 | img/s | CPU ms / image |", "| --- | ---: | ---: |"]
    for row in figures["engine_layout"]:
        label = f"{row['sessions']} session(s) x {row['threads']} thread(s)"
        lines.append(f"| {label} | {row['img_s']:.0f} | {row['cpu_ms_per_img']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Measure, print and write ``request_costs.{json,md}``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=200, help="test PNGs to decode per repeat")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    machine = describe_machine()
    meta = json.loads((MODEL_DIR / METADATA_FILE).read_text())
    figures = {
        "decode": decode_costs(load_pngs(args.images), Pipeline(AppSettings(model_dir=MODEL_DIR))),
        "response": response_costs(meta),
        "engine_layout": engine_layout(),
    }
    body = table(figures)
    print(body)
    write_result("request_costs", figures, body, machine, args.results_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
