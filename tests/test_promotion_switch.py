"""promote and rollback switch the served version at the next repository poll, with 16 clients sending
requests all along and not one failing."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from export import promote
from rescom import model_repository as mr
from rescom_dev.images import encode, random_images
from rescom_dev.onnx_models import write_version
from rescom_dev.servers import free_port, running_server
from service.config import Settings

pytestmark = pytest.mark.timeout(120)
CLIENTS = 16
POLL_S = 0.5
PNG = encode(random_images(1, seed=5)[0])


class Traffic:
    """``CLIENTS`` threads posting /predict until stopped; every status and served version is counted."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        self.last_version: int | None = None
        self.threads = [threading.Thread(target=self._run) for _ in range(CLIENTS)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while not self.stop.is_set():
                try:
                    r = c.post("/predict", content=PNG, headers={"Content-Type": "image/png"})
                except httpx.HTTPError as err:
                    self.errors.append(repr(err))
                    continue
                self.statuses[r.status_code] += 1
                if r.status_code == 200:
                    self.last_version = r.json()["version"]
                else:
                    self.errors.append(r.text)

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def wait_version(self, version: int, timeout: float) -> float:
        """Seconds until the traffic sees ``version`` answering."""
        started = time.monotonic()
        seen = 0
        while time.monotonic() - started < timeout:
            seen = seen + 1 if self.last_version == version else 0
            if seen >= 3:
                return time.monotonic() - started
            time.sleep(0.02)
        raise AssertionError(f"version {version} never answered within {timeout} s")


def test_promote_then_rollback_under_sixteen_clients(tmp_path: Path):
    write_version(tmp_path, "tiny", 1, seed=0)
    write_version(tmp_path, "tiny", 2, seed=1)
    promote.pin(tmp_path, "tiny", 1)  # version 2 is staged: written, not served
    s = Settings(model_repository=tmp_path, port=free_port(), poll_interval_s=POLL_S, log_level="warning")
    with running_server(s) as url, Traffic(url) as traffic:
        traffic.wait_version(1, timeout=10)
        time.sleep(3 * POLL_S)
        assert traffic.last_version == 1 and sum(traffic.statuses.values()) > 0

        promote.promote(tmp_path, "tiny", 2)
        # one poll plus loading and warming the tiny graph, on a loaded 2-core machine
        promoted_after = traffic.wait_version(2, timeout=POLL_S + 15)
        assert mr.read_config(tmp_path, "tiny").version_policy == mr.VersionPolicy("latest", num_versions=1)

        promote.rollback(tmp_path, "tiny")
        rolled_back_after = traffic.wait_version(1, timeout=POLL_S + 15)
        time.sleep(2.5)  # the retired version drains after its grace period while traffic goes on
    assert traffic.errors == [] and set(traffic.statuses) == {200}, traffic.errors[:3]
    print(
        f"{sum(traffic.statuses.values())} requests from {CLIENTS} clients, 0 failed; promote took "
        f"{promoted_after:.2f} s, rollback {rolled_back_after:.2f} s (poll interval {POLL_S} s)"
    )
