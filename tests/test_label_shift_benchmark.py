"""The label-shift benchmark end to end on the bundled ONNX model and a tiny image folder (real model, no mocks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.label_shift import ADAPTIVE, FIXED, main
from rescom.data.digits import load_digit_images

ROOT = Path(__file__).resolve().parents[1]


def write_folder(root: Path, per_class: dict[str, int]) -> None:
    images, labels = load_digit_images()
    for split, n in per_class.items():
        for c in range(10):
            folder = root / split / str(c)
            folder.mkdir(parents=True)
            for i, idx in enumerate(np.flatnonzero(labels == c)[-n - (5 if split == "val" else 0) :][:n]):
                Image.fromarray(images[idx]).save(folder / f"{i}.png")


def test_benchmark_scores_every_prior_and_writes_json_and_markdown(tmp_path, monkeypatch):
    write_folder(tmp_path / "data", {"val": 3, "test": 6})
    monkeypatch.chdir(tmp_path)  # the logits cache goes under ./runs
    out = tmp_path / "results"
    argv = [
        "--model-repository", str(ROOT / "models"), "--name", "digits_lt", "--data", str(tmp_path / "data"),
        "--val-sizes", "3", "--shift-ifs", "10", "--repeats", "1", "--bootstrap", "20", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "label_shift_digits_lt.json").read_text())
    block = report["blocks"][0]
    assert block["fit_used"] == "bcts" and block["n_val"] == 30
    assert set(block["streams"]) == {"natural", "shuffled", "drift", "forward-10", "backward-10"}
    for res in block["streams"].values():
        for prior in (*FIXED, *ADAPTIVE):
            lo, hi = res[prior]["top1_ci"]
            assert 0 <= lo <= res[prior]["top1"] <= hi <= 100
            assert 0 <= res[prior]["balanced_acc"] <= 100
        assert set(res["target"]) == {"top1_gap", "balanced_gap", "ok", "oracle_ok"}
    assert report["estimators"]["em+guard"]["cells"] == 5
    text = (out / "label_shift_digits_lt.md").read_text()
    assert "| stream | uniform | train | oracle | em |" in text and "load average" in text
