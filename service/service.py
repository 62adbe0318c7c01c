"""The BentoML service: thin glue that builds each worker's serving parts and mounts the HTTP edge.

bentoml serve            # from the repo root (bentofile.yaml names service.service:ImageClassifier)

Besides the mounted HTTP routes, classify, classify_batch and model_info are BentoML API methods (at
``/api/...``), so ``bentoml.SyncHTTPClient(url).classify(image=Path("shirt.png"))`` works; they share the
worker's in-flight limit, admission rule and batcher with the routes, and answer errors in the same shape.
"""

# ruff: noqa: E402 - the environment is configured before BentoML is imported
from __future__ import annotations

import gc
import logging
from collections.abc import Awaitable
from pathlib import Path
from typing import Annotated

from training._env import configure_environment

configure_environment()

import bentoml
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.types import ASGIApp

from service import tally, telemetry
from service.edge import connections, listening, route_labels, timeouts, traffic
from service.edge.app import LEVEL_MAX, TOP_K_MAX, create_app
from service.edge.classify import InFlight, classify_many, classify_one
from service.edge.classify import model_info as describe_model
from service.edge.errors import error_body, http_status
from service.edge.lane import ClassifyLane, FrontLane
from service.edge.limits import BodyGuard, BodyLimits
from service.edge.schemas import ClassifyBatchResponse, ClassifyResponse, ModelInfo
from service.errors import ServiceError
from service.inference.answers import ClassifyQuery
from service.protocols.grpc_server import GrpcServer
from service.retraining.mirror import MlflowMirror
from service.retraining.operations import Operations
from service.retraining.registry import Registry
from service.serving import Worker, build_worker
from service.settings import get_settings

log = logging.getLogger(__name__)
# BentoML's server logging passes other packages' records from WARNING up; what the service chose and did (its
# workers and threads, each model's runtime, swaps, rollouts, jobs) is said at INFO. Refused connections stay
# quiet: a hostile client would otherwise write a line per attempt.
logging.getLogger("service").setLevel(logging.INFO)
logging.getLogger("training").setLevel(logging.INFO)
logging.getLogger("service.edge.connections").setLevel(logging.WARNING)
settings = get_settings()
CAPACITY = settings.capacity()
log.info("serving with %s", CAPACITY.describe())
timeouts.install()
traffic.install()
tally.install()
if settings.reuse_port:
    listening.install()
IN_FLIGHT = InFlight(settings.max_concurrency)  # one per worker process: the routes and the API methods share it
REQUEST_TIMEOUT = 60  # seconds for a response to start (BentoML's traffic timeout: 504 after it)
BODY_LIMITS = BodyLimits(settings.max_upload_bytes, settings.max_request_bytes, settings.body_timeout_seconds)
TopK = Annotated[int | None, Field(None, ge=1, le=TOP_K_MAX, description="How many classes to return (default 5).")]
Level = Annotated[int | None, Field(None, ge=1, le=LEVEL_MAX, description="Hierarchical models: the tree level.")]


def _worker() -> Worker:
    return bentoml.get_current_service().worker


def _ops() -> Operations:
    return bentoml.get_current_service().ops


app = create_app(settings, lambda: _worker().path, _ops, IN_FLIGHT)
route_labels.install(route_labels.route_labeller(app.routes, fixed=("/livez", "/readyz", "/metrics")))


def _classify_lane(app: ASGIApp) -> ClassifyLane:
    return ClassifyLane(app, get_path=lambda: _worker().path, in_flight=IN_FLIGHT, upload=settings.max_upload_bytes)


def _front(app: ASGIApp) -> FrontLane:
    """POST /classify answered ahead of uvicorn's and BentoML's middlewares (see service.edge.lane)."""
    guarded = BodyGuard(_classify_lane(app), BODY_LIMITS, arriving=lambda: _worker().path.arriving())
    return FrontLane(app, guarded, series=lambda: traffic.series("/classify"), timeout=REQUEST_TIMEOUT)


# The front lane skips the access log, tracing and CORS middlewares: with any of them on, it stays out of the way.
connections.install(
    connections.ConnectionLimits(settings.header_timeout_seconds, settings.max_header_bytes, settings.max_connections),
    front=None if settings.access_log or settings.trace_requests or settings.cors_origins else _front,
)


async def _answer(route: str, call: Awaitable[BaseModel]) -> JSONResponse:
    """An API method's answer (fields without a value left out, as BentoML's clients expect), or its error in
    the HTTP routes' status and ``{"error", "reason"}`` body."""
    try:
        return JSONResponse((await call).model_dump(mode="json", exclude_none=True))
    except ServiceError as exc:
        telemetry.REJECTED.labels(route, exc.reason).inc()
        return JSONResponse(error_body(exc), status_code=int(http_status(exc)))


@bentoml.asgi_app(app, path="/")
@bentoml.service(
    name="imgclf",
    workers=CAPACITY.workers,
    traffic={"timeout": REQUEST_TIMEOUT},
    endpoints={"livez": "/livez", "readyz": "/readyz"},
    logging={"access": {"enabled": settings.access_log, "skip_paths": ["/livez", "/readyz", "/metrics"]}},
    tracing={} if settings.trace_requests else {"excluded_urls": ".*"},
    http={"cors": {"enabled": bool(settings.cors_origins), "access_control_allow_origins": settings.cors_origins}},
)
class ImageClassifier:
    """Serves the registry's champion; /readyz turns ready once it is loaded and warmed up.

    Every worker follows the registry and swaps in a new champion without a restart.
    """

    def __init__(self) -> None:
        registry = Registry(settings.database_url, settings.database_timeout_seconds)
        self.worker = build_worker(settings, registry)
        rollout_status = self.worker.rollout.status if self.worker.rollout else (lambda: None)
        self.ops = Operations(settings, registry, self.worker.follower, refresh=self.worker.periodic.wake,
                              rollout_status=rollout_status)  # fmt: skip
        self.worker.follower.load()
        # Start-up leaves ~580k long-lived objects (torch, BentoML, the runtimes, the model); a full garbage
        # collection walks them all in ~280 ms holding the GIL, and under load one comes every few seconds:
        # every request in the worker stalls (p99 ~300 ms even at concurrency 1). Frozen, they are not walked.
        gc.collect()
        gc.freeze()
        self.worker.periodic.tasks += [self.ops.tick, telemetry.observe_process]
        if settings.mlflow_tracking_uri:  # the loop's decisions, mirrored where the team looks
            mirror = MlflowMirror(settings.mlflow_tracking_uri, registry, settings.model_name)
            self.worker.periodic.tasks.append(mirror.flush)
        self.worker.periodic.start()
        self.grpc = GrpcServer(self.worker.path, settings) if settings.grpc_port else None

    @bentoml.api(route="/api/classify")
    async def classify(self, image: Path, top_k: TopK = None, level: Level = None) -> ClassifyResponse:
        """Classify one image (the same answer as POST /classify)."""
        path = self.worker.path
        query = ClassifyQuery(top_k, level)
        return await _answer("/api/classify", IN_FLIGHT.run(
            path, lambda: classify_one(path, image.read_bytes(), query, "/api/classify")))  # fmt: skip

    @bentoml.api(route="/api/classify_batch")
    async def classify_batch(
        self, images: list[Path], top_k: TopK = None, level: Level = None
    ) -> ClassifyBatchResponse:
        """Classify several images, one result per image in order (the same answer as POST /classify_batch)."""
        path = self.worker.path
        query = ClassifyQuery(top_k, level)

        async def run() -> ClassifyBatchResponse:
            path.admit(len(images))  # before any file is read: the one admission rule
            return await classify_many(path, [p.read_bytes() for p in images], query, "/api/classify_batch")

        return await _answer("/api/classify_batch", IN_FLIGHT.run(path, run))

    @bentoml.api(route="/api/model_info")
    async def model_info(self) -> ModelInfo:
        """The model being served (the same answer as GET /model)."""

        async def info() -> ModelInfo:
            return describe_model(self.worker.path.require(), CAPACITY)

        return await _answer("/api/model_info", info())

    @bentoml.on_startup
    async def start_grpc(self) -> None:
        """Each worker serves gRPC on the shared port, on its own event loop (same batcher as HTTP)."""
        if self.grpc is not None:
            await self.grpc.start()

    def __is_ready__(self) -> bool:
        return self.worker.path.ready

    async def __shutdown__(self) -> None:
        if self.grpc is not None:
            await self.grpc.stop()
        await self.worker.close()


# Every route's body is read under its size and time limits before anything else sees it (the API methods too).
ImageClassifier.add_asgi_middleware(BodyGuard, limits=BODY_LIMITS, arriving=lambda: _worker().path.arriving())
# Then POST /classify is answered without the router and FastAPI's per-request machinery (service.edge.lane): the
# requests the front lane did not take.
ImageClassifier.add_asgi_middleware(_classify_lane)
