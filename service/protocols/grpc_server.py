"""gRPC: ``inference.GRPCInferenceService`` (KServe v2 / Triton) and ``grpc.health.v1``, in every worker.

BentoML's new-style services cannot serve gRPC, so each worker starts a ``grpc.aio`` server on its
own event loop at start-up (grpcio sets SO_REUSEPORT: the workers share the port) and calls the same
:class:`~service.serving.ClassifyPath` as HTTP, so gRPC and HTTP images land in the same batches and
follow the same hot reloads. The generated stubs are those shipped by ``tritonclient``, the protocol's
reference client, so any Triton/KServe client talks to it unchanged.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from service import errors, telemetry
from service.errors import NotReady, ServiceError
from service.protocols import oip, wire
from service.serving import ClassifyPath
from service.settings import Settings

log = logging.getLogger(__name__)
SERVICE_NAME = "inference.GRPCInferenceService"

_CODES: dict[type[ServiceError], grpc.StatusCode] = {
    errors.PayloadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.NotReady: grpc.StatusCode.UNAVAILABLE,
    errors.RegistryUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
}


def grpc_code(err: ServiceError) -> grpc.StatusCode:
    """4xx input problems are INVALID_ARGUMENT; size limits RESOURCE_EXHAUSTED; not ready UNAVAILABLE."""
    return next((_CODES[c] for c in type(err).__mro__ if c in _CODES), grpc.StatusCode.INVALID_ARGUMENT)


def observed(fn: Callable) -> Callable:
    """Count and time each RPC by method and status code; turn service errors into gRPC statuses."""
    method = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: InferenceServicer, request, context: grpc.aio.ServicerContext):
        start, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            return await fn(self, request, context)
        except ServiceError as err:
            code = grpc_code(err)
            telemetry.REJECTED.labels("grpc:" + method, err.reason).inc()
            await context.abort(code, err.message)
        except Exception:
            code = context.code() or grpc.StatusCode.UNKNOWN
            if code != grpc.StatusCode.UNKNOWN:
                raise  # an abort already chose its status
            log.exception("gRPC %s failed", method)
            code = grpc.StatusCode.INTERNAL  # never Python's exception text to the client
            await context.abort(code, "internal error; the server log has the details")
        finally:
            telemetry.GRPC_REQUESTS.labels(method, code.name).inc()
            telemetry.GRPC_SECONDS.labels(method).observe(time.perf_counter() - start)

    return wrapper


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, path: ClassifyPath):
        self.path = path

    @observed
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    @observed
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.path.ready)

    @observed
    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(**oip.server_metadata())

    @observed
    async def ModelReady(self, request, context):
        try:
            oip.check_model(self.path, request.name, request.version)
        except ServiceError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @observed
    async def ModelMetadata(self, request, context):
        clf = oip.check_model(self.path, request.name, request.version)
        meta = oip.model_metadata(clf, request.name)
        tensors = {key: [pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta[key]]
                   for key in ("inputs", "outputs")}  # fmt: skip
        return pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                                        **tensors)  # fmt: skip

    @observed
    async def RepositoryIndex(self, request, context):
        """The served model with its version and state (clients that list models before inferring)."""
        models = oip.repository_index(self.path, request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**m) for m in models])

    @observed
    async def ModelConfig(self, request, context):
        """Triton's model configuration; its ``parameters`` carry the class names (JSON) for gRPC clients."""
        import json

        clf = oip.check_model(self.path, request.name, request.version)
        c, h, w = clf.input_shape
        config = mc.ModelConfig(
            name=request.name, platform=f"imgclf_{clf.runtime.name}", max_batch_size=0,
            input=[mc.ModelInput(name=oip.IMAGE_INPUT, data_type=mc.TYPE_STRING, dims=[-1]),
                   mc.ModelInput(name=oip.TENSOR_INPUT, data_type=mc.TYPE_FP32, dims=[-1, c, h, w])],
            output=[mc.ModelOutput(name=o["name"], data_type=mc.TYPE_BOOL if o["datatype"] == "BOOL" else
                                   mc.TYPE_FP32, dims=o["shape"]) for o in oip.outputs_of(clf)],
            parameters={"classes": mc.ModelParameter(string_value=json.dumps(clf.classes)),
                        "tag": mc.ModelParameter(string_value=clf.tag),
                        **{k: mc.ModelParameter(string_value=json.dumps(v))
                           for k, v in oip.task_parameters(clf).items()}},
        )  # fmt: skip
        return pb.ModelConfigResponse(config=config)

    @observed
    async def ModelInfer(self, request, context):
        if not self.path.ready:
            raise NotReady()
        with self.path.arriving():
            resp = await oip.infer(self.path, from_proto(request, self.path.admit))
        return to_proto(resp)


def from_proto(request: pb.ModelInferRequest, admit: Callable[[int], None] | None = None) -> oip.InferRequest:
    """The protocol-neutral request. ``admit(count)`` is asked about a tensor's image count before its numbers
    are converted (15 million floats in ``fp32_contents`` take seconds to convert)."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise oip.InvalidInput("raw_input_contents must hold one entry per input", reason="bad_tensor")
    inputs = []
    for i, t in enumerate(request.inputs):
        shape = wire.check_shape(list(t.shape))
        if admit is not None and t.datatype != "BYTES" and shape:
            admit(shape[0])
        if t.datatype == "BYTES":
            data = wire.decode_bytes(raw[i]) if raw else list(t.contents.bytes_contents)
        elif raw:
            data = wire.decode_numeric(raw[i], t.datatype, shape)
        else:
            values = np.asarray(t.contents.fp32_contents, dtype=np.float32)
            data = wire.decode_numeric(values.tobytes(), t.datatype, shape)
        inputs.append(oip.Tensor(t.name, t.datatype, shape, data))
    outputs = [oip.RequestedOutput(o.name, int(o.parameters["classification"].int64_param)
                                   if "classification" in o.parameters else 0) for o in request.outputs]  # fmt: skip
    return oip.InferRequest(request.model_name, request.model_version, request.id, inputs, outputs)


def to_proto(resp: oip.InferResponse) -> pb.ModelInferResponse:
    out = pb.ModelInferResponse(model_name=resp.model_name, model_version=resp.model_version, id=resp.id)
    for t in resp.outputs:
        out.outputs.append(pb.ModelInferResponse.InferOutputTensor(name=t.name, datatype=t.datatype, shape=t.shape))
        out.raw_output_contents.append(wire.tensor_bytes(t))
    return out


class GrpcServer:
    """One per worker: the inference service and the health service on ``settings.grpc_port``."""

    def __init__(self, path: ClassifyPath, settings: Settings):
        self.path, self.settings = path, settings
        self.health = HealthServicer()
        self.server: grpc.aio.Server | None = None

    async def start(self) -> None:
        limit = self.settings.grpc_max_message_bytes
        self.server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
                     ("grpc.so_reuseport", 1)],
            maximum_concurrent_rpcs=self.settings.max_concurrency,
        )  # fmt: skip
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(self.path), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        address = f"{self.settings.grpc_host}:{self.settings.grpc_port}"
        self.server.add_insecure_port(address)
        await self.server.start()
        status = (
            health_pb2.HealthCheckResponse.SERVING if self.path.ready else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)
        log.info("gRPC (Open Inference Protocol) listening on %s", address)

    async def stop(self, grace: float = 5.0) -> None:
        if self.server is not None:
            await self.health.enter_graceful_shutdown()
            await self.server.stop(grace)
            self.server = None
