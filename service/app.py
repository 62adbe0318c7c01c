"""The HTTP edge: FastAPI routes that parse requests, call :class:`ServingState` and map errors.

Mounted into the BentoML service (``service.py``); usable on its own in tests with any state getter.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from . import metrics
from .errors import InvalidInput, Overloaded, PayloadTooLarge, ServiceError, UnsupportedMediaType
from .schemas import (
    BatchItem,
    ClassifyBatchResponse,
    ClassifyJSONRequest,
    ClassifyResponse,
    ErrorResponse,
    ModelInfo,
)
from .serving import ClassifyResult, ServingState

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    int(s): {"model": ErrorResponse, "description": s.phrase}
    for s in (HTTPStatus.BAD_REQUEST, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
              HTTPStatus.TOO_MANY_REQUESTS, HTTPStatus.SERVICE_UNAVAILABLE)
}  # fmt: skip
_BINARY = {"type": "string", "format": "binary"}
_TOP_K = Query(None, ge=1, le=1000, description="How many classes to return (default 5, capped at the class count).")
ACCEPTED = "multipart/form-data with a file field 'image', or the raw image bytes with an image/* content type"


def _multipart_body(field: str, many: bool) -> dict:
    schema = {"type": "array", "items": _BINARY} if many else _BINARY
    content = {"multipart/form-data": {"schema": {"type": "object", "properties": {field: schema},
                                                  "required": [field]}}}  # fmt: skip
    if not many:
        content["image/*"] = {"schema": _BINARY}
    return {"requestBody": {"required": True, "content": content}}


def create_app(get_state: Callable[[], ServingState]) -> FastAPI:
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
            metrics.REJECTED.labels(endpoint, exc.reason).inc()
        retry = exc.status in (HTTPStatus.TOO_MANY_REQUESTS, HTTPStatus.SERVICE_UNAVAILABLE)
        headers = {"Retry-After": "1"} if retry else None
        return JSONResponse({"error": exc.message, "reason": exc.reason}, status_code=int(exc.status), headers=headers)

    in_flight = {"n": 0}

    async def guarded(coro_fn: Callable, *args: Any) -> Any:
        state = get_state()
        if in_flight["n"] >= state.settings.max_concurrency:
            raise Overloaded(f"more than {state.settings.max_concurrency} requests in flight on this worker; retry")
        in_flight["n"] += 1
        try:
            return await coro_fn(state, *args)
        finally:
            in_flight["n"] -= 1

    @app.post("/classify", response_model=ClassifyResponse, responses=ERROR_RESPONSES,
              openapi_extra=_multipart_body("image", many=False), summary="Classify one image")  # fmt: skip
    async def classify(request: Request, top_k: int | None = _TOP_K) -> ClassifyResponse:
        async def run(state: ServingState) -> ClassifyResponse:
            data, form_top_k = await _single_image(request, state.settings.max_upload_bytes)
            [result] = await state.classify([data], top_k if top_k is not None else form_top_k, "/classify")
            return ClassifyResponse(model=state.require().tag, predictions=_unwrap(result))

        return await guarded(run)

    @app.post("/classify_batch", response_model=ClassifyBatchResponse, responses=ERROR_RESPONSES,
              openapi_extra=_multipart_body("images", many=True),
              summary="Classify several images (multipart field 'images', repeated)")  # fmt: skip
    async def classify_batch(request: Request, top_k: int | None = _TOP_K) -> ClassifyBatchResponse:
        async def run(state: ServingState) -> ClassifyBatchResponse:
            images = await _many_images(request, state.settings.max_upload_bytes, state.settings.max_batch_images)
            results = await state.classify(images, top_k, "/classify_batch")
            return _batch_response(state, results)

        return await guarded(run)

    @app.post("/classify_json", response_model=ClassifyBatchResponse, responses=ERROR_RESPONSES,
              summary="Classify base64-encoded images sent as JSON")  # fmt: skip
    async def classify_json(body: ClassifyJSONRequest) -> ClassifyBatchResponse:
        async def run(state: ServingState) -> ClassifyBatchResponse:
            if len(body.images) > state.settings.max_batch_images:
                raise PayloadTooLarge(f"{len(body.images)} images in one request; the maximum is "
                                      f"{state.settings.max_batch_images}", reason="too_many_images")  # fmt: skip
            images = [_b64decode(s, i, state.settings.max_upload_bytes) for i, s in enumerate(body.images)]
            return _batch_response(state, await state.classify(images, body.top_k, "/classify_json"))

        return await guarded(run)

    @app.get("/model", response_model=ModelInfo, responses=ERROR_RESPONSES, summary="The model being served")
    async def model_info() -> ModelInfo:
        clf = get_state().require()
        meta = clf.stored.metadata
        return ModelInfo(tag=clf.tag, architecture=meta["architecture"], classes=clf.classes,
                         preprocessing=meta["preprocessing"], metrics=meta.get("metrics", {}),
                         created=clf.stored.created, runtime=clf.runtime_report)  # fmt: skip

    return app


# ---------------------------------------------------------------- request parsing
def _unwrap(result: ClassifyResult) -> list:
    if result.error is not None:
        raise result.error
    return result.predictions or []


def _batch_response(state: ServingState, results: list[ClassifyResult]) -> ClassifyBatchResponse:
    if len(results) == 1 and results[0].error is not None:
        raise results[0].error  # a one-image request gets the image's own status
    items = [BatchItem(index=i, predictions=r.predictions, error=r.error.message if r.error else None)
             for i, r in enumerate(results)]  # fmt: skip
    return ClassifyBatchResponse(model=state.require().tag, results=items)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the maximum is {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the maximum of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # let request.form() parse what was already read
    return body


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _form(request: Request, limit: int, max_files: int):
    await _read_body(request, limit)
    try:
        return await request.form(max_files=max_files, max_fields=max_files + 8)
    except Exception as exc:  # noqa: BLE001 - starlette raises several kinds for a broken multipart body
        raise InvalidInput(f"malformed multipart body: {exc}", reason="bad_multipart") from None


async def _file_bytes(value: Any, field: str, limit: int) -> bytes:
    if not isinstance(value, UploadFile):
        hint = " URLs are never fetched; upload the image itself." if str(value).startswith(("http:", "https:")) else ""
        raise InvalidInput(f"field {field!r} must be a file upload, not text.{hint}", reason="not_a_file")
    data = await value.read()
    if len(data) > limit:
        raise PayloadTooLarge(f"{value.filename or field} is {len(data)} bytes; the maximum is {limit} bytes")
    return data


async def _single_image(request: Request, limit: int) -> tuple[bytes, int | None]:
    media = _media_type(request)
    if media.startswith("image/") or media == "application/octet-stream":
        return await _read_body(request, limit), None
    if media not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise UnsupportedMediaType(f"content type {media or '(none)'} is not accepted; send {ACCEPTED}. "
                                   "For base64 in JSON use POST /classify_json.")  # fmt: skip
    form = await _form(request, limit + 64 * 1024, max_files=1)
    files = form.getlist("image")
    if len(files) != 1:
        found = ", ".join(sorted(set(form.keys()))) or "none"
        raise InvalidInput(f"expected exactly one multipart field 'image'; found fields: {found}",
                           reason="bad_field")  # fmt: skip
    top_k = form.get("top_k")
    if top_k is not None and (not isinstance(top_k, str) or not top_k.strip().lstrip("-").isdigit()):
        raise InvalidInput(f"top_k must be an integer, got {top_k!r}", reason="bad_top_k")
    return await _file_bytes(files[0], "image", limit), int(top_k) if top_k is not None else None


async def _many_images(request: Request, limit: int, max_images: int) -> list[bytes]:
    if _media_type(request) != "multipart/form-data":
        raise UnsupportedMediaType(f"send multipart/form-data with one 'images' file field per image; got "
                                   f"{_media_type(request) or '(none)'}")  # fmt: skip
    form = await _form(request, limit * max_images, max_files=max_images + 1)
    files = form.getlist("images") or form.getlist("image")
    if not files:
        found = ", ".join(sorted(set(form.keys()))) or "none"
        raise InvalidInput(f"expected one or more multipart fields 'images'; found fields: {found}",
                           reason="bad_field")  # fmt: skip
    if len(files) > max_images:
        raise PayloadTooLarge(f"{len(files)} images in one request; the maximum is {max_images}",
                              reason="too_many_images")  # fmt: skip
    return [await _file_bytes(f, "images", limit) for f in files]


def _b64decode(value: str, index: int, limit: int) -> bytes:
    text = value.strip()
    if text.startswith(("http://", "https://", "ftp://", "file:")):
        raise InvalidInput(f"images[{index}] is a URL; URLs are never fetched: send the image base64-encoded",
                           reason="url_not_fetched")  # fmt: skip
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    if len(text) * 3 // 4 > limit:
        raise PayloadTooLarge(f"images[{index}] is over the maximum of {limit} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(
            f"images[{index}] is not valid base64 (standard alphabet, with padding)", reason="bad_base64"
        ) from None
