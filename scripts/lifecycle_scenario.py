"""The model-lifecycle scenario end to end, as a new user would run it, with 16 clients sending traffic.

    python scripts/lifecycle_scenario.py [--epochs 2] [--work runs/lifecycle]

1. copies the bundled model (models/digits_lt) into a scratch repository and serves it (``python -m service``);
2. trains the digits recipe for ``--epochs`` (2: an undertrained model) and exports it with the README's command:
   the promotion gate stages it (``STAGED: ...``); the served model's answers to the test images do not change;
3. ``export/promote.py promote N``: the new version answers after one repository poll;
4. ``export/promote.py rollback``: the previous version answers again after one poll.

Throughout, 16 client threads post test images to ``/predict``; the script prints how many requests failed
(none should), how long each switch took and the figures recorded in ``rescom.json``. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from PIL import Image  # noqa: E402

from rescom import model_repository as mr  # noqa: E402

CLIENTS = 16
NAME = "digits_lt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pngs() -> list[bytes]:
    """The digits-LT test split as PNG bodies (the service's input)."""
    from rescom.data import build_datasets
    from rescom.data.arrays import split_arrays

    images, _ = split_arrays(build_datasets("digits_lt", None, imbalance_factor=20), "test")
    out = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


class Traffic:
    """16 threads cycling through the test images; counts statuses and the versions that answered."""

    def __init__(self, url: str, bodies: list[bytes]) -> None:
        self.url, self.bodies = url, bodies
        self.stop = threading.Event()
        self.statuses: Counter[int] = Counter()
        self.versions: Counter[int] = Counter()
        self.last_version: int | None = None
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(CLIENTS)]

    def _run(self, offset: int) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as c:
            i = offset
            while not self.stop.is_set():
                body = self.bodies[i % len(self.bodies)]
                i += CLIENTS
                try:
                    r = c.post("/predict", content=body, headers={"Content-Type": "image/png"})
                except httpx.HTTPError as err:
                    self.failures.append(repr(err))
                    continue
                self.statuses[r.status_code] += 1
                if r.status_code != 200:
                    self.failures.append(f"{r.status_code} {r.text[:200]}")
                    continue
                self.last_version = r.json()["version"]
                self.versions[self.last_version] += 1

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def wait_version(self, version: int, timeout: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.last_version == version:
                return time.monotonic() - started
            time.sleep(0.01)
        raise SystemExit(f"version {version} did not answer within {timeout:.0f} s")


def answers(url: str, bodies: list[bytes]) -> list[int]:
    """Top-1 class of every test image, one request each."""
    with httpx.Client(base_url=url, timeout=60) as c:
        return [
            c.post("/predict", content=b, headers={"Content-Type": "image/png"}, params={"top_k": 1}).json()[
                "predictions"
            ][0]["class_id"]
            for b in bodies
        ]


def run(cmd: list[str], env: dict[str, str]) -> str:
    print("$ " + " ".join(cmd), flush=True)
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--work", default="runs/lifecycle", help="scratch folder (repository copy and the run)")
    p.add_argument("--poll-interval", type=float, default=2.0, help="RESCOM_POLL_INTERVAL_S of the service")
    args = p.parse_args()
    work = (ROOT / args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    repo = work / "models"
    shutil.copytree(ROOT / "models" / NAME, repo / NAME)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": str(ROOT)}
    py = sys.executable
    bodies = test_pngs()
    port = free_port()
    service_env = {**env, "RESCOM_POLL_INTERVAL_S": str(args.poll_interval), "RESCOM_LOG_LEVEL": "warning"}
    server = subprocess.Popen(
        [py, "-m", "service", "--model-repository", str(repo), "--port", str(port)], cwd=ROOT, env=service_env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        before = answers(url, bodies)
        traffic = Traffic(url, bodies)
        traffic.start()

        started = time.monotonic()
        run(
            [
                py,
                "training/train.py",
                "--epochs",
                str(args.epochs),
                "--output-dir",
                str(work / "run"),
                "--no-progress",
            ],
            env,
        )
        print(f"trained {args.epochs} epochs in {time.monotonic() - started:.0f} s", flush=True)
        out = run(
            [
                py,
                "export/to_onnx.py",
                "--checkpoint",
                str(work / "run" / "best.pt"),
                "--model-repository",
                str(repo),
                "--name",
                NAME,
            ],
            env,
        )
        print("\n".join(line for line in out.splitlines() if line.startswith(("exported", "STAGED"))))
        new = mr.latest_version(repo, NAME)
        time.sleep(3 * args.poll_interval)
        unchanged = sum(a == b for a, b in zip(before, answers(url, bodies), strict=True))
        print(
            f"after 3 polls: version {traffic.last_version} answers; {unchanged}/{len(before)} answers unchanged"
        )

        run(
            [py, "export/promote.py", "--model-repository", str(repo), "--name", NAME, "promote", str(new)],
            env,
        )
        promoted = traffic.wait_version(new, timeout=args.poll_interval + 60)
        print(
            f"promote: version {new} answered {promoted:.2f} s after the policy edit (poll {args.poll_interval} s)"
        )
        run([py, "export/promote.py", "--model-repository", str(repo), "--name", NAME, "rollback"], env)
        rolled = traffic.wait_version(1, timeout=args.poll_interval + 60)
        print(f"rollback: version 1 answered {rolled:.2f} s after the policy edit")
        time.sleep(args.poll_interval + 3)  # the retired version drains while traffic goes on
        traffic.finish()
        print(run([py, "export/promote.py", "--model-repository", str(repo), "--name", NAME, "status"], env))
        total = sum(traffic.statuses.values())
        print(
            f"traffic: {total} requests from {CLIENTS} clients, {len(traffic.failures)} failed; statuses "
            f"{dict(traffic.statuses)}; answered by version {dict(traffic.versions)}"
        )
        for failure in traffic.failures[:5]:
            print("  failure:", failure)
        return 0 if not traffic.failures and unchanged == len(before) else 1
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    sys.exit(main())
