"""Write service/protocols/triton_grpc_service.desc: Triton's ``grpc_service.proto`` and ``model_config.proto``
as a FileDescriptorSet, taken from the ``tritonclient`` package the dev environment installs (its generated
modules carry the compiled files; Triton ships them under the BSD-3-Clause license,
service/protocols/LICENSE-Triton-BSD-3-Clause.txt).

    python scripts/triton_descriptors.py [OUT]    # default: the committed file (make grpc-descriptors)

The service reads only the messages of Triton's extension RPCs from it (ModelConfig, ModelStatistics,
RepositoryIndex, RepositoryModelLoad/Unload); the KServe v2 RPCs come from grpc_predict_v2.proto.
"""

from __future__ import annotations

import sys
from pathlib import Path

from google.protobuf import descriptor_pb2
from tritonclient.grpc import model_config_pb2, service_pb2

OUT = Path(__file__).resolve().parents[1] / "service" / "protocols" / "triton_grpc_service.desc"


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    files = descriptor_pb2.FileDescriptorSet()
    for module in (model_config_pb2, service_pb2):  # dependencies first
        files.file.add().MergeFromString(module.DESCRIPTOR.serialized_pb)
    out.write_bytes(files.SerializeToString(deterministic=True))
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
