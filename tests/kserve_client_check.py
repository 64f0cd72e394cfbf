"""KServe's own Python client against a running ResCom server; run by tests/test_clients.py with the
``.venv-kserve`` interpreter (``make kserve-client``), because ``kserve`` pins versions the main venv does not use.

    echo '{"http": URL, "grpc": "HOST:PORT", "model": NAME, "images": "x.npy", "key": KEY, "batch": 50}' \
        | .venv-kserve/bin/python tests/kserve_client_check.py

The options come as JSON on stdin, not as arguments: importing ``kserve`` parses ``sys.argv`` for its own
model-server flags.

Prints one JSON object: for ``rest`` (``InferenceRESTClient``, protocol v2, binary tensors) and ``grpc``
(``InferenceGRPCClient``, raw contents): server live/ready, model ready, and the argmax of the ``probabilities``
output for every image. Imports nothing from the project.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig


def _request(model: str, x: np.ndarray) -> InferRequest:
    tensor = InferInput("images", list(x.shape), "UINT8")
    tensor.set_data_from_numpy(x, binary_data=True)
    return InferRequest(model_name=model, infer_inputs=[tensor])


def _labels(response: Any) -> list[int]:
    for out in response.outputs:
        if out.name == "probabilities":
            return np.asarray(out.as_numpy()).argmax(axis=1).tolist()
    raise RuntimeError("the response has no probabilities output")


async def check_rest(url: str, model: str, images: np.ndarray, key: str | None, batch: int) -> dict[str, Any]:
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    headers = {"Authorization": f"Bearer {key}"} if key else None
    result = {
        "live": await client.is_server_live(url),
        "ready": await client.is_server_ready(url),
        "model_ready": await client.is_model_ready(url, model, headers=headers),
        "labels": [],
    }
    for start in range(0, len(images), batch):
        response = await client.infer(
            url, _request(model, images[start : start + batch]), model, headers=headers
        )
        result["labels"] += _labels(response)
    return result


async def check_grpc(
    target: str, model: str, images: np.ndarray, key: str | None, batch: int
) -> dict[str, Any]:
    client = InferenceGRPCClient(target, timeout=60)
    metadata = (("authorization", f"Bearer {key}"),) if key else None
    result = {
        "live": await client.is_server_live(),
        "ready": await client.is_server_ready(),
        "model_ready": await client.is_model_ready(model, headers=metadata),
        "labels": [],
    }
    for start in range(0, len(images), batch):
        response = await client.infer(_request(model, images[start : start + batch]), headers=metadata)
        result["labels"] += _labels(response)
    await client.close()
    return result


async def main() -> None:
    opts = json.loads(sys.stdin.read())
    images = np.load(opts["images"])  # uint8 [N, H, W, 3]
    key, batch = opts.get("key"), int(opts.get("batch", 50))
    rest = await check_rest(opts["http"], opts["model"], images, key, batch)
    grpc = await check_grpc(opts["grpc"], opts["model"], images, key, batch)
    print(json.dumps({"rest": rest, "grpc": grpc}))


if __name__ == "__main__":
    asyncio.run(main())
