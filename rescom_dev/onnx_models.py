"""Tiny ONNX models built with ``onnx.helper`` and model repositories holding them (tests, benchmarks, scripts).

The models follow the repository contract of docs/architecture.md exactly (``images`` uint8 ``[N, 32, 32, 3]``
with a dynamic batch axis in, ``logits`` float32 ``[N, C]`` out, ``rescom.json`` beside ``model.onnx``), so the
service cannot tell them from an exported ResCom model:

- ``tiny``: cast -> /255 -> (x - mean) / std -> mean over H, W -> ``[N, 3]`` -> MatMul ``[3, C]`` + bias.
  :func:`tiny_reference_logits` computes the same thing in numpy.
- ``slow``: ``tiny`` plus a chain of input-dependent matrix products whose result is multiplied by 0, so the
  logits are unchanged but each batch takes a while (for deadline, overload and drain tests).
- ``conv``: a ResNet-32-shaped CNN with random weights (the cost of the real digits model), for benchmarks when
  the bundled trained model is not available.

Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rescom.model_repository import METADATA_FILE

NUM_CLASSES = 10
CROP = 32
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
# Long-tailed training counts (imbalance factor 100), class 0 the head.
CLASS_COUNTS = [int(round(500 * 0.01 ** (i / (NUM_CLASSES - 1)))) for i in range(NUM_CLASSES)]
TEMPERATURE = 1.5


def tiny_weights(num_classes: int = NUM_CLASSES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The ``[3, C]`` weight and ``[C]`` bias of the tiny model (seeded, large enough to separate colours)."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(0.0, 3.0, (3, num_classes)).astype(np.float32)
    bias = rng.normal(0.0, 0.5, (num_classes,)).astype(np.float32)
    return weight, bias


def tiny_reference_logits(images: np.ndarray, num_classes: int = NUM_CLASSES, seed: int = 0) -> np.ndarray:
    """Numpy version of the tiny graph: uint8 ``[N, H, W, 3]`` -> float32 ``[N, C]``."""
    weight, bias = tiny_weights(num_classes, seed)
    x = images.astype(np.float32) * np.float32(1 / 255)
    x = (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return x.mean(axis=(1, 2)) @ weight + bias  # [N, C]


def _normalise_nodes(prefix: str = "") -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    scale = np.asarray(STD, np.float32).reshape(1, 1, 1, 3) * 255.0
    inits = [
        numpy_helper.from_array((1.0 / scale).astype(np.float32), prefix + "scale"),
        numpy_helper.from_array(
            (-np.asarray(MEAN, np.float32) / np.asarray(STD, np.float32)).reshape(1, 1, 1, 3),
            prefix + "shift",
        ),
    ]
    nodes = [
        helper.make_node("Cast", ["images"], [prefix + "xf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [prefix + "xf", prefix + "scale"], [prefix + "xs"]),
        helper.make_node("Add", [prefix + "xs", prefix + "shift"], [prefix + "xn"]),  # [N, H, W, 3]
    ]
    return nodes, inits, prefix + "xn"


def build_model(
    kind: str = "tiny",
    num_classes: int = NUM_CLASSES,
    crop: int = CROP,
    seed: int = 0,
    slow_matmuls: int = 24,
    slow_dim: int = 256,
) -> onnx.ModelProto:
    """Build one of the test graphs (see the module docstring) as an ``onnx.ModelProto`` (opset 17)."""
    nodes, inits, xn = _normalise_nodes()
    if kind in ("tiny", "slow"):
        weight, bias = tiny_weights(num_classes, seed)
        inits += [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")]
        nodes += [
            helper.make_node("ReduceMean", [xn], ["feat"], axes=[1, 2], keepdims=0),  # [N, 3]
            helper.make_node("MatMul", ["feat", "W"], ["mm"]),  # [N, C]
        ]
        head = "mm"
        if kind == "slow":
            # s (scalar, depends on the input so nothing is constant-folded) -> A [D, D] -> A @ (1/D) ... -> 0 * sum.
            inits += [
                numpy_helper.from_array(np.asarray([slow_dim, slow_dim], np.int64), "dd"),
                numpy_helper.from_array(np.full((slow_dim, slow_dim), 1.0 / slow_dim, np.float32), "avg"),
                numpy_helper.from_array(np.zeros((1,), np.float32), "zero"),
            ]
            nodes += [
                helper.make_node("ReduceMean", ["feat"], ["s"], keepdims=0),  # []
                helper.make_node("Expand", ["s", "dd"], ["a0"]),  # [D, D]
            ]
            for i in range(slow_matmuls):
                nodes.append(helper.make_node("MatMul", [f"a{i}", "avg"], [f"a{i + 1}"]))
            nodes += [
                helper.make_node("ReduceSum", [f"a{slow_matmuls}"], ["tot"], keepdims=0),
                helper.make_node("Mul", ["tot", "zero"], ["nothing"]),  # [1], always 0
                helper.make_node("Add", ["mm", "nothing"], ["mm_slow"]),
            ]
            head = "mm_slow"
        nodes.append(helper.make_node("Add", [head, "b"], ["logits"]))
    elif kind == "conv":
        # ResNet-32 for 32x32 inputs (He et al. 2016): stem 3->16, three stages of five basic blocks with 16, 32
        # and 64 channels (stride 2 and a 1x1 projection at the start of stages 2 and 3), global pool, linear.
        # BatchNorm is folded away (as after export); weights are random, so only the cost is realistic.
        rng = np.random.default_rng(seed)
        nodes.append(helper.make_node("Transpose", [xn], ["x0"], perm=[0, 3, 1, 2]))  # [N, 3, H, W]
        counter = iter(range(10_000))

        def conv(inp: str, cin: int, cout: int, k: int, stride: int, relu: bool) -> str:
            i = next(counter)
            w = rng.normal(0, np.sqrt(2.0 / (k * k * cin)), (cout, cin, k, k)).astype(np.float32)
            inits.extend(
                [
                    numpy_helper.from_array(w, f"cw{i}"),
                    numpy_helper.from_array(np.zeros(cout, np.float32), f"cb{i}"),
                ]
            )
            pad = k // 2
            nodes.append(
                helper.make_node(
                    "Conv", [inp, f"cw{i}", f"cb{i}"], [f"c{i}"], pads=[pad] * 4, strides=[stride, stride]
                )
            )
            if not relu:
                return f"c{i}"
            nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
            return f"r{i}"

        cur = conv("x0", 3, 16, 3, 1, True)  # [N, 16, 32, 32]
        cin = 16
        for stage, cout in enumerate((16, 32, 64)):
            for block in range(5):
                stride = 2 if stage > 0 and block == 0 else 1
                h = conv(cur, cin, cout, 3, stride, True)
                h = conv(h, cout, cout, 3, 1, False)
                short = cur if stride == 1 and cin == cout else conv(cur, cin, cout, 1, stride, False)
                i = next(counter)
                nodes += [
                    helper.make_node("Add", [h, short], [f"sum{i}"]),
                    helper.make_node("Relu", [f"sum{i}"], [f"blk{i}"]),
                ]
                cur, cin = f"blk{i}", cout
        fc = rng.normal(0, 0.1, (64, num_classes)).astype(np.float32)
        inits += [
            numpy_helper.from_array(fc, "fc"),
            numpy_helper.from_array(np.zeros(num_classes, np.float32), "fcb"),
        ]
        nodes += [
            helper.make_node("GlobalAveragePool", [cur], ["gap"]),  # [N, 64, 1, 1]
            helper.make_node("Flatten", ["gap"], ["flat"]),  # [N, 64]
            helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"]),  # [N, C]
        ]
    else:
        raise ValueError(f"unknown test model kind {kind!r}; use tiny, slow or conv")
    graph = helper.make_graph(
        nodes,
        f"rescom_test_{kind}",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", crop, crop, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", num_classes])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="rescom-tests"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def metadata(
    name: str,
    version: int,
    onnx_bytes: bytes,
    *,
    num_classes: int = NUM_CLASSES,
    crop: int = CROP,
    class_counts: Sequence[int] | None = None,
    temperature: float | None = TEMPERATURE,
    max_batch_size: int = 64,
) -> dict[str, Any]:
    """``rescom.json`` content for a test model, following docs/architecture.md."""
    counts = list(class_counts) if class_counts is not None else CLASS_COUNTS[:num_classes]
    return {
        "format": "rescom-model/1",
        "name": name,
        "version": version,
        "inputs": [{"name": "images", "datatype": "UINT8", "shape": [-1, crop, crop, 3]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, num_classes]}],
        "max_batch_size": max_batch_size,
        "class_names": [str(i) for i in range(num_classes)],
        "class_counts": counts,
        "preprocess": {
            "resize": crop,
            "crop": crop,
            "interpolation": "bilinear",
            "color": "RGB",
            "layout": "NHWC",
            "dtype": "uint8",
            "mean": list(MEAN),
            "std": list(STD),
        },
        "calibration": {"temperature": temperature, "prior": "uniform"},
        "architecture": {"arch": "test", "arch_kwargs": {}, "feat_dim": 3, "num_classes": num_classes},
        "method": "rescom",
        "dataset": "synthetic",
        "metrics": {"acc": 50.0, "many": 60.0, "medium": 50.0, "few": 40.0},
        "onnx": {
            "file": "model.onnx",
            "opset": 17,
            "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
            "fp16": False,
        },
        "rescom_version": "0.1.0",
        "export_command": "rescom_dev/onnx_models.py",
        "created_utc": "2026-11-28T00:00:00Z",
    }


def write_version(
    repo: Path,
    name: str = "tiny",
    version: int = 1,
    kind: str = "tiny",
    *,
    seed: int = 0,
    num_classes: int = NUM_CLASSES,
    temperature: float | None = TEMPERATURE,
    broken: str | None = None,
    **build_kwargs: Any,
) -> Path:
    """Write ``repo/name/version/{model.onnx, rescom.json}`` plus ``config.pbtxt`` and ``labels.txt``.

    Args:
        broken: ``None`` for a good model; ``"onnx"`` writes garbage bytes as the graph (and no hash);
            ``"shape"`` declares a 64x64 input that the graph does not have.
    """
    vdir = repo / name / str(version)
    vdir.mkdir(parents=True, exist_ok=True)
    data = build_model(kind, num_classes=num_classes, seed=seed, **build_kwargs).SerializeToString()
    meta = metadata(name, version, data, num_classes=num_classes, temperature=temperature)
    if broken == "onnx":
        data = b"this is not an onnx file"
        meta["onnx"]["sha256"] = None
    elif broken == "shape":
        meta["inputs"][0]["shape"] = [-1, 64, 64, 3]
        meta["preprocess"]["resize"] = meta["preprocess"]["crop"] = 64
    elif broken is not None:
        raise ValueError(f"unknown breakage {broken!r}")
    (vdir / "model.onnx").write_bytes(data)
    (vdir / METADATA_FILE).write_text(json.dumps(meta, indent=2))
    config = (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 64\n'
        f'input [ {{ name: "images" data_type: TYPE_UINT8 dims: [ {CROP}, {CROP}, 3 ] }} ]\n'
        f'output [ {{ name: "logits" data_type: TYPE_FP32 dims: [ {num_classes} ] label_filename: "labels.txt" }} ]\n'
        "dynamic_batching { max_queue_delay_microseconds: 2000 }\n"
    )
    (repo / name / "config.pbtxt").write_text(config)
    (repo / name / "labels.txt").write_text("\n".join(str(i) for i in range(num_classes)) + "\n")
    return vdir
