"""Triton's model repository extension: the read-only index, and the model control check for load/unload.

Shared by HTTP (``service/routes/triton.py``) and gRPC (``service/grpc_server.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from service.errors import BadRequest
from service.model_spec import list_versions
from service.state import ServiceState

__all__ = ["repository_index", "check_model_control"]


async def repository_index(state: ServiceState, ready_only: bool = False) -> list[dict[str, Any]]:
    """The repository index: one entry per version folder of every model.

    Each entry is ``{"name", "version", "state": "READY" | "UNAVAILABLE", "reason"}``; with ``ready_only``
    only the ready ones are listed.
    """
    entries = await asyncio.to_thread(_index, state)
    return [e for e in entries if e["state"] == "READY"] if ready_only else entries


def _index(state: ServiceState) -> list[dict[str, Any]]:
    registry = state.registry
    served = {m.name: m.version for m in registry.served()}
    entries = []
    for name in registry.known():
        refused = set(registry.refused_versions(name))
        for version in list_versions(registry.repository, name):
            if served.get(name) == version and not state.draining:
                status, reason = "READY", ""
            elif served.get(name) == version:
                status, reason = "UNAVAILABLE", "the server is shutting down"
            elif version in refused:
                status, reason = "UNAVAILABLE", "failed to load; see the server log"
            elif name in served:
                status, reason = "UNAVAILABLE", f"not served: version {served[name]} is"
            else:
                status, reason = "UNAVAILABLE", "not loaded"
            entries.append({"name": name, "version": str(version), "state": status, "reason": reason})
    return entries


def check_model_control(state: ServiceState) -> None:
    """Raise unless load/unload are allowed: ``RESCOM_ALLOW_MODEL_CONTROL=true`` and an API key.

    Raises:
        BadRequest: model control is off (400, as Triton answers outside its explicit model control mode).
    """
    s = state.settings
    if not s.allow_model_control or s.api_key is None:
        raise BadRequest(  # 400, as Triton answers load/unload when its model control mode does not allow them
            "model control is off: load/unload need RESCOM_ALLOW_MODEL_CONTROL=true and RESCOM_API_KEY set"
        )
