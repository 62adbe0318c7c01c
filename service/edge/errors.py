"""Domain errors to HTTP: each error class's status, and the app's handlers that answer every error in the
documented ``{"error", "reason"}`` shape (counted once in ``imgclf_rejected_requests_total``)."""

from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import errors, telemetry

STATUS: dict[type[errors.ServiceError], HTTPStatus] = {
    errors.InvalidInput: HTTPStatus.BAD_REQUEST,
    errors.PayloadTooLarge: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    errors.UnsupportedMediaType: HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
    errors.Unauthorized: HTTPStatus.UNAUTHORIZED,
    errors.Forbidden: HTTPStatus.FORBIDDEN,
    errors.NotFound: HTTPStatus.NOT_FOUND,
    errors.Conflict: HTTPStatus.CONFLICT,
    errors.Overloaded: HTTPStatus.TOO_MANY_REQUESTS,
    errors.NotReady: HTTPStatus.SERVICE_UNAVAILABLE,
    errors.RegistryUnavailable: HTTPStatus.SERVICE_UNAVAILABLE,
    errors.Unavailable: HTTPStatus.SERVICE_UNAVAILABLE,
}


def http_status(err: errors.ServiceError) -> HTTPStatus:
    """The status of ``err``'s class, or of its nearest mapped base class (400 for an unmapped one)."""
    for cls in type(err).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return HTTPStatus.BAD_REQUEST


def error_body(err: errors.ServiceError) -> dict:
    return {"error": err.message, "reason": err.reason, **err.details}


def route_of(request: Request) -> str:
    route = request.scope.get("route")
    return route.path if route is not None else "other"


def error_response(exc: errors.ServiceError, route: str) -> JSONResponse:
    """``exc`` answered in the documented shape, counted once under ``route``."""
    telemetry.REJECTED.labels(route, exc.reason).inc()
    status = http_status(exc)
    headers = {}
    if status in (HTTPStatus.TOO_MANY_REQUESTS, HTTPStatus.SERVICE_UNAVAILABLE):
        headers["Retry-After"] = "1"
    if status == HTTPStatus.UNAUTHORIZED:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(error_body(exc), status_code=int(status), headers=headers or None)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.ServiceError)
    async def service_error(request: Request, exc: errors.ServiceError) -> JSONResponse:
        return error_response(exc, route_of(request))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        """422 in the documented shape: each field and what it must be, never the value sent."""
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:] or e['loc'])}: {e['msg']}"
                             for e in exc.errors()[:5])  # fmt: skip
        telemetry.REJECTED.labels(route_of(request), "validation_error").inc()
        return JSONResponse({"error": f"invalid request: {problems}"[:2000], "reason": "validation_error"},
                            status_code=422)  # fmt: skip

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Framework errors (a body that is not JSON, an unknown route) in the documented error shape."""
        reason = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": str(exc.detail), "reason": reason}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))  # fmt: skip
