"""Domain errors raised by the service core, each with its HTTP status; mapped once at the edge."""

from __future__ import annotations

from http import HTTPStatus

from training.imaging import ImageError


class ServiceError(Exception):
    """Base class: ``status`` is the HTTP status, ``reason`` a short bounded code for metrics."""

    status: HTTPStatus = HTTPStatus.BAD_REQUEST
    reason: str = "bad_request"
    counted: bool = False  # already in imgclf_rejected_requests_total

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        if reason:
            self.reason = reason

    @property
    def message(self) -> str:
        return str(self)

    @property
    def details(self) -> dict:
        """Extra fields for the error body."""
        return {}


class InvalidInput(ServiceError):
    status = HTTPStatus.BAD_REQUEST
    reason = "invalid_input"


class PayloadTooLarge(ServiceError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    reason = "too_large"


class UnsupportedMediaType(ServiceError):
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    reason = "unsupported_media_type"


class Unauthorized(ServiceError):
    status = HTTPStatus.UNAUTHORIZED
    reason = "unauthorized"


class Forbidden(ServiceError):
    status = HTTPStatus.FORBIDDEN
    reason = "forbidden"


class NotFound(ServiceError):
    status = HTTPStatus.NOT_FOUND
    reason = "not_found"


class Conflict(ServiceError):
    status = HTTPStatus.CONFLICT
    reason = "conflict"


class JobConflict(Conflict):
    """A training job for this model is already queued or running."""

    reason = "job_running"

    def __init__(self, message: str, job_id: str):
        super().__init__(message)
        self.job_id = job_id

    @property
    def details(self) -> dict:
        return {"job_id": self.job_id}


class RegistryUnavailable(ServiceError):
    """The registry database cannot be reached, or stays locked; serving goes on with the current model."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    reason = "registry_unavailable"


class NotReady(ServiceError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    reason = "not_ready"


class Overloaded(ServiceError):
    status = HTTPStatus.TOO_MANY_REQUESTS
    reason = "overloaded"


# image decode reasons -> the status that fits them
_IMAGE_STATUS = {
    "empty": InvalidInput,
    "not_an_image": UnsupportedMediaType,
    "unsupported_format": UnsupportedMediaType,
    "truncated": InvalidInput,
    "too_many_pixels": PayloadTooLarge,
    "too_complex": PayloadTooLarge,
}


def from_image_error(exc: ImageError, what: str = "image") -> ServiceError:
    cls = _IMAGE_STATUS.get(exc.reason, InvalidInput)
    return cls(f"{what}: {exc}", reason=exc.reason)
