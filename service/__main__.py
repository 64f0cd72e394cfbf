"""``python -m service --model-repository models [--model NAME] [--host 127.0.0.1] [--port 8000]``.

Every other option comes from ``RESCOM_*`` environment variables (:class:`service.config.Settings`). Runs one
uvicorn process (batching needs all requests in one process; scale out with replicas).

Limits per connection: :mod:`service.protocol`; shutdown sequence: :mod:`service.server`.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from service.config import Settings
from service.main import configure_logging, create_app
from service.server import DrainingServer, server_config

__all__ = ["main", "parse_args"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (each overrides its ``RESCOM_*`` variable)."""
    p = argparse.ArgumentParser(
        prog="python -m service",
        description=__doc__.split("\n\n")[0],
        epilog="Other settings: RESCOM_* environment variables (see the README).",
    )
    p.add_argument("--model-repository", help="Triton-style model repository (RESCOM_MODEL_REPOSITORY)")
    p.add_argument("--model", help="serve only this model (RESCOM_MODEL)")
    p.add_argument("--host", help="bind address, default 127.0.0.1 (RESCOM_HOST)")
    p.add_argument("--port", type=int, help="port, default 8000 (RESCOM_PORT)")
    p.add_argument(
        "--log-level", choices=["critical", "error", "warning", "info", "debug"], help="RESCOM_LOG_LEVEL"
    )
    return p.parse_args(argv)


def limit_malloc_retention() -> None:
    """Make glibc return large freed blocks to the OS (decoded images are tens of MiB each).

    glibc raises its mmap threshold up to 32 MiB after large blocks are freed, after which decoded images are
    carved from the heap and the process keeps their pages; a fixed 1 MiB threshold keeps every image-sized
    buffer in its own mapping, released when it is freed. No-op where glibc is absent.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "mallopt"):
            libc.mallopt(-3, 2**20)  # M_MMAP_THRESHOLD (fixing it also turns the dynamic raise off)
            libc.mallopt(-1, 2**20)  # M_TRIM_THRESHOLD: give back heap tops above 1 MiB
    except OSError:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Validate the settings, then run the server until it is stopped."""
    args = parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as err:
        lines = [f"  {'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in err.errors()]
        print("invalid settings:\n" + "\n".join(lines), file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    limit_malloc_retention()
    app = create_app(settings, fast_path=False)
    server = DrainingServer(server_config(settings, app), app, settings.shutdown_delay_s)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
