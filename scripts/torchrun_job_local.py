"""Run the training overlay's multi-node job on this machine: its exact container command, one process per node.

    python scripts/torchrun_job_local.py --work runs/job-local [--train-args "--epochs 2"] [--nodes N]

Reads the Indexed Job (deploy/kubernetes/overlays/training/indexed-job.yaml): the container's command, args and
plain ``env`` values, unchanged, then starts PET_NNODES copies of the command here (the "pods"), as Kubernetes
would, with only what the cluster provides replaced: PET_NODE_RANK (the completion index), PET_MASTER_ADDR
(127.0.0.1 instead of pod 0's DNS name), PET_MASTER_PORT (a free port), the two volumes (RUNS_DIR and
RESCOM_MODEL_REPOSITORY under --work) and TRAIN_ARGS. The command then runs ``torchrun`` (gloo on CPU) and,
on node 0, exports best.pt as the next version of the model repository. Exits with the first non-zero status.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "deploy" / "kubernetes" / "overlays" / "training" / "indexed-job.yaml"


def job_container(path: Path = JOB) -> dict[str, Any]:
    """The (single) container of the Indexed Job."""
    job = yaml.safe_load(path.read_text())
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def plain_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's literal ``env`` values (those from the downward API are the cluster's to set)."""
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_env(base: dict[str, str], rank: int, port: int, work: Path, train_args: str) -> dict[str, str]:
    """The environment of node ``rank``: the manifest's, then what the cluster would provide."""
    env = dict(os.environ) | base
    env |= {
        "PET_NODE_RANK": str(rank),
        "PET_MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_PORT": str(port),
        "RUNS_DIR": str(work / "runs"),
        "RESCOM_MODEL_REPOSITORY": str(work / "models"),
        "TRAIN_ARGS": train_args,
        "PYTHONPATH": str(REPO),
        # `torchrun` and `python` of the interpreter running this script, as the image's PATH provides them
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
    }
    return env


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="folder standing in for the two volumes (runs/, models/)")
    p.add_argument("--train-args", default="", help="TRAIN_ARGS, e.g. '--epochs 2' (default: the manifest's)")
    p.add_argument("--nodes", type=int, help="override PET_NNODES (default: the manifest's)")
    args = p.parse_args()
    container = job_container()
    base = plain_env(container)
    if args.nodes:
        base["PET_NNODES"] = str(args.nodes)
    nodes = int(base["PET_NNODES"])
    work = Path(args.work).resolve()
    (work / "runs").mkdir(parents=True, exist_ok=True)
    (work / "models").mkdir(parents=True, exist_ok=True)
    argv = container["command"] + container["args"]
    print(f"job command ({nodes} nodes x {base['PET_NPROC_PER_NODE']} processes): {argv}", flush=True)
    port, start = free_port(), time.monotonic()
    procs = [
        subprocess.Popen(argv, cwd=REPO, env=node_env(base, rank, port, work, args.train_args))
        for rank in range(nodes)
    ]
    codes = [proc.wait() for proc in procs]
    print(f"nodes exited {codes} after {time.monotonic() - start:.1f} s", flush=True)
    return next((c for c in codes if c != 0), 0)


if __name__ == "__main__":
    sys.exit(main())
