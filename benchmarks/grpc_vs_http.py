"""KServe v2 over gRPC next to KServe v2 over HTTP: same server process, same model, same requests, same
concurrency.

    python benchmarks/grpc_vs_http.py                      # bundled models/digits_lt, c=64, 3000 requests/phase
    python benchmarks/grpc_vs_http.py --concurrency 64 --requests 5000 --rounds 3

What it does, bounded in time (``--requests`` per phase):

1. starts ``python -m service`` on 127.0.0.1 with ``RESCOM_GRPC_PORT`` set (free ports), waits for readiness;
2. sends single-image requests (``images`` ``UINT8 [1, 32, 32, 3]``, already preprocessed; output
   ``probabilities`` = ``softmax(z / T + b + log π)`` as raw FP32) at a fixed ``--concurrency``:
   - HTTP: ``POST /v2/models/NAME/infer`` with Triton's binary-tensor extension (JSON header + raw bytes), over
     keep-alive connections with a small raw-asyncio HTTP/1.1 client (cheaper than httpx, so the client does not
     steal the CPU it measures);
   - gRPC: ``ModelInfer`` with ``raw_input_contents`` on one ``grpc.aio`` channel (HTTP/2 multiplexing, as
     ``tritonclient.grpc`` does);
3. alternates the two ``--rounds`` times (other load on the machine hits both alike), and prints throughput,
   p50/p99 latency, errors and accuracy (digits-LT labels) per phase, the median per transport, the mean batch
   size the server formed, and the load average before and after.

Images: the digits-LT test split (``rescom.data.build_datasets``, needs torch and scikit-learn), else seeded
random images (no accuracy then). The client runs on the same machine as the server: both transports pay for it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serve_load import LoadResult, batch_stats, keepalive_load, server  # noqa: E402
from rescom_dev.servers import free_port  # noqa: E402
from service.grpc_messages import SERVICE, message_class  # noqa: E402


def load_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [n, 32, 32, 3], labels [n] or -1)``: digits-LT test images when torch is there."""
    try:
        from rescom.data import build_datasets

        test = build_datasets("digits_lt", None).test
        test.transform = None
        pairs = [test[i] for i in range(min(n, len(test)))]
        images = np.stack([np.asarray(img.convert("RGB")) for img, _ in pairs])
        return images, np.asarray([int(y) for _, y in pairs])
    except ImportError:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.full(n, -1)


# ---------------------------------------------------------------------------------------------- HTTP


def _http_requests(host: str, port: int, model: str, images: np.ndarray) -> list[bytes]:
    out = []
    for img in images:
        raw = img.tobytes()
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "images",
                        "shape": [1, *img.shape],
                        "datatype": "UINT8",
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ],
                "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
            }
        ).encode()
        head = (
            f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {len(header)}\r\n"
            f"Content-Length: {len(header) + len(raw)}\r\n\r\n"
        ).encode()
        out.append(head + header + raw)
    return out


async def http_load(
    host: str, port: int, model: str, images: np.ndarray, labels: np.ndarray, n: int, concurrency: int
) -> LoadResult:
    """``n`` requests over ``concurrency`` keep-alive HTTP/1.1 connections."""

    def score(result: LoadResult, j: int, headers: dict[bytes, bytes], body: bytes) -> None:
        json_length = int(headers[b"inference-header-content-length"])
        probs = np.frombuffer(body[json_length:], dtype="<f4")  # [C] FP32 after the JSON header
        _score(result, probs, labels[j])

    return await keepalive_load(host, port, _http_requests(host, port, model, images), n, concurrency, score)


def _score(result: LoadResult, probs: np.ndarray, label: int) -> None:
    if label >= 0:
        result.labelled += 1
        result.correct += int(int(probs.argmax()) == label)


# ---------------------------------------------------------------------------------------------- gRPC


async def grpc_load(
    target: str, model: str, images: np.ndarray, labels: np.ndarray, n: int, concurrency: int
) -> LoadResult:
    """``n`` ``ModelInfer`` calls, ``concurrency`` at a time, on one channel."""
    import grpc

    method = SERVICE.methods_by_name["ModelInfer"]
    requests = []
    for img in images:
        req = message_class("ModelInferRequest")(model_name=model)
        req.inputs.add(name="images", datatype="UINT8", shape=[1, *img.shape])
        req.outputs.add(name="probabilities")
        req.raw_input_contents.append(img.tobytes())
        requests.append(req)
    counter = iter(range(n))
    result = LoadResult(0.0)
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(
            f"/{SERVICE.full_name}/{method.name}",
            request_serializer=message_class("ModelInferRequest").SerializeToString,
            response_deserializer=message_class("ModelInferResponse").FromString,
        )

        async def worker() -> None:
            for i in counter:
                j = i % len(requests)
                start = time.perf_counter()
                try:
                    response = await call(requests[j], timeout=60)
                except grpc.aio.AioRpcError:
                    result.errors += 1
                    continue
                result.latencies.append(time.perf_counter() - start)
                _score(result, np.frombuffer(response.raw_output_contents[0], dtype="<f4"), labels[j])

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.seconds = time.perf_counter() - start
    return result


# ---------------------------------------------------------------------------------------------- main


def _line(name: str, r: LoadResult) -> str:
    acc = f"{100 * r.correct / r.labelled:.1f} %" if r.labelled else "n/a"
    return (
        f"  {name:5s} {r.throughput:8.1f} req/s   p50 {r.quantile_ms(0.5):7.1f} ms   "
        f"p99 {r.quantile_ms(0.99):7.1f} ms   errors {r.errors}   accuracy {acc}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-repository", default=str(ROOT / "models"))
    p.add_argument("--model", default="digits_lt")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--requests", type=int, default=3000, help="requests per phase")
    p.add_argument("--rounds", type=int, default=2, help="HTTP/gRPC alternations")
    p.add_argument("--images", type=int, default=500)
    args = p.parse_args()
    images, labels = load_images(args.images)
    grpc_port = free_port()
    load_before = os.getloadavg()
    results: dict[str, list[LoadResult]] = {"HTTP": [], "gRPC": []}
    with server(Path(args.model_repository), args.model, {"RESCOM_GRPC_PORT": str(grpc_port)}) as url:
        host, port = url.removeprefix("http://").split(":")
        print(
            f"model {args.model}, concurrency {args.concurrency}, {args.requests} single-image requests/phase"
        )
        warm = min(200, args.requests)
        asyncio.run(http_load(host, int(port), args.model, images, labels, warm, args.concurrency))
        asyncio.run(grpc_load(f"{host}:{grpc_port}", args.model, images, labels, warm, args.concurrency))
        before = batch_stats(url, args.model)
        for round_ in range(args.rounds):
            r = asyncio.run(
                http_load(host, int(port), args.model, images, labels, args.requests, args.concurrency)
            )
            results["HTTP"].append(r)
            print(f"round {round_ + 1}\n" + _line("HTTP", r))
            g = asyncio.run(
                grpc_load(f"{host}:{grpc_port}", args.model, images, labels, args.requests, args.concurrency)
            )
            results["gRPC"].append(g)
            print(_line("gRPC", g))
        after = batch_stats(url, args.model)
    load_after = os.getloadavg()
    batches = after[1] - before[1]
    print("median over rounds:")
    for name, rs in results.items():
        print(f"  {name:5s} {statistics.median(r.throughput for r in rs):8.1f} req/s")
    ratio = statistics.median(r.throughput for r in results["gRPC"]) / statistics.median(
        r.throughput for r in results["HTTP"]
    )
    print(f"gRPC / HTTP throughput: {ratio:.2f}")
    if batches:
        print(f"mean batch size formed by the server: {(after[0] - before[0]) / batches:.1f}")
    print(
        "load average (1, 5, 15 min) before: {:.2f} {:.2f} {:.2f}, after: {:.2f} {:.2f} {:.2f} "
        "on {} cores".format(*load_before, *load_after, os.cpu_count())
    )


if __name__ == "__main__":
    main()
