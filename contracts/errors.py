"""The one error body every failing response carries (SPEC §2.1)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

ErrorName = Literal[
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "MethodNotAllowed",
    "Conflict",
    "PreconditionFailed",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "UnprocessableEntity",
    "TooManyRequests",
    "InternalServerError",
    "ServiceUnavailable",
]


class ErrorResponse(msgspec.Struct, omit_defaults=True):
    error: ErrorName
    message: str
    details: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
