"""The service on a free 127.0.0.1 port: in a thread (uvicorn, same process) or as ``python -m service``.

Both wait until ``GET /health/ready`` answers 200 (models loaded and warmed) before handing over, and stop the
server on the way out. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ready_status(url: str, path: str = "/health/ready", timeout: float = 2.0) -> int | None:
    """Status of ``GET url + path``, ``None`` when nothing answers."""
    try:
        with urllib.request.urlopen(url + path, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


def wait_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    """Poll ``url/health/ready`` until 200.

    Raises:
        RuntimeError: ``proc`` exited first, or ``timeout`` seconds passed.
    """
    deadline = time.monotonic() + timeout
    while ready_status(url) != 200:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server at {url} exited with code {proc.returncode} during startup")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server at {url} was not ready after {timeout:.0f} s")
        time.sleep(0.05)


def service_command(
    repo: Path | None, port: int, *extra: str, python: str | Path = sys.executable
) -> list[str]:
    """``python -m service [--model-repository REPO] --port PORT EXTRA...`` (``repo=None``: the settings' own)."""
    repo_args = ["--model-repository", str(repo)] if repo is not None else []
    return [str(python), "-m", "service", *repo_args, "--port", str(port), *extra]


def stop_process(proc: subprocess.Popen, graceful_s: float = 0.0) -> None:
    """SIGTERM ``proc`` and wait ``graceful_s`` for it (``0``: no grace), then SIGKILL it if still running."""
    if proc.poll() is not None:
        return
    if graceful_s > 0:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(graceful_s)
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


@contextlib.contextmanager
def service_process(
    repo: Path | None,
    port: int,
    env: dict[str, str] | None = None,
    ready_timeout: float = 60.0,
    *,
    extra: Sequence[str] = (),
    output: Any = subprocess.PIPE,
    graceful_s: float = 0.0,
) -> Iterator[subprocess.Popen]:
    """``python -m service`` on 127.0.0.1:``port`` from the repository root, ready when yielded.

    Args:
        repo: the model repository (``None``: whatever ``env`` / the settings say).
        env: added to ``os.environ`` after the defaults ``RESCOM_LOG_LEVEL=info``, ``RESCOM_POLL_INTERVAL_S=0``
            (``RESCOM_HOST`` is dropped, so the server binds 127.0.0.1).
        extra: more command-line arguments (e.g. ``("--model", "digits_lt")``).
        output: where stdout and stderr go together (``subprocess.PIPE``: readable as text from
            ``proc.stdout``; ``subprocess.DEVNULL``; ``None``: this process's own).
        graceful_s: on the way out, SIGTERM and wait this long before SIGKILL (``0``: SIGKILL at once).
    """
    full_env = {**os.environ, "RESCOM_LOG_LEVEL": "info", "RESCOM_POLL_INTERVAL_S": "0", **(env or {})}
    full_env.pop("RESCOM_HOST", None)
    proc = subprocess.Popen(
        service_command(repo, port, *extra),
        cwd=ROOT,
        env=full_env,
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
        text=True,
    )
    try:
        try:
            wait_ready(f"http://127.0.0.1:{port}", proc, ready_timeout)
        except RuntimeError as err:
            log = proc.stdout.read() if output is subprocess.PIPE and proc.poll() is not None else ""
            raise RuntimeError(f"{err}\n{log}") from None
        yield proc
    finally:
        stop_process(proc, graceful_s)


@contextlib.contextmanager
def running_server(settings: Any, app: Any = None, ready_timeout: float = 30.0) -> Iterator[str]:
    """Run ``app`` (default ``create_app(settings)``) under uvicorn in a background thread on
    ``settings.port``; yield ``http://127.0.0.1:PORT``.

    Waits until ``/health/ready`` answers 200 (models loaded and warmed) and stops the server afterwards.
    """
    import httpx
    import uvicorn

    from service.main import create_app

    config = uvicorn.Config(
        app if app is not None else create_app(settings),
        host="127.0.0.1",
        port=settings.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.port}"
    deadline = time.monotonic() + ready_timeout
    try:
        while True:
            if not thread.is_alive():
                raise RuntimeError("the test server exited during startup; see the log above")
            try:
                if httpx.get(url + "/health/ready", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server at {url} not ready after {ready_timeout} s")
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def local_settings(repo: Path, **overrides: Any) -> Any:
    """``service.config.Settings`` for a test server: ``repo`` served on 127.0.0.1 and a free port.

    Defaults: no repository polling (``poll_interval_s=0``), warnings only; ``overrides`` replace any of them or
    set other fields (e.g. ``model="digits_lt"``, ``max_body_bytes=1 << 20``).
    """
    from service.config import Settings

    values: dict[str, Any] = {"port": free_port(), "poll_interval_s": 0, "log_level": "warning", **overrides}
    return Settings(model_repository=repo, **values)
