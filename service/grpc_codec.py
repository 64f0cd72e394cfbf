"""KServe v2 gRPC messages <-> the transport-neutral request and outputs of :mod:`service.v2_codec`.

- Inputs: ``raw_input_contents`` (one entry per input, in order) or typed ``contents`` (``UINT8`` pixels in
  ``uint_contents``).
- Parameters: ``InferParameter`` ``bool_param`` / ``int64_param`` / ``string_param`` become plain values, so
  ``prior`` (``"uniform"``, ``"train"``, ``"adaptive"`` or a JSON object as a string), ``temperature``,
  ``timeout`` (µs) and an output's ``classification`` (k) mean what they mean over HTTP.
- Outputs: raw (``raw_output_contents``, as Triton answers) when the request sent raw inputs, typed
  (``fp32_contents`` / ``bytes_contents``) when it sent typed contents.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message

from service.errors import BadRequest
from service.grpc_messages import message_class
from service.v2_codec import InputTensor, OutputTensor, V2Request

__all__ = ["request_from_proto", "response_to_proto", "uses_raw_inputs"]

# Which InferTensorContents field carries each datatype (the protocol's table).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _parameters(params: Any) -> dict[str, Any]:
    """A ``map<string, InferParameter>`` as a plain dict (an unset parameter is left out)."""
    out = {}
    for key, value in params.items():
        which = value.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(value, which)
    return out


def uses_raw_inputs(msg: Message) -> bool:
    """Whether a ``ModelInferRequest`` carries its inputs in ``raw_input_contents``."""
    return len(msg.raw_input_contents) > 0


def request_from_proto(msg: Message) -> V2Request:
    """A ``ModelInferRequest`` as a :class:`service.v2_codec.V2Request`.

    Raises:
        BadRequest: ``raw_input_contents`` does not have one entry per input.
    """
    raw = list(msg.raw_input_contents)
    if raw and len(raw) != len(msg.inputs):
        raise BadRequest(
            f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} inputs; send one per input, in order"
        )
    inputs = []
    for i, tensor in enumerate(msg.inputs):
        item = InputTensor(tensor.name, tensor.datatype, list(tensor.shape), _parameters(tensor.parameters))
        if raw:
            item.raw = raw[i]
        else:
            field = _CONTENTS_FIELD.get(tensor.datatype)
            item.data = list(getattr(tensor.contents, field)) if field else None
        inputs.append(item)
    outputs = [{"name": o.name, "parameters": _parameters(o.parameters)} for o in msg.outputs] or None
    return V2Request(inputs, outputs, _parameters(msg.parameters), msg.id or None)


def response_to_proto(
    name: str, version: int, request_id: str | None, outputs: list[OutputTensor]
) -> Message:
    """A ``ModelInferResponse``: each output raw when ``OutputTensor.binary`` is set, typed otherwise."""
    response = message_class("ModelInferResponse")(
        model_name=name, model_version=str(version), id=request_id or ""
    )
    for tensor in outputs:
        entry = response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if tensor.binary:
            response.raw_output_contents.append(tensor.raw())
        elif tensor.datatype == "BYTES":
            entry.contents.bytes_contents.extend(s.encode() for s in tensor.values)
        else:
            entry.contents.fp32_contents.extend(tensor.values.ravel().tolist())  # type: ignore[union-attr]
    return response
