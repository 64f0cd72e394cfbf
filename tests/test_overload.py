"""Overload, small and bounded: ``benchmarks/overload.py`` against the slow test model with a tiny queue.

A few hundred requests sent open-loop far above what the model can do. Asserts behaviour, not timings: only 200,
503 and 504 come back (no other 5xx, no dropped connection), every 503 carries ``Retry-After``, some requests
are served and some shed, and the server is healthy afterwards (ready, same answer as before). The full-size run
is ``python benchmarks/overload.py`` (docs/reliability.md).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from rescom_dev.onnx_models import write_version

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("overload", ROOT / "benchmarks" / "overload.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = module  # its dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_overload_sheds_with_503_retry_after_and_stays_healthy(tmp_path: Path, capsys: pytest.CaptureFixture):
    overload = _load_script()
    write_version(tmp_path, "slow", 1, kind="slow", slow_matmuls=40, slow_dim=512)  # tens of ms a batch
    out = tmp_path / "overload.json"
    argv = [
        "--model-repository",
        str(tmp_path),
        "--model",
        "slow",
        "--queue-size",
        "4",
        "--max-batch-size",
        "2",
        "--deadline-s",
        "0.5",
        "--rate",
        "400",  # far above the slow model's capacity on any machine
        "--burst-s",
        "0.5",
        "--total",
        "400",
        "--connections",
        "64",
        "--max-rss-growth-mib",
        "256",  # a few hundred requests: only a gross leak could get near this
        "--json",
        str(out),
    ]
    code = overload.main(argv)
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert code == 0, (report["failures"], printed)
    assert set(report["statuses"]) <= {"200", "503", "504"}, report["statuses"]
    assert report["served"] > 0 and report["rejected_503"] > 0, report
    assert report["missing_retry_after"] == 0 and report["transport_errors"] == 0
    assert report["healthy_after"]
    assert 300 <= report["requests"] <= 400
    assert report["rss_before_mib"] > 0 and report["rss_after_total_mib"] > 0
    assert "[overload] OK" in printed and "rejections answered in p50" in printed
    md = out.with_suffix(".md").read_text()  # written next to the JSON: command, machine, load, figures
    assert md.startswith("# overload\n") and "- load average (1, 5, 15 min) at start" in md
    assert f"| {report['served']} / {report['rejected_503']} / {report['expired_504']} of" in md


def test_render_only_writes_the_markdown_of_a_committed_run(tmp_path: Path):
    """``--render-only`` measures nothing; a run recorded before machine/load were kept says they are missing."""
    overload = _load_script()
    source = tmp_path / "overload.json"
    source.write_text((ROOT / "benchmarks" / "results" / "overload.json").read_text())
    record = json.loads(source.read_text())
    assert overload.main(["--render-only", str(source)]) == 0
    md = source.with_suffix(".md").read_text()
    assert f"- command: `{record['command']}`" in md
    if "machine" not in record:
        assert "- load average: not recorded by this run" in md
    assert f"{record['burst']['offered_per_s']:.0f} / {record['target_rate_per_s']:.0f} req/s" in md
