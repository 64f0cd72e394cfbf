"""GPU serving paths proven on the CPU: provider options (CUDA, TensorRT profiles and cache rules), IO binding,
and the node-placement report that names every node that fell back to the CPU."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from pydantic import ValidationError

from rescom_dev.images import random_images
from rescom_dev.onnx_models import tiny_reference_logits, write_version
from service import providers as prov
from service.config import Settings
from service.iobinding import BoundRunner, PinnedAllocator
from service.model_spec import read_spec
from service.placement import HEAVY_OUTPUT_BYTES, read_placement
from service.runtime import ModelLoadError, ModelRuntime, RuntimeOptions, _session_options, load_runtime

GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
CPU_BUILD = ["AzureExecutionProvider", "CPUExecutionProvider"]

# ---------------------------------------------------------------------------------------------- provider list


def test_cpu_and_auto_on_a_cpu_build():
    assert prov.provider_list("cpu", GPU_BUILD) == ["CPUExecutionProvider"]
    assert prov.provider_list("auto", CPU_BUILD) == ["CPUExecutionProvider"]


def test_cuda_options():
    providers = prov.provider_list("cuda", GPU_BUILD, device_id=1)
    assert providers == [("CUDAExecutionProvider", prov.cuda_options(1)), "CPUExecutionProvider"]
    assert prov.cuda_options(1) == {
        "device_id": "1",
        "cudnn_conv_algo_search": "HEURISTIC",
        "arena_extend_strategy": "kSameAsRequested",
        "do_copy_in_default_stream": "1",
    }
    assert prov.provider_list("auto", GPU_BUILD)[0][0] == "CUDAExecutionProvider"


def test_missing_gpu_pieces_are_refused_in_one_line():
    with pytest.raises(prov.ProviderError, match="no CUDA provider") as err:
        prov.provider_list("cuda", CPU_BUILD)
    assert "\n" not in str(err.value)
    with pytest.raises(prov.ProviderError, match="no TensorRT provider"):
        prov.provider_list("tensorrt", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    # onnxruntime-gpu lists TensorRT even without libnvinfer: refused, naming the reason and the way out
    with pytest.raises(prov.ProviderError, match="does not ship TensorRT .*RESCOM_PROVIDERS=cuda") as err:
        prov.provider_list("tensorrt", GPU_BUILD, trt={}, trt_library=None)
    assert "\n" not in str(err.value)


def test_tensorrt_profile_covers_every_bucket_and_caches(tmp_path: Path):
    opts = prov.tensorrt_options(0, True, tmp_path, "images", (224, 224, 3), 64)
    assert opts["trt_profile_min_shapes"] == "images:1x224x224x3"
    assert opts["trt_profile_opt_shapes"] == opts["trt_profile_max_shapes"] == "images:64x224x224x3"
    assert opts["trt_fp16_enable"] == "1"
    assert opts["trt_engine_cache_enable"] == opts["trt_timing_cache_enable"] == "1"
    assert opts["trt_engine_cache_path"] == opts["trt_timing_cache_path"] == str(tmp_path)
    no_cache = prov.tensorrt_options(0, False, None, "images", (32, 32, 3), 32)
    assert "trt_engine_cache_enable" not in no_cache and no_cache["trt_fp16_enable"] == "0"
    providers = prov.provider_list("tensorrt", GPU_BUILD, 0, trt=opts, trt_library="libnvinfer.so.10")
    assert [p if isinstance(p, str) else p[0] for p in providers] == GPU_BUILD
    assert providers[0][1] is opts


# ---------------------------------------------------------------------------------------------- cache rules


def test_trt_cache_root_rules(tmp_path: Path):
    env = {"HOME": str(tmp_path / "home")}
    assert prov.trt_cache_root(None, env) == tmp_path / "home/.cache/rescom/tensorrt"
    with pytest.raises(prov.ProviderError, match="absolute path, got '.'"):
        prov.trt_cache_root(Path(""), env)  # Path("") is the working directory: refused, never used
    assert prov.trt_cache_root(None, {**env, "XDG_CACHE_HOME": "/xdg"}) == Path("/xdg/rescom/tensorrt")
    assert prov.trt_cache_root(tmp_path / "trt", env) == tmp_path / "trt"
    with pytest.raises(prov.ProviderError, match="must be an absolute path"):
        prov.trt_cache_root(Path("engines"), env)


def test_trt_cache_dir_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RESCOM_MODEL_REPOSITORY", str(tmp_path))
    monkeypatch.setenv("RESCOM_TRT_CACHE_DIR", "")
    assert Settings().trt_cache_dir is None  # empty = unset, not Path("") = the working directory
    monkeypatch.setenv("RESCOM_TRT_CACHE_DIR", "  ")
    assert Settings().trt_cache_dir is None
    monkeypatch.setenv("RESCOM_TRT_CACHE_DIR", str(tmp_path / "trt"))
    assert Settings().trt_cache_dir == tmp_path / "trt"
    monkeypatch.setenv("RESCOM_TRT_CACHE_DIR", "relative/trt")
    with pytest.raises(ValidationError, match="trt_cache_dir must be an absolute path"):
        Settings()


def test_tensorrt_on_this_machine_is_refused_in_one_line(tmp_path: Path):
    write_version(tmp_path, "tiny", 1)
    with pytest.raises(ModelLoadError) as err:
        load_runtime(read_spec(tmp_path, "tiny", 1), RuntimeOptions(providers="tensorrt"))
    message = str(err.value)
    assert message.startswith("tiny/1: providers=tensorrt") and "\n" not in message


# ---------------------------------------------------------------------------------------------- IO binding


@pytest.fixture
def tiny_session(tmp_path: Path):
    write_version(tmp_path, "tiny", 1)
    spec = read_spec(tmp_path, "tiny", 1)
    session = ort.InferenceSession(str(spec.onnx_path), providers=["CPUExecutionProvider"])
    return spec, session


def test_bound_runner_matches_plain_runs_and_zeroes_padding(tiny_session):
    spec, session = tiny_session
    runner = BoundRunner(
        session, spec.input.name, spec.output.name, spec.image_shape, spec.num_classes, False
    )
    assert not runner.pinned
    for n, bucket in ((8, 8), (3, 8), (1, 8), (2, 2), (5, 8)):  # a smaller batch after a larger one
        x = random_images(n, seed=n)
        got = runner.run(x, bucket)
        assert got.shape == (n, spec.num_classes)
        np.testing.assert_allclose(got, tiny_reference_logits(x), atol=1e-3)
        slot = runner._free[bucket][0]
        assert not slot.inputs[n:].any()  # padding rows are zeros, as in the unbound path
    kept = runner.run(random_images(2, seed=1), 2)
    runner.run(random_images(2, seed=2), 2)
    np.testing.assert_allclose(kept, tiny_reference_logits(random_images(2, seed=1)), atol=1e-3)  # a copy


def test_bound_runner_concurrent_calls_never_share_buffers(tiny_session):
    spec, session = tiny_session
    runner = BoundRunner(
        session, spec.input.name, spec.output.name, spec.image_shape, spec.num_classes, False
    )
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(15):
                x = random_images(4, seed=seed * 100 + i)
                np.testing.assert_allclose(runner.run(x, 4), tiny_reference_logits(x), atol=1e-3)
        except BaseException as err:  # noqa: BLE001 (re-raised in the main thread)
            errors.append(err)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_model_runtime_through_the_binding(tiny_session):
    spec, session = tiny_session
    runner = BoundRunner(
        session, spec.input.name, spec.output.name, spec.image_shape, spec.num_classes, False
    )
    rt = ModelRuntime(spec, session, 8, (1, 4, 8), 1, pad=True, binder=runner)
    rt.warmup()
    assert rt.io_binding and not rt.pinned
    x = random_images(5, seed=3)
    np.testing.assert_allclose(rt.run(x), tiny_reference_logits(x), atol=1e-3)


def test_pinned_allocator_without_a_gpu_falls_back_to_pageable_memory():
    """With the CUDA runtime of the nvidia-* wheels but no GPU, cudaHostAlloc itself is called and fails."""
    alloc = PinnedAllocator(want_pinned=True)
    a = alloc.empty((3, 4), np.float32)
    a[:] = 1.5
    assert a.shape == (3, 4) and a.dtype == np.float32 and a.sum() == 18
    if not alloc.pinned:
        assert alloc.reason == "no CUDA runtime library" or alloc.reason.startswith("cudaHostAlloc failed")
    assert PinnedAllocator(want_pinned=False).reason == "CPU provider"


# ---------------------------------------------------------------------------------------------- placement


def test_placement_from_a_real_cpu_profile(tiny_session, tmp_path: Path):
    spec, _ = tiny_session
    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp_path / "profile")
    session = ort.InferenceSession(str(spec.onnx_path), so, providers=["CPUExecutionProvider"])
    session.run(None, {spec.input.name: random_images(2)})
    placement = read_placement(session.end_profiling())
    counts = placement.count_by_provider()
    assert list(counts) == ["CPUExecutionProvider"] and counts["CPUExecutionProvider"] >= 3
    assert placement.fallbacks() == []  # a CPU session has nothing to fall back from


def _event(name: str, op: str, provider: str, size: int) -> dict:
    return {
        "cat": "Node",
        "name": f"{name}_kernel_time",
        "ph": "X",
        "args": {"op_name": op, "provider": provider, "output_size": str(size)},
    }


def test_cpu_fallback_nodes_are_named(tmp_path: Path):
    events = [
        {"cat": "Session", "name": "model_run", "args": {}},
        _event("/conv1", "Conv", "CUDAExecutionProvider", 1 << 20),
        _event("/shape", "Shape", "CPUExecutionProvider", 32),  # shape arithmetic on the CPU: by design
        _event("/topk", "TopK", "CPUExecutionProvider", HEAVY_OUTPUT_BYTES * 2),
        _event("/topk", "TopK", "CPUExecutionProvider", HEAVY_OUTPUT_BYTES),
        {"cat": "Node", "name": "/conv1_fence_before", "args": {"op_name": "Conv"}},
    ]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(events))
    placement = read_placement(path)
    assert placement.count_by_provider() == {"CUDAExecutionProvider": 1, "CPUExecutionProvider": 2}
    assert [n.name for n in placement.cpu_nodes()] == ["/shape", "/topk"]
    heavy = placement.fallbacks()
    assert [(n.name, n.op, n.output_bytes) for n in heavy] == [("/topk", "TopK", 2 * HEAVY_OUTPUT_BYTES)]
    assert placement.describe(heavy) == f"TopK /topk ({2 * HEAVY_OUTPUT_BYTES} B)"
    path.write_text("{}")
    with pytest.raises(ValueError, match="not an ONNX Runtime profile"):
        read_placement(path)


def test_the_gpu_load_path_runs_on_the_cpu(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """load_runtime with the GPU-only steps forced on: profiled warm-up, placement report, IO binding."""
    write_version(tmp_path, "tiny", 1)
    caplog.set_level("INFO", logger="rescom.service.runtime")
    options = RuntimeOptions(
        providers="cpu", max_batch_size=8, batch_sizes=(1, 4), io_binding=True, profile_warmup=True
    )
    rt = load_runtime(read_spec(tmp_path, "tiny", 1), options)
    assert rt.io_binding and not rt.pinned and rt.placement is not None
    assert list(rt.placement.count_by_provider()) == ["CPUExecutionProvider"]
    assert "tiny/1: nodes per provider in the warm-up: CPUExecutionProvider:" in caplog.text
    for n in (1, 3, 8, 2):
        x = random_images(n, seed=10 + n)
        np.testing.assert_allclose(rt.run(x), tiny_reference_logits(x), atol=1e-3)
    plain = load_runtime(read_spec(tmp_path, "tiny", 1), RuntimeOptions(providers="cpu"))
    assert not plain.io_binding and plain.placement is None  # the CPU default: neither


def test_ort_warnings_are_shown_on_gpus():
    """Severity 2 (warnings: nodes placed on the CPU, memcpy nodes) on GPU sessions; errors only on the CPU."""
    assert _session_options(RuntimeOptions(), 1, on_gpu=True, profile_dir=None).log_severity_level == 2
    assert _session_options(RuntimeOptions(), 2, on_gpu=False, profile_dir=None).log_severity_level == 3
