"""KServe v2 over gRPC (``inference.GRPCInferenceService``), off unless ``RESCOM_GRPC_PORT`` is set.

The six RPCs of ``grpc_predict_v2.proto``, plus Triton's ``ModelConfig``, ``ModelStatistics``,
``RepositoryIndex`` and ``RepositoryModelLoad`` / ``Unload`` (``tritonclient.grpc``'s ``get_model_config``,
``get_inference_statistics``, ``get_model_repository_index``, ``load_model`` / ``unload_model``), answered from
the same shared code as their HTTP routes. Other Triton RPCs (streaming, shared memory, trace and log settings)
answer ``UNIMPLEMENTED``.

It runs in the HTTP app's event loop (started and stopped by the app's lifespan) and shares everything with
the HTTP service: the registry, batchers and calibration (:mod:`service.v2_protocol`), the API key, the limits
(``max_body_bytes`` as the largest message, ``max_images_per_request``, the queue and its deadline), the metrics
(``rescom_requests_total{method="GRPC", route="/inference.GRPCInferenceService/<Rpc>", status=<code>}``) and the
drain (``ServerReady`` is false while draining; on shutdown the server stops taking new calls and lets the
running ones finish for at most ``drain_timeout_s``).

Authentication: with ``RESCOM_API_KEY`` set, every call except ``ServerLive`` and ``ServerReady`` needs the
metadata ``authorization: Bearer <key>`` (what ``tritonclient.grpc``'s ``headers=`` and KServe's
``InferenceGRPCClient`` ``headers=`` send). Errors map to gRPC status codes: 400/413/422 ->
``INVALID_ARGUMENT`` / ``RESOURCE_EXHAUSTED``, 401 -> ``UNAUTHENTICATED``, 404 -> ``NOT_FOUND``, 503 ->
``UNAVAILABLE``, 504 -> ``DEADLINE_EXCEEDED``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from service import v2_protocol
from service.auth import verify_bearer
from service.errors import ServiceError, Unauthorized
from service.grpc_codec import request_from_proto, response_to_proto, uses_raw_inputs
from service.grpc_messages import SERVICE, TRITON_METHODS, message_class, triton_message_class
from service.state import ServiceState
from service.triton_repository import check_model_control, repository_index
from service.triton_stats import model_statistics

__all__ = ["V2Servicer", "start_grpc_server", "stop_grpc_server"]

log = logging.getLogger("rescom.service.grpc")

_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
OPEN_METHODS = frozenset({"ServerLive", "ServerReady"})  # like the HTTP health probes


class V2Servicer:
    """The six RPCs of ``grpc_predict_v2.proto``, answered from the shared service state.

    Args:
        state: the service state the HTTP routes use too (registry, settings, metrics).
    """

    def __init__(self, state: ServiceState) -> None:
        self.state = state

    async def ServerLive(self, request: Message, context: grpc.aio.ServicerContext) -> Message:  # noqa: N802
        """Always live while the process answers."""
        return message_class("ServerLiveResponse")(live=True)

    async def ServerReady(self, request: Message, context: grpc.aio.ServicerContext) -> Message:  # noqa: N802
        """Ready once models are loaded and warmed, and not draining (as ``/v2/health/ready``)."""
        return message_class("ServerReadyResponse")(ready=v2_protocol.not_ready_reason(self.state) is None)

    async def ModelReady(self, request: Message, context: grpc.aio.ServicerContext) -> Message:  # noqa: N802
        """``ready`` of one model (version); ``NOT_FOUND`` for an unknown one."""
        reason = v2_protocol.model_ready(self.state, request.name, request.version or None)
        return message_class("ModelReadyResponse")(ready=reason is None)

    async def ServerMetadata(self, request: Message, context: grpc.aio.ServicerContext) -> Message:  # noqa: N802
        """Name, version and extensions."""
        return json_format.ParseDict(v2_protocol.server_metadata(), message_class("ServerMetadataResponse")())

    async def ModelMetadata(self, request: Message, context: grpc.aio.ServicerContext) -> Message:  # noqa: N802
        """Inputs and outputs with ``-1`` as the batch axis."""
        meta = v2_protocol.model_metadata(self.state, request.name, request.version or None)
        return json_format.ParseDict(meta, message_class("ModelMetadataResponse")())

    async def ModelInfer(self, request: Message, context: grpc.aio.ServicerContext) -> Message:  # noqa: N802
        """Inference through the shared batcher and calibration (see :mod:`service.grpc_codec`)."""
        with v2_protocol.lease(self.state, request.model_name, request.model_version or None) as served:
            raw = uses_raw_inputs(request)
            v2_request = request_from_proto(request)
            result = await v2_protocol.infer(self.state, served, v2_request, default_binary=raw)
        for tensor in result.outputs:
            tensor.binary = raw  # the protocol: raw for every output or for none
        return response_to_proto(result.served.name, result.served.version, v2_request.id, result.outputs)


class TritonExtensionServicer:
    """Triton's extension RPCs (messages from ``triton_grpc_service.desc``)."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state

    async def ModelConfig(self, request: Message, context: grpc.aio.ServicerContext) -> Message:  # noqa: N802
        """The model as Triton's ``ModelConfig`` (the same as ``GET /v2/models/NAME/config``)."""
        config = v2_protocol.model_config(self.state, request.name, request.version or None)
        return json_format.ParseDict({"config": config}, triton_message_class("ModelConfigResponse")())

    async def ModelStatistics(self, request: Message, context: grpc.aio.ServicerContext) -> Message:  # noqa: N802
        """Triton statistics of the served version of each model (or of the one named)."""
        registry = self.state.registry
        served = [registry.get(request.name, request.version or None)] if request.name else registry.served()
        stats = [model_statistics(m, self.state.request_stats, self.state.metrics.registry) for m in served]
        return json_format.ParseDict(
            {"model_stats": stats}, triton_message_class("ModelStatisticsResponse")()
        )

    async def RepositoryIndex(self, request: Message, context: grpc.aio.ServicerContext) -> Message:  # noqa: N802
        """Every version folder of every model with its state (read-only)."""
        entries = await repository_index(self.state, request.ready)
        return json_format.ParseDict({"models": entries}, triton_message_class("RepositoryIndexResponse")())

    async def RepositoryModelLoad(self, request: Message, context: grpc.aio.ServicerContext) -> Message:  # noqa: N802
        """Load (again) a model; only with model control on and an API key."""
        check_model_control(self.state)
        await self.state.registry.load(request.model_name)
        return triton_message_class("RepositoryModelLoadResponse")()

    async def RepositoryModelUnload(self, request: Message, context: grpc.aio.ServicerContext) -> Message:  # noqa: N802
        """Unload a model; only with model control on and an API key."""
        check_model_control(self.state)
        await self.state.registry.unload(request.model_name)
        return triton_message_class("RepositoryModelUnloadResponse")()


def _wrap(state: ServiceState, method: str, handler: Callable[..., Awaitable[Message]]) -> Callable[..., Any]:
    """Auth, error mapping and request metrics around one RPC."""
    route = f"/{SERVICE.full_name}/{method}"
    needs_auth = method not in OPEN_METHODS

    async def call(request: Message, context: grpc.aio.ServicerContext) -> Message:
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            if needs_auth:
                metadata = dict(context.invocation_metadata() or ())
                verify_bearer(metadata.get("authorization"), state.settings.api_key)
            return await handler(request, context)
        except ServiceError as err:
            code = _STATUS.get(err.status_code, grpc.StatusCode.INTERNAL)
            if code is grpc.StatusCode.INTERNAL:
                log.error("%s -> %d: %s", route, err.status_code, err.message)
            message = err.message
            if isinstance(err, Unauthorized):
                message += " (over gRPC: the metadata 'authorization: Bearer <RESCOM_API_KEY>')"
            await context.abort(code, message)
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("unhandled error in %s", route)
            await context.abort(code, "internal error")
        finally:
            state.metrics.requests.labels(route, "GRPC", code.name).inc()
            state.metrics.latency.labels(route, "GRPC").observe(time.perf_counter() - start)

    return call


def _generic_handler(state: ServiceState) -> grpc.GenericRpcHandler:
    handlers = {}
    for servicer, methods, classes in (
        (V2Servicer(state), SERVICE.methods, message_class),
        (TritonExtensionServicer(state), TRITON_METHODS, triton_message_class),
    ):
        for method in methods:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _wrap(state, method.name, getattr(servicer, method.name)),
                request_deserializer=classes(method.input_type.name).FromString,
                response_serializer=classes(method.output_type.name).SerializeToString,
            )
    return grpc.method_handlers_generic_handler(SERVICE.full_name, handlers)


async def start_grpc_server(state: ServiceState) -> tuple[grpc.aio.Server, int]:
    """Start serving on ``Settings.host:Settings.grpc_port`` (port 0: any free port).

    Returns:
        The running server and the port it listens on.
    """
    s = state.settings
    assert s.grpc_port is not None
    limit = s.max_body_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ]
    )
    server.add_generic_rpc_handlers((_generic_handler(state),))
    host = f"[{s.host}]" if ":" in s.host else s.host
    port = server.add_insecure_port(f"{host}:{s.grpc_port}")
    if port == 0:
        raise RuntimeError(f"cannot listen for gRPC on {s.host}:{s.grpc_port} (RESCOM_GRPC_PORT)")
    await server.start()
    log.info("KServe v2 gRPC on %s:%d", s.host, port)
    return server, port


async def stop_grpc_server(server: grpc.aio.Server, grace_s: float) -> None:
    """Refuse new calls and let the running ones finish for at most ``grace_s`` seconds."""
    await server.stop(grace_s)
