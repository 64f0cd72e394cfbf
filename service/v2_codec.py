"""Open Inference Protocol (KServe v2) tensors, the same for every transport.

HTTP (``service/routes/v2.py``: JSON ``data`` or Triton's binary-tensor extension) and gRPC
(``service/grpc_server.py``: ``raw_input_contents`` or typed ``contents``) both turn a request into a
:class:`V2Request` and a result into :class:`OutputTensor` objects; everything between (which input is accepted,
which outputs exist, the ``classification`` extension, the ``timeout`` parameter) is decided here once.

The model's one input is ``images`` ``UINT8 [n, H, W, 3]`` (decoded, resized and centre-cropped by the client);
its outputs are ``logits`` ``FP32 [n, C]`` (raw z) and ``probabilities`` ``FP32 [n, C]`` =
``softmax(z / T + b + log π)``, either of which can be asked for as ``classification: k`` (``BYTES [n, k]``,
``"value:index:label"``, Triton's classification extension).
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import BadRequest, PayloadTooLarge, load_json
from service.registry import ServedModel

__all__ = [
    "OUTPUTS",
    "InputTensor",
    "OutputRequest",
    "V2Request",
    "OutputTensor",
    "images_from",
    "requested_outputs",
    "queue_timeout",
    "output_tensors",
    "serialize_bytes",
    "decompress",
    "split_binary",
    "parse_json_request",
    "json_output",
]

OUTPUTS = ("logits", "probabilities")


@dataclass
class InputTensor:
    """One request input: either typed values (``data``) or raw little-endian bytes (``raw``)."""

    name: Any
    datatype: Any
    shape: Any
    parameters: dict[str, Any] = field(default_factory=dict)
    data: Any = None
    raw: bytes | memoryview | None = None


@dataclass
class OutputRequest:
    """One requested output: its name, binary (raw) encoding, and ``classification`` top-k (0 = the tensor)."""

    name: str
    binary: bool = False
    classification: int = 0


@dataclass
class V2Request:
    """A transport-neutral inference request; ``outputs=None`` means every output with default settings."""

    inputs: list[InputTensor]
    outputs: list[dict[str, Any]] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass
class OutputTensor:
    """One result tensor: ``FP32`` values ``[n, C]`` or ``BYTES`` strings ``[n, k]`` (row-major)."""

    name: str
    datatype: str
    shape: list[int]
    values: np.ndarray | list[str]
    binary: bool

    def raw(self) -> bytes:
        """The tensor as raw bytes (``FP32`` little-endian, ``BYTES`` as 4-byte length + bytes per element)."""
        if self.datatype == "BYTES":
            assert isinstance(self.values, list)
            return serialize_bytes(self.values)
        return np.ascontiguousarray(self.values, dtype="<f4").tobytes()


# ------------------------------------------------------------------------------------------------- inputs


def images_from(request: V2Request, served: ServedModel, max_images: int) -> np.ndarray:
    """The request's ``images`` tensor as uint8 ``[n, H, W, 3]``.

    Raises:
        BadRequest: wrong input name, datatype, shape, or data that does not fill the shape.
        PayloadTooLarge: more than ``max_images`` images.
    """
    spec = served.spec
    expected = f"{spec.input.name!r} UINT8 [n, {', '.join(map(str, spec.image_shape))}]"
    if len(request.inputs) != 1:
        raise BadRequest(f"model {served.name!r} takes exactly one input, {expected}")
    inp = request.inputs[0]
    if inp.name != spec.input.name:
        raise BadRequest(f"unknown input {inp.name!r}; model {served.name!r} takes {expected}")
    if inp.datatype != "UINT8":
        raise BadRequest(
            f"input {spec.input.name!r} must be UINT8 (preprocessed pixels), got {inp.datatype!r}"
        )
    shape = inp.shape
    if (
        not isinstance(shape, list)
        or len(shape) != 4
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        or tuple(shape[1:]) != spec.image_shape
        or shape[0] < 1
    ):
        raise BadRequest(
            f"input shape {shape} does not match {expected} with n >= 1 (images are decoded, resized "
            f"to {spec.resize} and centre-cropped to {spec.crop} by the client)"
        )
    if shape[0] > max_images:
        raise PayloadTooLarge(f"{shape[0]} images in one request; the limit is {max_images}")
    count = math.prod(shape)
    if inp.raw is not None:
        if len(inp.raw) != count:
            raise BadRequest(
                f"binary_data_size / raw contents is {len(inp.raw)} bytes; a UINT8 tensor of shape {shape} "
                f"needs {count} bytes"
            )
        return np.frombuffer(inp.raw, dtype=np.uint8).reshape(shape)  # [n, H, W, 3]
    if inp.data is None:
        raise BadRequest(
            f"input {spec.input.name!r} has neither 'data' nor parameters.binary_data_size (gRPC: neither "
            "contents nor raw_input_contents)"
        )
    try:
        arr = np.asarray(inp.data)
    except (ValueError, TypeError):
        raise BadRequest("input data must be a (flat or nested) list of integers") from None
    if arr.size != count:
        raise BadRequest(f"input data has {arr.size} elements; shape {shape} needs {count}")
    if arr.dtype.kind not in "iu" or (arr.size and (arr.min() < 0 or arr.max() > 255)):
        raise BadRequest("UINT8 input data must be integers in 0..255")
    return arr.astype(np.uint8).reshape(shape)  # [n, H, W, 3]


def requested_outputs(request: V2Request, default_binary: bool) -> list[OutputRequest]:
    """The outputs to return, each with its encoding and ``classification`` k.

    Raises:
        BadRequest: an unknown output, or a malformed ``classification``.
    """
    if request.outputs is None:
        return [OutputRequest(name, default_binary) for name in OUTPUTS]
    if not request.outputs:
        raise BadRequest('outputs must be a non-empty list of {"name": ...} objects')
    wanted = []
    for out in request.outputs:
        if not isinstance(out, dict) or out.get("name") not in OUTPUTS:
            got = out.get("name") if isinstance(out, dict) else out
            raise BadRequest(f"unknown output {got!r}; outputs: {', '.join(OUTPUTS)}")
        p = out.get("parameters") or {}
        if not isinstance(p, dict):
            raise BadRequest(
                f"parameters of output {out['name']!r} must be an object, got {type(p).__name__}"
            )
        k = p.get("classification", 0)
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise BadRequest(f"classification must be a non-negative integer, got {k!r}")
        wanted.append(OutputRequest(out["name"], bool(p.get("binary_data", default_binary)), k))
    return wanted


def queue_timeout(params: dict[str, Any], default_s: float) -> float:
    """Queue deadline in seconds: ``parameters.timeout`` (µs) may shorten ``default_s``, never lengthen it.

    Raises:
        BadRequest: ``timeout`` is not a non-negative integer.
    """
    if "timeout" not in params:
        return default_s
    us = params["timeout"]
    if isinstance(us, bool) or not isinstance(us, int) or us < 0:
        raise BadRequest(f"parameters.timeout must be a non-negative integer (microseconds), got {us!r}")
    return us / 1e6 if 0 < us < default_s * 1e6 else default_s


# ------------------------------------------------------------------------------------------------- outputs


def output_tensors(
    wanted: list[OutputRequest], tensors: dict[str, np.ndarray], class_names: tuple[str, ...] | list[str]
) -> list[OutputTensor]:
    """Encode ``logits`` / ``probabilities`` (each ``[n, C]``) as requested (tensor or classification top-k)."""
    result = []
    for want in wanted:
        tensor = tensors[want.name]  # [n, C]
        n, c = tensor.shape
        if not want.classification:
            result.append(OutputTensor(want.name, "FP32", [n, c], tensor, want.binary))
            continue
        k = min(want.classification, c)
        order = np.argsort(-tensor, axis=1, kind="stable")[:, :k]  # [n, k]
        values = np.take_along_axis(tensor, order, axis=1)  # [n, k]
        strings = [
            f"{v:f}:{i}:{class_names[i]}"
            for row_v, row_i in zip(values.tolist(), order.tolist(), strict=True)
            for v, i in zip(row_v, row_i, strict=True)
        ]
        result.append(OutputTensor(want.name, "BYTES", [n, k], strings, want.binary))
    return result


def serialize_bytes(strings: list[str]) -> bytes:
    """``BYTES`` elements as the protocol's raw form: each a little-endian uint32 length, then the bytes."""
    return b"".join(struct.pack("<I", len(b)) + b for b in (s.encode() for s in strings))


# ------------------------------------------------------------------------------------------------- HTTP JSON


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding: gzip|deflate`` (bounded by ``limit`` bytes).

    Raises:
        BadRequest: another encoding, or corrupt data.
        PayloadTooLarge: the decompressed body exceeds ``limit``.
    """
    if not encoding or encoding.strip().lower() == "identity":
        return body
    enc = encoding.strip().lower()
    if enc not in ("gzip", "deflate"):
        raise BadRequest(f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none")
    d = zlib.decompressobj(wbits=31 if enc == "gzip" else 15)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as err:
        raise BadRequest(f"body is not valid {enc} data: {err}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed body exceeds the limit of {limit} bytes (RESCOM_MAX_BODY_BYTES)")
    return out


def split_binary(body: bytes, header_length: str | None, served: ServedModel) -> tuple[bytes, memoryview]:
    """Split a body into its JSON header and the binary data after it (``Inference-Header-Content-Length``).

    A header length of 0 is Triton's raw binary request: the whole body is the one input, batch 1.

    Raises:
        BadRequest: the header length is not an integer or exceeds the body.
    """
    if header_length is None:
        return body, memoryview(b"")
    try:
        n = int(header_length)
    except ValueError:
        raise BadRequest(
            f"Inference-Header-Content-Length must be an integer, got {header_length!r}"
        ) from None
    if not 0 <= n <= len(body):
        raise BadRequest(f"Inference-Header-Content-Length is {n} but the body has {len(body)} bytes")
    if n == 0:
        header = {
            "inputs": [
                {
                    "name": served.spec.input.name,
                    "shape": [1, *served.spec.image_shape],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": len(body)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
        return json.dumps(header).encode(), memoryview(body)
    return body[:n], memoryview(body)[n:]


def parse_json_request(header: bytes, binary: memoryview) -> V2Request:
    """A JSON inference request (plus the binary data of Triton's binary-tensor extension) as a :class:`V2Request`.

    Raises:
        BadRequest: invalid JSON, wrong types, or binary sizes that do not add up.
    """
    if not header:
        raise BadRequest("empty request body; send a KServe v2 inference request")
    req = load_json(header, "inference request header")
    if not isinstance(req, dict):
        raise BadRequest("inference request must be a JSON object")
    params = req.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest("parameters must be an object")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
        raise BadRequest("inputs must be a list of tensor objects")
    outputs = req.get("outputs")
    if outputs is not None and not isinstance(outputs, list):
        raise BadRequest('outputs must be a non-empty list of {"name": ...} objects')
    if len(binary) and not any(
        isinstance(i.get("parameters"), dict) and "binary_data_size" in i["parameters"] for i in inputs
    ):
        raise BadRequest(
            f"the body carries {len(binary)} bytes of binary data but no input has binary_data_size"
        )
    tensors, offset = [], 0
    for inp in inputs:
        tensor, offset = _json_input(inp, binary, offset)
        tensors.append(tensor)
    if offset != len(binary):
        raise BadRequest(
            f"the body carries {len(binary)} bytes of binary data; the inputs' binary_data_size add up to {offset}"
        )
    return V2Request(tensors, outputs, params, req.get("id"))


def _json_input(inp: dict[str, Any], binary: memoryview, offset: int) -> tuple[InputTensor, int]:
    params = inp.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest(f"input parameters must be an object, got {type(params).__name__}")
    tensor = InputTensor(inp.get("name"), inp.get("datatype"), inp.get("shape"), params, inp.get("data"))
    if "binary_data_size" not in params:
        return tensor, offset
    size = params["binary_data_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BadRequest(f"binary_data_size must be a non-negative integer (bytes), got {size!r}")
    if offset + size > len(binary):
        raise BadRequest(f"the body carries {len(binary)} bytes of binary data; binary_data_size says {size}")
    tensor.raw = binary[offset : offset + size]
    return tensor, offset + size


def json_output(tensor: OutputTensor) -> tuple[dict[str, Any], bytes | None]:
    """One output as its JSON entry, plus its raw bytes when it is sent as binary data."""
    entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
    if not tensor.binary:
        values = tensor.values
        entry["data"] = values if isinstance(values, list) else values.ravel().tolist()
        return entry, None
    blob = tensor.raw()
    entry["parameters"] = {"binary_data_size": len(blob)}
    return entry, blob
