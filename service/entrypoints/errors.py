"""The one mapping from errors to the wire: an HTTP-like status and an `ErrorResponse` (HTTP and NATS)."""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

import msgspec

from contracts.errors import ErrorName, ErrorResponse
from service.domain.errors import (
    Conflict,
    DomainError,
    NotFound,
    PreconditionFailed,
    Unavailable,
    ValidationFailed,
)

ERROR_NAMES: dict[int, ErrorName] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    412: "PreconditionFailed",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "UnprocessableEntity",
    429: "TooManyRequests",
    500: "InternalServerError",
    503: "ServiceUnavailable",
}
INTERNAL_ERROR_MESSAGE = "An internal error occurred"


def error_body(status: int, message: str, details: dict[str, Any] | None = None) -> ErrorResponse:
    name = ERROR_NAMES.get(status) or ("BadRequest" if status < 500 else "InternalServerError")
    if status >= 500 and status != 503:
        message = INTERNAL_ERROR_MESSAGE
    return ErrorResponse(
        error=name, message=message, details=details if details is not None else msgspec.UNSET
    )


def domain_error(error: DomainError) -> tuple[int, ErrorResponse]:
    if isinstance(error, ValidationFailed):
        return 400, error_body(400, error.message, error.details)
    status = next((code for kind, code in _STATUSES if isinstance(error, kind)), 400)
    return status, error_body(status, error.message)


_STATUSES: tuple[tuple[type[DomainError], int], ...] = (
    (NotFound, 404),
    (Conflict, 409),
    (PreconditionFailed, 412),
    (Unavailable, 503),
)


# msgspec's messages, as Litestar passes them on, sorted into stable `details.code` values.
_DECODE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"Object missing required field `(?P<name>[^`]+)`"), "required"),
    (re.compile(r"Object contains unknown field `(?P<name>[^`]+)`"), "unknown_field"),
    (re.compile(r"Invalid enum value"), "invalid_enum"),
    (re.compile(r"Invalid value"), "invalid_value"),
    (re.compile(r"Expected `[^`]+`, got `[^`]+`"), "wrong_type"),
)


def decode_error_details(message: str, key: str | None) -> dict[str, str]:
    """`details` for a body that is JSON but not of the request's shape."""
    path = "" if key in (None, "", "data") else str(key)
    for pattern, code in _DECODE_PATTERNS:
        match = pattern.search(message)
        if match:
            name = match.groupdict().get("name")
            if name:
                path = f"{path}.{name}" if path else name
            return {"field": path or "body", "code": code}
    return {"field": path or "body", "code": "invalid"}


def shape_error(message: str, key: str | None, *, patch: bool = False) -> ErrorResponse:
    """The 400 of a body that is JSON but not of the request's shape (`patch`: a job's change)."""
    details = decode_error_details(message, key)
    if patch and details == {"field": "config.type", "code": "invalid_value"}:
        # Only metadata_refresh exists, so any other type on a PATCH differs from the job's.
        details["code"] = "type_mismatch"
        message = "config.type must equal the job's type (metadata_refresh)"
    return error_body(400, f"Invalid request: {details['field']}: {message}", details)


def undecodable(error: msgspec.MsgspecError, *, patch: bool = False) -> ErrorResponse:
    """The 400 of a body msgspec could not decode (strictly) into the request's type."""
    if isinstance(error, msgspec.ValidationError):
        message, _, path = str(error).partition(" - at `$")
        return shape_error(message, path.rstrip("`").lstrip(".") or None, patch=patch)
    details = {"field": "body", "code": "malformed_json"}
    return error_body(400, f"Malformed JSON body: JSON is malformed: {error}", details)


def status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
