"""Answer checks: every server must return, for all 500 test images, the label of offline ONNX Runtime.

The offline reference runs the same :class:`apps.pipeline.Pipeline` in this process (batches of 32, the same
calibration), so ``class_id`` must match exactly and the top-1 score to float tolerance (batch composition
can change the last bits of ORT's output).
"""

from __future__ import annotations

import http.client
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from benchmarks.serving.apps.pipeline import Pipeline
from benchmarks.serving.workload import Image, build_request, parse_document

__all__ = ["Expected", "AccuracyResult", "offline_reference", "check_server"]

SCORE_TOL = 1e-4


@dataclass(frozen=True)
class Expected:
    """Offline ORT answer for one image."""

    class_id: int
    score: float


@dataclass
class AccuracyResult:
    """One server's answers to every test image, compared with offline ORT and the true labels."""

    images: int
    http_ok: int
    label_match: int  # class_id equal to offline ORT
    correct: int  # class_id equal to the true label
    max_score_diff: float
    seconds: float
    failures: list[str] = field(default_factory=list)  # the first few problems

    @property
    def all_match(self) -> bool:
        """Every image answered with the offline label and score."""
        return self.http_ok == self.images == self.label_match and self.max_score_diff <= SCORE_TOL

    @property
    def accuracy_pct(self) -> float:
        """Top-1 accuracy against the true labels."""
        return 100.0 * self.correct / max(1, self.images)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return {**asdict(self), "all_match": self.all_match, "accuracy_pct": self.accuracy_pct}


def offline_reference(pipeline: Pipeline, images: list[Image], batch: int = 32) -> list[Expected]:
    """The answers of offline ORT (no server) for ``images``."""
    out: list[Expected] = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        logits = pipeline.infer(pipeline.decode_many([im.png for im in chunk]))
        for doc in pipeline.respond(logits):
            top = doc["predictions"][0]
            out.append(Expected(int(top["class_id"]), float(top["score"])))
    return out


def check_server(base_url: str, fmt: str, images: list[Image], expected: list[Expected]) -> AccuracyResult:
    """Send every image once (one keep-alive connection) and compare the answers."""
    url = urlsplit(base_url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80, timeout=30)
    res = AccuracyResult(len(images), 0, 0, 0, 0.0, 0.0)
    start = time.perf_counter()
    try:
        for img, exp in zip(images, expected, strict=True):
            req = build_request(fmt, img.png)
            try:
                conn.request("POST", req.path, body=req.body, headers=req.headers)
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException) as err:
                _note(res, f"{img.name}: {type(err).__name__}: {err}")
                conn.close()
                continue
            if resp.status != 200:
                _note(res, f"{img.name}: HTTP {resp.status} {body[:120]!r}")
                continue
            res.http_ok += 1
            try:
                top = parse_document(fmt, body)["predictions"][0]
                class_id, score = int(top["class_id"]), float(top["score"])
            except (ValueError, KeyError, IndexError, TypeError) as err:
                _note(res, f"{img.name}: unreadable answer ({err}): {body[:120]!r}")
                continue
            res.correct += class_id == img.label
            if class_id == exp.class_id:
                res.label_match += 1
                res.max_score_diff = max(res.max_score_diff, abs(score - exp.score))
            else:
                _note(res, f"{img.name}: class {class_id}, offline ORT says {exp.class_id}")
    finally:
        conn.close()
    res.seconds = time.perf_counter() - start
    return res


def _note(res: AccuracyResult, text: str, limit: int = 5) -> None:
    if len(res.failures) < limit:
        res.failures.append(text)
