"""The KServe v2 gRPC messages (and Triton's extension messages), built from vendored descriptor sets.

The classes live in private descriptor pools.

``service/protocols/grpc_predict_v2.desc`` is ``protoc --descriptor_set_out`` of the vendored
``grpc_predict_v2.proto`` (``make grpc-descriptors`` regenerates it; ``tests/test_grpc.py`` checks that it matches
the ``.proto``). Building the classes at import time from the descriptor instead of shipping ``*_pb2.py``:

- needs no generated Python code, so there is no gencode/runtime version pairing to keep with the ``protobuf``
  that the environment installs;
- uses its own :class:`~google.protobuf.descriptor_pool.DescriptorPool`, so a process may also import
  ``tritonclient.grpc`` or KServe's client (which define the same ``inference.*`` names in other files).

``triton_grpc_service.desc`` holds Triton's ``grpc_service.proto`` + ``model_config.proto`` (BSD-3-Clause;
``scripts/triton_descriptors.py``), in a second pool (it defines the same service name): only the messages of
Triton's extension RPCs are taken from it (:data:`TRITON_METHODS`).
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

__all__ = [
    "PROTO_FILE",
    "DESCRIPTOR_FILE",
    "SERVICE",
    "message_class",
    "TRITON_DESCRIPTOR_FILE",
    "TRITON_METHODS",
    "triton_message_class",
]

PROTOCOLS = Path(__file__).resolve().parent / "protocols"
PROTO_FILE = PROTOCOLS / "grpc_predict_v2.proto"
DESCRIPTOR_FILE = PROTOCOLS / "grpc_predict_v2.desc"
TRITON_DESCRIPTOR_FILE = PROTOCOLS / "triton_grpc_service.desc"
TRITON_EXTENSION_RPCS = (
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
)


def _load(path: Path) -> tuple[dict[str, type[Message]], ServiceDescriptor]:
    files = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for proto in files.file:
        pool.Add(proto)
    classes = message_factory.GetMessageClassesForFiles([f.name for f in files.file], pool)
    return dict(classes), pool.FindServiceByName("inference.GRPCInferenceService")


_CLASSES, SERVICE = _load(DESCRIPTOR_FILE)
_TRITON_CLASSES, _TRITON_SERVICE = _load(TRITON_DESCRIPTOR_FILE)
TRITON_METHODS = [_TRITON_SERVICE.methods_by_name[name] for name in TRITON_EXTENSION_RPCS]


def message_class(name: str) -> type[Message]:
    """The message class of ``inference.<name>`` (nested names with dots, e.g. ``ModelInferRequest``)."""
    return _CLASSES[f"inference.{name}"]


def triton_message_class(name: str) -> type[Message]:
    """A message class of Triton's ``grpc_service.proto`` / ``model_config.proto`` (``inference.<name>``)."""
    return _TRITON_CLASSES[f"inference.{name}"]
