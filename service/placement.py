"""Which execution provider ran each node of a graph, read from ONNX Runtime's own profile.

ONNX Runtime assigns every node to the first provider in the list that supports it; the rest fall back to the
CPU. Its only notice is a warning ("Some nodes were not assigned to the preferred execution providers"), so
the service runs its warm-up with profiling on, reads the provider of every kernel from the profile
(``args.provider`` of the ``*_kernel_time`` events) and reports the nodes that ran on the CPU. Shape
arithmetic is placed on the CPU on purpose (a few bytes of output); a node whose output holds at least
``HEAVY_OUTPUT_BYTES`` bytes is real work and counts as a fallback.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

__all__ = ["HEAVY_OUTPUT_BYTES", "NodeRun", "Placement", "read_placement"]

CPU = "CPUExecutionProvider"
HEAVY_OUTPUT_BYTES = 4096  # shape tensors are a few int64s; any activation of an image model is far larger


@dataclass(frozen=True)
class NodeRun:
    """One kernel run: node name, operator, provider, and output bytes."""

    name: str
    op: str
    provider: str
    output_bytes: int


@dataclass(frozen=True)
class Placement:
    """Node placement of one session, from a profile of at least one ``run``."""

    nodes: tuple[NodeRun, ...]

    def count_by_provider(self) -> dict[str, int]:
        """Distinct nodes per provider."""
        seen = {(n.name, n.provider) for n in self.nodes}
        return dict(Counter(provider for _, provider in seen))

    def cpu_nodes(self) -> list[NodeRun]:
        """Distinct nodes that ran on the CPU provider (largest output kept per node)."""
        largest: dict[str, NodeRun] = {}
        for n in self.nodes:
            if n.provider == CPU and (n.name not in largest or n.output_bytes > largest[n.name].output_bytes):
                largest[n.name] = n
        return sorted(largest.values(), key=lambda n: n.name)

    def fallbacks(self) -> list[NodeRun]:
        """CPU nodes doing real work (output >= ``HEAVY_OUTPUT_BYTES``); empty on a CPU-only session too."""
        if all(n.provider == CPU for n in self.nodes):
            return []  # a CPU session: nothing fell back
        return [n for n in self.cpu_nodes() if n.output_bytes >= HEAVY_OUTPUT_BYTES]

    def describe(self, nodes: list[NodeRun], limit: int = 8) -> str:
        """``op name (bytes)`` for up to ``limit`` nodes, for a log line."""
        text = ", ".join(f"{n.op} {n.name} ({n.output_bytes} B)" for n in nodes[:limit])
        return text + (f", ... ({len(nodes) - limit} more)" if len(nodes) > limit else "")


def read_placement(profile_path: str | Path) -> Placement:
    """Parse an ONNX Runtime profile (``session.end_profiling()``'s file).

    Raises:
        ValueError: the file is not an ONNX Runtime profile.
    """
    try:
        events = json.loads(Path(profile_path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read the ONNX Runtime profile {profile_path}: {err}") from None
    if not isinstance(events, list):
        raise ValueError(f"{profile_path} is not an ONNX Runtime profile (expected a JSON list of events)")
    nodes = []
    for event in events:
        args = event.get("args") or {}
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        if "provider" not in args:
            continue
        nodes.append(
            NodeRun(
                name=str(event["name"])[: -len("_kernel_time")],
                op=str(args.get("op_name", "?")),
                provider=str(args["provider"]),
                output_bytes=int(args.get("output_size", 0) or 0),
            )
        )
    return Placement(tuple(nodes))
