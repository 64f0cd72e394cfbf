"""Training faults: kill -9 mid-epoch then --resume; NaN/Inf loss stops cleanly with a usable checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rescom.checkpoint import load_checkpoint
from tests.conftest import TINY_RUN_ARGS, run_training

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_kill_9_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, tiny_run):
    _, straight = tiny_run
    out = tmp_path / "killed"
    cmd = [sys.executable, "training/train.py", *TINY_RUN_ARGS, "--output-dir", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "log.jsonl"
    deadline = time.monotonic() + 600  # epoch 1 of the tiny run; generous for a loaded shared machine
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if log.exists() and log.read_text().count("\n") >= 1:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        assert log.exists() and log.read_text().count("\n") >= 1, "epoch 1 did not finish within 600 s"
        time.sleep(0.3)  # well inside epoch 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "metrics.json").exists(), "the run was supposed to die before finishing"
    assert load_checkpoint(out / "last.pt")["epoch"] == 0  # the good checkpoint of epoch 1 survived
    resumed = run_training(out, "--resume")
    assert resumed["acc"] == pytest.approx(straight["acc"], abs=1e-9)
    assert resumed["per_class_acc"] == pytest.approx(straight["per_class_acc"], abs=1e-9)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "nan"
    # Epoch 1 trains normally; from epoch 2 the step schedule multiplies the rate by 1e12, so the loss blows up.
    with pytest.raises(SystemExit, match="loss became"):
        run_training(out, "optim.schedule=step", "optim.milestones=[2]", "optim.gamma=1e12")
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 0
    assert not (out / "metrics.json").exists()
    lines = (out / "log.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["epoch"] == 1
