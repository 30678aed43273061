"""Time zone names (SPEC §2.4 rule 3): IANA names from the tz database, nothing else."""

from __future__ import annotations

from functools import cache
from zoneinfo import ZoneInfo, available_timezones

from service.domain.errors import ValidationFailed

__all__ = ["validate_timezone", "zone"]

# In the tz database listing but not places: `localtime` is the host's own setting (so it would mean
# something different on every replica), `posixrules` is a tzcode detail and `Factory` means "unset".
_NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})


@cache
def _known() -> frozenset[str]:
    return frozenset(available_timezones() - _NOT_ZONES)


def validate_timezone(name: str, field: str = "timezone") -> str:
    """Return `name` unchanged if it is an IANA zone name; no trimming and no case folding."""
    if name not in _known():
        raise ValidationFailed(
            field, "invalid_timezone", f"unknown time zone '{name}': use an IANA name such as Europe/Paris"
        )
    return name


@cache
def zone(name: str) -> ZoneInfo:
    """The `ZoneInfo` for a valid name (raises `ValidationFailed` like `validate_timezone` otherwise)."""
    return ZoneInfo(validate_timezone(name))
