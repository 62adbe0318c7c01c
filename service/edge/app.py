"""The HTTP edge: FastAPI routes that parse requests and call the classify path (errors: :mod:`service.edge.errors`).

Mounted into the BentoML service (``service.py``); usable on its own in tests with any classify-path getter.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from service.edge.classify import InFlight, classify_many, classify_one, model_info
from service.edge.errors import install_handlers
from service.edge.parsing import b64decode, many_images, single_image
from service.edge.schemas import (
    ClassifyBatchResponse,
    ClassifyJSONRequest,
    ClassifyResponse,
    ModelInfo,
    error_responses,
)
from service.errors import NotFound
from service.inference.answers import ClassifyQuery
from service.serving import ClassifyPath
from service.settings import Settings
from training.stored import REPORT_DIR, REPORT_PICTURES

ERROR_RESPONSES = error_responses(HTTPStatus.BAD_REQUEST, HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                  HTTPStatus.UNSUPPORTED_MEDIA_TYPE, HTTPStatus.TOO_MANY_REQUESTS,
                                  HTTPStatus.SERVICE_UNAVAILABLE)  # fmt: skip
_BINARY = {"type": "string", "format": "binary"}


TOP_K_MAX, LEVEL_MAX = 1000, 100
_TOP_K = Query(
    None,
    ge=1,
    le=TOP_K_MAX,
    description="How many classes to return (default 5, capped at the class count; "
    "multi-label models return every label above its threshold unless top_k is given).",
)
_LEVEL = Query(
    None,
    ge=1,
    le=LEVEL_MAX,
    description="Hierarchical models: answer with the nodes of this tree level (1 = the top) instead of the leaves.",
)


def _multipart_body(field: str, many: bool) -> dict:
    schema = {"type": "array", "items": _BINARY} if many else _BINARY
    content = {"multipart/form-data": {"schema": {"type": "object", "properties": {field: schema},
                                                  "required": [field]}}}  # fmt: skip
    if not many:
        content["image/*"] = {"schema": _BINARY}
    return {"requestBody": {"required": True, "content": content}}


async def classify_request(request: Request, path: ClassifyPath, in_flight: InFlight, upload: int,
                           top_k: int | None, level: int | None) -> ClassifyResponse:  # fmt: skip
    """``POST /classify``: the image (raw body or form field), under the worker's in-flight limit. The route
    and the lane (:mod:`service.edge.lane`) both answer with it."""

    async def run() -> ClassifyResponse:
        data, form_top_k = await single_image(request, upload)
        query = ClassifyQuery(top_k if top_k is not None else form_top_k, level)
        return await classify_one(path, data, query, "/classify")

    return await in_flight.run(path, run)


def create_app(settings: Settings, get_path: Callable[[], ClassifyPath], get_ops: Callable[[], Any] | None = None,
               in_flight: InFlight | None = None) -> FastAPI:  # fmt: skip
    """The HTTP app; with ``get_ops`` (an :class:`~service.retraining.operations.Operations` getter) the admin
    routes too. ``in_flight`` is the worker's limit, shared with the BentoML API methods."""
    app = FastAPI(
        title="imgclf",
        description="Image classification: single, batch and base64-JSON classify, model info. Images are "
        "JPEG, PNG, BMP, GIF, WebP or TIFF; URLs are never fetched.",
        version="1.0",
    )
    install_handlers(app)
    in_flight = in_flight or InFlight(settings.max_concurrency)
    upload = settings.max_upload_bytes
    capacity = settings.capacity()  # read once: it looks at the CPU affinity and the container's quota

    @app.post("/classify", response_model=ClassifyResponse, responses=ERROR_RESPONSES,
              response_model_exclude_unset=True, openapi_extra=_multipart_body("image", many=False),
              summary="Classify one image")  # fmt: skip
    async def classify(request: Request, top_k: int | None = _TOP_K, level: int | None = _LEVEL) -> ClassifyResponse:
        return await classify_request(request, get_path(), in_flight, upload, top_k, level)

    @app.post("/classify_batch", response_model=ClassifyBatchResponse, responses=ERROR_RESPONSES,
              response_model_exclude_unset=True,
              openapi_extra=_multipart_body("images", many=True),
              summary="Classify several images (multipart field 'images', repeated)")  # fmt: skip
    async def classify_batch(
        request: Request, top_k: int | None = _TOP_K, level: int | None = _LEVEL
    ) -> ClassifyBatchResponse:
        async def run() -> ClassifyBatchResponse:
            images = await many_images(request, upload, path.admission)
            return await classify_many(path, images, ClassifyQuery(top_k, level), "/classify_batch")

        path = get_path()
        return await in_flight.run(path, run)

    @app.post("/classify_json", response_model=ClassifyBatchResponse, responses=ERROR_RESPONSES,
              response_model_exclude_unset=True,
              summary="Classify base64-encoded images sent as JSON")  # fmt: skip
    async def classify_json(body: ClassifyJSONRequest) -> ClassifyBatchResponse:
        async def run() -> ClassifyBatchResponse:
            path.admit(len(body.images))  # before any decoding: the one admission rule
            images = [b64decode(s, i, upload) for i, s in enumerate(body.images)]
            return await classify_many(path, images, ClassifyQuery(body.top_k, body.level), "/classify_json")

        path = get_path()
        return await in_flight.run(path, run)

    @app.get("/model", response_model=ModelInfo, responses=ERROR_RESPONSES, summary="The model being served")
    async def get_model() -> ModelInfo:
        return model_info(get_path().require(), capacity)

    @app.get("/model/report/{picture}", responses=error_responses(HTTPStatus.NOT_FOUND),
             response_class=FileResponse, summary="A picture of the served model's evaluation report")  # fmt: skip
    async def model_report(picture: str) -> FileResponse:
        clf = get_path().require()
        path = clf.stored.path / REPORT_DIR / picture
        if picture not in REPORT_PICTURES or not path.is_file():
            raise NotFound(f"no report picture {picture!r}; available: {', '.join(REPORT_PICTURES)}")
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    ui = Path(__file__).with_name("ui")
    app.mount("/ui/static", StaticFiles(directory=ui), name="ui-static")

    @app.get("/ui", include_in_schema=False)
    async def web_page() -> FileResponse:
        """The web page: try the classifier, read the model card, run retraining (assets shipped, no CDN)."""
        return FileResponse(ui / "index.html", media_type="text/html")

    from service.protocols.v2_http import create_oip_router

    app.include_router(create_oip_router(settings, get_path))
    if get_ops is not None:
        from service.edge.admin import create_admin_router

        app.include_router(create_admin_router(get_ops))
    return app
