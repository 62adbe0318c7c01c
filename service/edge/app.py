"""The HTTP edge: FastAPI routes that parse requests, call :class:`ServingState` and map errors.

Mounted into the BentoML service (``service.py``); usable on its own in tests with any state getter.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import telemetry
from service.edge.parsing import b64decode, many_images, single_image
from service.edge.schemas import (
    BatchItem,
    ClassifyBatchResponse,
    ClassifyJSONRequest,
    ClassifyResponse,
    ModelInfo,
    error_responses,
)
from service.errors import NotFound, Overloaded, ServiceError
from service.inference.answers import ClassifyQuery
from service.inference.classifier import Classifier
from service.serving.state import ClassifyResult, ServingState
from training import store

ERROR_RESPONSES = error_responses(HTTPStatus.BAD_REQUEST, HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                  HTTPStatus.UNSUPPORTED_MEDIA_TYPE, HTTPStatus.TOO_MANY_REQUESTS,
                                  HTTPStatus.SERVICE_UNAVAILABLE)  # fmt: skip
_BINARY = {"type": "string", "format": "binary"}
REPORT_PICTURES = ("curves.png", "confusion_matrix.png", "pr_curves.png", "hierarchy.png", "samples.png")


def report_dir(clf) -> Path:
    return clf.stored.path / store.REPORT_DIR


_TOP_K = Query(
    None,
    ge=1,
    le=1000,
    description="How many classes to return (default 5, capped at the class count; "
    "multi-label models return every label above its threshold unless top_k is given).",
)
_LEVEL = Query(
    None,
    ge=1,
    le=100,
    description="Hierarchical models: answer with the nodes of this tree level (1 = the top) instead of the leaves.",
)


def _multipart_body(field: str, many: bool) -> dict:
    schema = {"type": "array", "items": _BINARY} if many else _BINARY
    content = {"multipart/form-data": {"schema": {"type": "object", "properties": {field: schema},
                                                  "required": [field]}}}  # fmt: skip
    if not many:
        content["image/*"] = {"schema": _BINARY}
    return {"requestBody": {"required": True, "content": content}}


def create_app(get_state: Callable[[], ServingState], get_ops: Callable[[], Any] | None = None) -> FastAPI:
    """The HTTP app; with ``get_ops`` (an :class:`~service.operations.Operations` getter) the admin routes too."""
    app = FastAPI(
        title="imgclf",
        description="Image classification: single, batch and base64-JSON classify, model info. Images are "
        "JPEG, PNG, BMP, GIF, WebP or TIFF; URLs are never fetched.",
        version="1.0",
    )

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        endpoint = request.scope.get("route").path if request.scope.get("route") else "other"
        if not exc.counted:
            telemetry.REJECTED.labels(endpoint, exc.reason).inc()
        headers = {}
        if exc.status in (HTTPStatus.TOO_MANY_REQUESTS, HTTPStatus.SERVICE_UNAVAILABLE):
            headers["Retry-After"] = "1"
        if exc.status == HTTPStatus.UNAUTHORIZED:
            headers["WWW-Authenticate"] = "Bearer"
        body = {"error": exc.message, "reason": exc.reason, **exc.details}
        return JSONResponse(body, status_code=int(exc.status), headers=headers or None)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        """422 in the documented shape: each field and what it must be, never the value sent."""
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:] or e['loc'])}: {e['msg']}"
                             for e in exc.errors()[:5])  # fmt: skip
        endpoint = request.scope.get("route").path if request.scope.get("route") else "other"
        telemetry.REJECTED.labels(endpoint, "validation_error").inc()
        return JSONResponse({"error": f"invalid request: {problems}"[:2000], "reason": "validation_error"},
                            status_code=422)  # fmt: skip

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Framework errors (a body that is not JSON, an unknown route) in the documented error shape."""
        reason = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": str(exc.detail), "reason": reason}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))  # fmt: skip

    in_flight = {"n": 0}

    async def guarded(coro_fn: Callable, *args: Any) -> Any:
        state = get_state()
        if in_flight["n"] >= state.settings.max_concurrency:
            raise Overloaded(f"more than {state.settings.max_concurrency} requests in flight on this worker; retry")
        in_flight["n"] += 1
        try:
            with state.arriving():
                return await coro_fn(state, *args)
        finally:
            in_flight["n"] -= 1

    @app.post("/classify", response_model=ClassifyResponse, responses=ERROR_RESPONSES,
              response_model_exclude_unset=True, openapi_extra=_multipart_body("image", many=False),
              summary="Classify one image")  # fmt: skip
    async def classify(request: Request, top_k: int | None = _TOP_K, level: int | None = _LEVEL) -> ClassifyResponse:
        async def run(state: ServingState) -> ClassifyResponse:
            data, form_top_k = await single_image(request, state.settings.max_upload_bytes)
            query = ClassifyQuery(top_k if top_k is not None else form_top_k, level)
            clf, [result] = await state.classify([data], query, "/classify")
            return ClassifyResponse(model=clf.tag, task=clf.task.kind, **_unwrap(result))

        return await guarded(run)

    @app.post("/classify_batch", response_model=ClassifyBatchResponse, responses=ERROR_RESPONSES,
              response_model_exclude_unset=True,
              openapi_extra=_multipart_body("images", many=True),
              summary="Classify several images (multipart field 'images', repeated)")  # fmt: skip
    async def classify_batch(
        request: Request, top_k: int | None = _TOP_K, level: int | None = _LEVEL
    ) -> ClassifyBatchResponse:
        async def run(state: ServingState) -> ClassifyBatchResponse:
            images = await many_images(request, state.settings.max_upload_bytes, state.settings.max_batch_images)
            return _batch_response(*await state.classify(images, ClassifyQuery(top_k, level), "/classify_batch"))

        return await guarded(run)

    @app.post("/classify_json", response_model=ClassifyBatchResponse, responses=ERROR_RESPONSES,
              response_model_exclude_unset=True,
              summary="Classify base64-encoded images sent as JSON")  # fmt: skip
    async def classify_json(body: ClassifyJSONRequest) -> ClassifyBatchResponse:
        async def run(state: ServingState) -> ClassifyBatchResponse:
            state.admit(len(body.images))  # before any decoding: the one admission rule
            images = [b64decode(s, i, state.settings.max_upload_bytes) for i, s in enumerate(body.images)]
            return _batch_response(
                *await state.classify(images, ClassifyQuery(body.top_k, body.level), "/classify_json")
            )

        return await guarded(run)

    @app.get("/model", response_model=ModelInfo, responses=ERROR_RESPONSES, summary="The model being served")
    async def model_info() -> ModelInfo:
        clf = get_state().require()
        meta = clf.stored.metadata
        task = clf.task
        levels = [task.level(d)[0] for d in range(1, task.depth + 1)] if task.taxonomy else None
        return ModelInfo(tag=clf.tag, architecture=meta["architecture"], classes=clf.classes, task=task.kind,
                         thresholds=task.metadata().get("thresholds"), taxonomy=task.metadata().get("taxonomy"),
                         levels=levels,
                         preprocessing=meta["preprocessing"], metrics=meta.get("metrics", {}),
                         created=clf.stored.created, runtime=clf.runtime_report, worker_pid=os.getpid(),
                         dataset_fingerprint=meta.get("dataset_fingerprint"), training=meta.get("training"),
                         report_pictures=[p for p in REPORT_PICTURES if (report_dir(clf) / p).is_file()])  # fmt: skip

    @app.get("/model/report/{picture}", responses=error_responses(HTTPStatus.NOT_FOUND),
             response_class=FileResponse, summary="A picture of the served model's evaluation report")  # fmt: skip
    async def model_report(picture: str) -> FileResponse:
        clf = get_state().require()
        path = report_dir(clf) / picture
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

    app.include_router(create_oip_router(get_state))
    if get_ops is not None:
        from service.edge.admin import create_admin_router

        app.include_router(create_admin_router(get_ops))
    return app


# ---------------------------------------------------------------- request parsing
def _unwrap(result: ClassifyResult) -> dict[str, Any]:
    """The answer's response fields, or the image's error raised."""
    if result.error is not None:
        raise result.error
    assert result.answer is not None
    a = result.answer
    return {"predictions": a.predictions} | {
        k: v for k, v in (("labels", a.labels), ("level", a.level)) if v is not None
    }


def _batch_response(clf: Classifier, results: list[ClassifyResult]) -> ClassifyBatchResponse:
    if len(results) == 1 and results[0].error is not None:
        raise results[0].error  # a one-image request gets the image's own status
    items = [BatchItem(index=i, predictions=None, error=r.error.message) if r.error else
             BatchItem(index=i, error=None, **_unwrap(r)) for i, r in enumerate(results)]  # fmt: skip
    return ClassifyBatchResponse(model=clf.tag, task=clf.task.kind, results=items)
