"""The system Chromium for the demo-page tests and scripts/demo_screenshots.py (never a downloaded browser)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Headless Chromium for the demo-page tests and scripts/demo_screenshots.py: the flags keep it off the network
# (this machine has none) and let it run as root.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str | None:
    """The system Chromium: ``$RESCOM_CHROMIUM``, else ``chromium`` / ``chromium-browser`` on ``PATH``."""
    explicit = os.environ.get("RESCOM_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")
