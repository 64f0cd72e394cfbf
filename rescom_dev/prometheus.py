"""Reading samples out of the service's Prometheus text exposition (``GET /metrics``)."""

from __future__ import annotations

import time
from typing import Any


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` in a Prometheus text exposition."""
    total, found = 0.0, False
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            total += float(value)
            found = True
    if not found:
        raise KeyError(f"no sample {name} with labels {labels}")
    return total


async def wait_metric(ac: Any, name: str, minimum: float, **labels: str) -> None:
    """Poll ``/metrics`` with an ``httpx.AsyncClient`` until ``name{labels} >= minimum`` (ordering without sleeps)."""
    import asyncio

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if metric_value((await ac.get("/metrics")).text, name, **labels) >= minimum:
                return
        except KeyError:
            pass
        await asyncio.sleep(0.01)
    raise AssertionError(f"{name} never reached {minimum}")
