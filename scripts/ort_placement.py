"""Where ONNX Runtime runs each node of an exported model; exit 1 when real work fell back to the CPU.

    python scripts/ort_placement.py --model-dir models/NAME/N --providers cuda [--batch 64] [--json FILE]

Builds the session exactly as the service does (``service.providers``: same provider list and options), runs
one profiled batch of ``--batch`` zero images, and prints the nodes per provider and every node that ran on
the CPU (``service.placement``). Fails (exit 1) when the session's first provider is not the one asked for,
or when a node with a non-trivial output (>= 4 KiB: not shape arithmetic) ran on the CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import onnxruntime as ort

from rescom import model_repository as mr
from service import providers as prov
from service.placement import read_placement


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", required=True, help="a version folder: model.onnx + rescom.json")
    p.add_argument("--providers", choices=("cpu", "cuda", "tensorrt"), default="cuda")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--trt-fp16", action="store_true")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = Path(args.model_dir)
    meta = json.loads((folder / mr.METADATA_FILE).read_text())
    inp = meta["inputs"][0]
    image_shape = tuple(inp["shape"][1:])
    trt = library = None
    if args.providers == "tensorrt":
        library = prov.tensorrt_libraries()
        cache = prov.trt_cache_root(None) / meta["name"] / str(meta["version"])
        cache.mkdir(parents=True, exist_ok=True)
        trt = prov.tensorrt_options(0, args.trt_fp16, cache, inp["name"], image_shape, args.batch)
    try:
        providers = prov.provider_list(args.providers, ort.get_available_providers(), 0, trt, library)
    except prov.ProviderError as err:
        print(f"[placement] FAIL: {err}", file=sys.stderr)
        return 1
    wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.log_severity_level = 2  # ORT's own "nodes not assigned to the preferred provider" warning
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "placement")
        session = ort.InferenceSession(
            str(folder / meta.get("onnx", {}).get("file", "model.onnx")), so, providers=providers
        )
        x = np.zeros((args.batch, *image_shape), dtype=np.uint8)  # [n, H, W, 3]
        session.run(None, {inp["name"]: x})
        placement = read_placement(session.end_profiling())
    actual = session.get_providers()[0]
    counts = placement.count_by_provider()
    cpu_nodes, heavy = placement.cpu_nodes(), placement.fallbacks()
    print(f"[placement] session runs on {actual} (asked for {wanted}); nodes per provider: {counts}")
    if cpu_nodes and wanted != prov.CPU:
        print(f"[placement] nodes on the CPU: {placement.describe(cpu_nodes, limit=20)}")
    result = {
        "providers": args.providers,
        "wanted": wanted,
        "actual": actual,
        "nodes_per_provider": counts,
        "cpu_nodes": [n.__dict__ for n in cpu_nodes],
        "fallbacks": [n.__dict__ for n in heavy],
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if actual != wanted:
        print(f"[placement] FAIL: the session fell back from {wanted} to {actual}", file=sys.stderr)
        return 1
    if heavy:
        print(
            f"[placement] FAIL: {len(heavy)} node(s) fell back to the CPU: {placement.describe(heavy)}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
