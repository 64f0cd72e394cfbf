"""Model repository faults: every broken model is refused with one clear log line and the others keep serving.

``tests/test_service_reload.py`` already covers: a hot-reloaded version whose input size contradicts the graph, and
one whose model.onnx is garbage (both refused while the previous version serves), startup falling back to an older
version, and a refused model next to a served one. ``tests/test_service_units.py`` covers each rescom.json field
check on its own. This module adds the faults they do not: truncated graphs (with and without a matching hash),
a class count or input dtype that contradicts the graph, a graph with a symbolic class axis or non-finite outputs
(caught by the warm-up), unreadable metadata, a missing graph, empty and missing version folders, in-place
corruption of the served version, and a model that fails at inference time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from reliability_helpers import assert_clean_error, wait_until

from rescom.model_repository import METADATA_FILE
from rescom_dev.images import encode, random_images
from rescom_dev.onnx_models import build_model, metadata, tiny_reference_logits, write_version
from rescom_dev.servers import local_settings, running_server

pytestmark = pytest.mark.timeout(120)
PNG = encode(random_images(1, seed=6)[0])
X = random_images(3, seed=13)  # uint8 [3, 32, 32, 3]


def _tiny_with_tail(tail: str) -> onnx.ModelProto:
    """The tiny graph with extra nodes after its logits (``tail``: ``inf``, ``gather`` or ``float_input``)."""
    model = build_model("tiny")
    g = model.graph
    if tail == "float_input":  # the graph takes float pixels; rescom.json says UINT8
        g.input[0].type.tensor_type.elem_type = TensorProto.FLOAT
        return model
    (last,) = [n for n in g.node if n.output[0] == "logits"]
    last.output[0] = "logits_raw"
    if tail == "symbolic_classes":
        # Tile by input-dependent repeats [1, 1 + 0 * max(pixels)]: the class axis cannot be inferred from the
        # graph, only running it reveals C (the warm-up does).
        g.output[0].type.tensor_type.shape.dim[1].dim_param = "classes"
        for value, init in (([1], "one_shape"), ([0], "zero_i"), ([1], "one_i")):
            g.initializer.append(numpy_helper.from_array(np.asarray(value, np.int64), init))
        g.node.extend(
            [
                helper.make_node("ReduceMax", ["images"], ["peak4"], keepdims=1),  # [1, 1, 1, 1]
                helper.make_node("Reshape", ["peak4", "one_shape"], ["peak1"]),  # [1]
                helper.make_node("Cast", ["peak1"], ["peak_i"], to=TensorProto.INT64),
                helper.make_node("Mul", ["peak_i", "zero_i"], ["zero_col"]),
                helper.make_node("Add", ["zero_col", "one_i"], ["col_reps"]),
                helper.make_node("Concat", ["one_i", "col_reps"], ["reps"], axis=0),  # [1, 1]
                helper.make_node("Tile", ["logits_raw", "reps"], ["logits"]),
            ]
        )
    elif tail == "inf":  # every logit becomes +-inf: caught by the warm-up's finiteness check
        g.initializer.append(numpy_helper.from_array(np.asarray(np.inf, np.float32), "inf"))
        g.node.append(helper.make_node("Mul", ["logits_raw", "inf"], ["logits"]))
    elif tail == "gather":  # works on all-zero input (the warm-up), fails on any pixel > 9: a runtime fault
        g.initializer.append(numpy_helper.from_array(np.asarray(0.0, np.float32), "zero"))
        g.node.extend(
            [
                helper.make_node("ReduceMax", ["images"], ["peak"], keepdims=0),  # uint8 scalar
                helper.make_node("Cast", ["peak"], ["index"], to=TensorProto.INT64),
                helper.make_node("Gather", ["b", "index"], ["picked"]),  # b has 10 entries
                helper.make_node("Mul", ["picked", "zero"], ["nothing"]),
                helper.make_node("Add", ["logits_raw", "nothing"], ["logits"]),
            ]
        )
    else:
        raise ValueError(tail)
    onnx.checker.check_model(model)
    return model


def _write(repo: Path, name: str, data: bytes, version: int = 1, **meta_changes) -> Path:
    """A version folder with ``data`` as model.onnx and a rescom.json hashing it (``meta_changes`` applied)."""
    vdir = repo / name / str(version)
    vdir.mkdir(parents=True, exist_ok=True)
    meta = metadata(name, version, data)
    for key, value in meta_changes.items():
        meta[key] = value
    (vdir / "model.onnx").write_bytes(data)
    (vdir / METADATA_FILE).write_text(json.dumps(meta))
    return vdir


def _broken_repository(repo: Path) -> dict[str, str]:
    """A repository with one good model (``good``) and one broken model per fault; returns name -> log fragment."""
    write_version(repo, "good", 1)
    full = build_model("tiny").SerializeToString()
    half = full[: len(full) // 2]
    expected: dict[str, str] = {}

    _write(repo, "truncated", half)  # hash of the truncated bytes: only onnxruntime can notice
    expected["truncated"] = "onnxruntime cannot load the graph"

    vdir = _write(repo, "truncated_copy", half)  # rescom.json still hashes the whole file: a partial copy
    meta = json.loads((vdir / METADATA_FILE).read_text())
    meta["onnx"]["sha256"] = hashlib.sha256(full).hexdigest()
    (vdir / METADATA_FILE).write_text(json.dumps(meta))
    expected["truncated_copy"] = "does not match onnx.sha256"

    twelve = metadata("classes", 1, full, num_classes=12, class_counts=[10] * 12)
    vdir = repo / "classes" / "1"
    vdir.mkdir(parents=True)
    (vdir / "model.onnx").write_bytes(full)
    (vdir / METADATA_FILE).write_text(json.dumps(twelve))
    expected["classes"] = "axis 1 is 10 in the graph, 12 in rescom.json"

    data = _tiny_with_tail("symbolic_classes").SerializeToString()
    vdir = repo / "symbolic" / "1"
    vdir.mkdir(parents=True)
    (vdir / "model.onnx").write_bytes(data)
    (vdir / METADATA_FILE).write_text(
        json.dumps(metadata("symbolic", 1, data, num_classes=12, class_counts=[10] * 12))
    )
    expected["symbolic"] = "output 'logits' has shape [1, 10] for a batch of 1; expected [1, 12]"

    _write(repo, "float_input", _tiny_with_tail("float_input").SerializeToString())
    expected["float_input"] = "'images' is tensor(float) in the graph, UINT8 in rescom.json"

    _write(repo, "infinite", _tiny_with_tail("inf").SerializeToString())
    expected["infinite"] = "output 'logits' is not finite"

    vdir = _write(repo, "bad_json", full)
    (vdir / METADATA_FILE).write_text('{"format": "rescom-model/1", "class_names": [')
    expected["bad_json"] = "bad_json/1/rescom.json is not readable JSON"

    vdir = _write(repo, "no_graph", full)
    (vdir / "model.onnx").unlink()
    expected["no_graph"] = "the graph file 'model.onnx' is missing"

    (repo / "empty_version" / "1").mkdir(parents=True)
    expected["empty_version"] = "no complete version (version folders: 1)"

    (repo / "no_versions").mkdir()
    (repo / "no_versions" / "config.pbtxt").write_text('name: "no_versions"\n')
    expected["no_versions"] = "no complete version (version folders: none)"
    return expected


def test_broken_models_are_refused_with_a_reason_and_the_good_one_serves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="rescom")
    expected = _broken_repository(tmp_path)
    s = local_settings(tmp_path, log_level="info")
    with running_server(s) as url, httpx.Client(base_url=url, timeout=30) as c:
        assert c.get("/health/ready").json()["models"] == {
            "good": {"version": 1, "provider": "CPUExecutionProvider"}
        }
        models = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
        assert set(models) == {"good", *expected}
        for name in expected:
            assert not models[name]["ready"] and models[name]["version"] is None, name
            want = [] if name in ("empty_version", "no_versions") else [1]
            assert models[name]["refused_versions"] == want, name
            r = c.post("/predict", content=PNG, headers={"Content-Type": "image/png"}, params={"model": name})
            assert_clean_error(r, 503, f"model {name!r} is not loaded")
        r = c.post("/predict", content=PNG, headers={"Content-Type": "image/png"}, params={"model": "good"})
        assert r.status_code == 200 and r.json()["model"] == "good"

    lines = [r.getMessage() for r in caplog.records if r.name.startswith("rescom")]
    for name, fragment in expected.items():
        mine = [m for m in lines if re.search(rf"(refusing|not serving) model {name}[ :]", m)]
        assert len(mine) == 1, (name, mine)  # one line per fault, not one per poll or per layer
        assert fragment in mine[0], (name, fragment, mine[0])
        assert str(tmp_path) not in mine[0]  # paths relative to the repository
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and "Traceback" in r.getMessage()]


def test_failed_hot_reloads_leave_the_served_version_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="rescom")
    write_version(tmp_path, "tiny", 1, seed=0)
    s = local_settings(tmp_path, poll_interval_s=0.1, log_level="info")
    full = build_model("tiny", seed=1).SerializeToString()

    def refused(c: httpx.Client, version: int) -> bool:
        return version in c.get("/v1/models/tiny").json()["refused_versions"]

    with running_server(s) as url, httpx.Client(base_url=url, timeout=30) as c:

        def check_still_v1() -> None:
            assert c.get("/v1/models/tiny").json()["version"] == 1
            assert c.get("/health/ready").status_code == 200
            body = {
                "inputs": [
                    {
                        "name": "images",
                        "shape": [3, 32, 32, 3],
                        "datatype": "UINT8",
                        "data": X.ravel().tolist(),
                    }
                ],
                "outputs": [{"name": "logits"}],
            }
            out = c.post("/v2/models/tiny/infer", json=body).json()["outputs"][0]
            got = np.asarray(out["data"], np.float32).reshape(out["shape"])
            np.testing.assert_allclose(got, tiny_reference_logits(X, seed=0), atol=1e-3)

        _write(tmp_path, "tiny", full[: len(full) // 3], version=2)  # truncated graph
        wait_until(lambda: refused(c, 2), 20, "version 2 to be refused")
        check_still_v1()

        vdir = _write(tmp_path, "tiny", full, version=3)
        (vdir / METADATA_FILE).write_text("{not json")  # unreadable metadata
        wait_until(lambda: refused(c, 3), 20, "version 3 to be refused")
        check_still_v1()

        (tmp_path / "tiny" / "4").mkdir()  # an empty version folder (a copy that has not started): ignored
        (tmp_path / "tiny" / "5").mkdir()
        (tmp_path / "tiny" / "5" / "model.onnx").write_bytes(full)  # graph copied, rescom.json not yet
        time.sleep(0.5)  # five polls
        check_still_v1()
        assert c.get("/v1/models/tiny").json()["refused_versions"] == [2, 3]

        # The served version's own graph is overwritten with garbage in place: the session in memory keeps
        # serving, the changed files are refused.
        (tmp_path / "tiny" / "1" / "model.onnx").write_bytes(b"\x08\x07garbage" * 100)
        wait_until(lambda: refused(c, 1), 20, "the corrupted version 1 files to be refused")
        check_still_v1()
        r = c.post("/predict", content=PNG, headers={"Content-Type": "image/png"})
        assert r.status_code == 200 and r.json()["version"] == 1

        # Polling survived all of that: a good version 6 is picked up and served.
        write_version(tmp_path, "tiny", 6, seed=1)
        wait_until(lambda: c.get("/v1/models/tiny").json()["version"] == 6, 20, "version 6 to be served")
        r = c.post("/predict", content=PNG, headers={"Content-Type": "image/png"})
        assert r.status_code == 200 and r.json()["version"] == 6

    refusals = [r.getMessage() for r in caplog.records if "refusing model tiny" in r.getMessage()]
    assert any(
        "version 2" in m and "onnxruntime cannot load" in m and "version 1 keeps serving" in m
        for m in refusals
    )
    assert any(
        "version 3" in m and "not readable JSON" in m and "version 1 keeps serving" in m for m in refusals
    )
    assert any("version 1:" in m and "version 1 keeps serving" in m for m in refusals)
    assert len(refusals) == 3, refusals  # each refused once, not at every poll


def test_a_model_that_fails_at_inference_time_gets_500_without_details(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """The graph passes the warm-up (all-zero input) but fails on real pixels: that batch's requests get a clean
    500, the traceback goes to the log only, and the service and its other model carry on."""
    caplog.set_level(logging.INFO, logger="rescom")
    _write(tmp_path, "fragile", _tiny_with_tail("gather").SerializeToString())
    write_version(tmp_path, "good", 1)
    s = local_settings(tmp_path, log_level="info")
    dark = encode(np.zeros((32, 32, 3), np.uint8))
    with running_server(s) as url, httpx.Client(base_url=url, timeout=30) as c:
        post = lambda body, model: c.post(  # noqa: E731
            "/predict", content=body, headers={"Content-Type": "image/png"}, params={"model": model}
        )
        assert post(dark, "fragile").status_code == 200  # all-zero pixels: the gather index is 0
        r = post(PNG, "fragile")
        assert_clean_error(r, 500, "inference failed in model 'fragile'")
        assert post(PNG, "good").status_code == 200
        assert post(dark, "fragile").status_code == 200  # the failure did not break the model's batcher
        assert c.get("/health/ready").status_code == 200
    logged = [r for r in caplog.records if "inference failed for a batch" in r.getMessage()]
    assert logged and logged[0].exc_info is not None  # the detail is in the server log
