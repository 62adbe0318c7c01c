"""The BentoML service: thin glue that loads the model in each worker and mounts the HTTP edge.

bentoml serve            # from the repo root (bentofile.yaml names service.service:ImageClassifier)
"""

# ruff: noqa: E402 - the environment is configured before BentoML is imported
from __future__ import annotations

import logging

from training._env import configure_environment

configure_environment()

import bentoml  # noqa: E402

from service import telemetry
from service.edge import (
    connections,
    route_labels,  # noqa: E402
)
from service.edge.app import create_app  # noqa: E402
from service.edge.limits import BodyGuard, BodyLimits  # noqa: E402
from service.protocols.grpc_server import GrpcServer  # noqa: E402
from service.retraining.operations import Operations  # noqa: E402
from service.retraining.registry import Registry  # noqa: E402
from service.serving.state import ServingState  # noqa: E402
from service.settings import get_settings  # noqa: E402

log = logging.getLogger(__name__)
settings = get_settings()
connections.install(connections.ConnectionLimits(settings.header_timeout_seconds, settings.max_header_bytes,
                                                 settings.max_connections))  # fmt: skip
BODY_LIMITS = BodyLimits(settings.max_upload_bytes, settings.max_request_bytes, settings.body_timeout_seconds)


def _state() -> ServingState:
    return bentoml.get_current_service().state


def _ops() -> Operations:
    return bentoml.get_current_service().ops


app = create_app(_state, _ops)
route_labels.install(route_labels.route_labeller(app.routes, fixed=("/livez", "/readyz", "/metrics")))


@bentoml.asgi_app(BodyGuard(app, BODY_LIMITS, arriving=lambda: _state().arriving()), path="/")
@bentoml.service(
    name="imgclf",
    workers=settings.workers,
    traffic={"timeout": 60},
    endpoints={"livez": "/livez", "readyz": "/readyz"},
    logging={"access": {"enabled": settings.access_log, "skip_paths": ["/livez", "/readyz", "/metrics"]}},
    http={"cors": {"enabled": bool(settings.cors_origins), "access_control_allow_origins": settings.cors_origins}},
)
class ImageClassifier:
    """Serves the registry's champion; /readyz turns ready once it is loaded and warmed up.

    Every worker follows the registry and swaps in a new champion without a restart.
    """

    def __init__(self) -> None:
        registry = Registry(settings.database_url, settings.database_timeout_seconds)
        self.state = ServingState(settings, registry)
        self.ops = Operations(settings, registry, self.state)
        self.state.load()
        self.state.tasks += [self.ops.tick, telemetry.observe_process]
        self.state.start_watching()
        self.grpc = GrpcServer(self.state, settings) if settings.grpc_port else None

    @bentoml.on_startup
    async def start_grpc(self) -> None:
        """Each worker serves gRPC on the shared port, on its own event loop (same batcher as HTTP)."""
        if self.grpc is not None:
            await self.grpc.start()

    def __is_ready__(self) -> bool:
        return self.state.ready

    async def __shutdown__(self) -> None:
        if self.grpc is not None:
            await self.grpc.stop()
        await self.state.close()
