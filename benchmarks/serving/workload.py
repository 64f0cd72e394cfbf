"""The requests: digits-LT test PNGs, encoded as each server's wire format, for wrk and the accuracy client.

Two wire formats carry the same PNG bytes:

- ``raw``: ``POST /predict``, ``Content-Type: image/png``, the PNG as the body; the response body is the
  service's JSON document (our service, Mosec, LitServe, BentoML).
- ``v2``: KServe v2 binary-tensor request (``Inference-Header-Content-Length``): a JSON header naming one
  BYTES input ``image`` ``[1, 1]``, then the tensor (4-byte little-endian length + PNG); the response is
  Triton's JSON with the document as the string ``outputs[0].data[0]`` (PyTriton).
"""

from __future__ import annotations

import csv
import json
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.serving.config import CACHE_DIR, ROOT

__all__ = ["Image", "Request", "load_images", "build_request", "parse_document", "write_wrk_requests"]

TEST_DIR = CACHE_DIR / "digits_test"
V2_MODEL = "classify"


@dataclass(frozen=True)
class Image:
    """One test image: its PNG bytes, true label and file name."""

    png: bytes
    label: int
    name: str


@dataclass(frozen=True)
class Request:
    """One HTTP request as sent: path, headers and body."""

    path: str
    headers: dict[str, str]
    body: bytes


def load_images(test_dir: Path = TEST_DIR) -> list[Image]:
    """The digits-LT test split as PNGs, written once by ``scripts/digits_pngs.py`` (needs the training env)."""
    labels = test_dir / "labels.csv"
    if not labels.is_file():
        print(f"[workload] writing the digits-LT test PNGs to {test_dir}", flush=True)
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "scripts" / "digits_pngs.py"),
                "--split",
                "test",
                "--out",
                str(test_dir),
            ],
            cwd=ROOT,
            check=True,
        )
    with labels.open() as f:
        rows = list(csv.DictReader(f))
    return [Image((test_dir / r["path"]).read_bytes(), int(r["label"]), r["path"]) for r in rows]


def build_request(fmt: str, png: bytes) -> Request:
    """The request that carries ``png`` in wire format ``fmt`` (``raw`` or ``v2``)."""
    if fmt == "raw":
        return Request("/predict", {"Content-Type": "image/png"}, png)
    if fmt == "v2":
        tensor = struct.pack("<I", len(png)) + png
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "image",
                        "shape": [1, 1],
                        "datatype": "BYTES",
                        "parameters": {"binary_data_size": len(tensor)},
                    }
                ],
                "outputs": [{"name": "result", "parameters": {"binary_data": False}}],
            },
            separators=(",", ":"),
        ).encode()
        return Request(
            f"/v2/models/{V2_MODEL}/infer",
            {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))},
            header + tensor,
        )
    raise ValueError(f"unknown wire format {fmt!r}")


def parse_document(fmt: str, body: bytes) -> dict[str, Any]:
    """The service's JSON document from a response body in wire format ``fmt``."""
    payload = json.loads(body)
    if fmt == "v2":
        payload = json.loads(payload["outputs"][0]["data"][0])
    return payload


def write_wrk_requests(fmt: str, images: list[Image], out_dir: Path) -> Path:
    """Write one body file per image and a manifest (``file<TAB>Header: value...``) for ``post.lua``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, img in enumerate(images):
        req = build_request(fmt, img.png)
        body = out_dir / f"{i:05d}.bin"
        body.write_bytes(req.body)
        headers = "\t".join(f"{k}: {v}" for k, v in req.headers.items())
        lines.append(f"{body}\t{req.path}\t{headers}")
    manifest = out_dir / "manifest.tsv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest
