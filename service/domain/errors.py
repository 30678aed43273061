"""One small hierarchy of domain errors; one function at the edge maps them to HTTP and NATS replies."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base of every error the domain and application raise on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationFailed(DomainError):
    """A well-formed request broke a rule: 400 with `details.field` and `details.code`."""

    def __init__(self, field: str, code: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.code = code

    @property
    def details(self) -> dict[str, Any]:
        return {"field": self.field, "code": self.code}


class NotFound(DomainError):
    """The job, library, series or book does not exist (or belongs to another library)."""


class Conflict(DomainError):
    """The request cannot be applied in the current state (e.g. a run already in flight)."""


class PreconditionFailed(DomainError):
    """`If-Match` named a version that is no longer current."""

    def __init__(self, message: str, current_version: int) -> None:
        super().__init__(message)
        self.current_version = current_version


class Unavailable(DomainError):
    """Something the request needs (a plugin, the store) cannot be reached right now."""
