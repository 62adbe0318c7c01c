"""Domain errors raised by the service core: what went wrong and a short bounded ``reason`` code. No
protocol here: each edge maps the class to its status (:mod:`service.edge.errors` for HTTP, the gRPC server
for gRPC codes)."""

from __future__ import annotations

from training.imaging import ImageError


class ServiceError(Exception):
    """Base class: ``reason`` is a short bounded code (metrics, the error body)."""

    reason: str = "bad_request"

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
    reason = "invalid_input"


class PayloadTooLarge(ServiceError):
    reason = "too_large"


class UnsupportedMediaType(ServiceError):
    reason = "unsupported_media_type"


class Unauthorized(ServiceError):
    reason = "unauthorized"


class Forbidden(ServiceError):
    reason = "forbidden"


class NotFound(ServiceError):
    reason = "not_found"


class Conflict(ServiceError):
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

    reason = "registry_unavailable"


class NotReady(ServiceError):
    """No model is served yet (the worker is loading its first one)."""

    reason = "not_ready"

    def __init__(self, message: str = "the model is still loading; retry shortly", reason: str | None = None):
        super().__init__(message, reason)


class Overloaded(ServiceError):
    reason = "overloaded"


class Unavailable(ServiceError):
    """A dependency the request needs (a job backend, say) cannot do it now; retrying later may work."""

    reason = "unavailable"


# image decode reasons -> the error that fits them
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
