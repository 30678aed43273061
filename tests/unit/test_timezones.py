"""Time zone names (SPEC §2.4 rule 3): IANA names only, exactly as written."""

from __future__ import annotations

from zoneinfo import ZoneInfo, available_timezones

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain.errors import ValidationFailed
from service.domain.timezones import validate_timezone, zone

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "name",
    [
        "Europe/Paris",
        "UTC",
        "America/New_York",
        "Asia/Kolkata",
        "Etc/GMT+8",
        "America/Argentina/Buenos_Aires",
    ],
)
def test_iana_names_are_accepted_unchanged(name: str) -> None:
    assert validate_timezone(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        " ",
        "PST",
        "UTC+8",
        "GMT+1",
        "+02:00",
        "  Europe/Paris",
        "Europe/Paris ",
        "europe/paris",
        "Europe/Atlantis",
        "Europe/",
        "../../etc/passwd",
        "/usr/share/zoneinfo/UTC",
        "localtime",  # the host's own setting: it would differ between replicas
        "posixrules",
        "Factory",
    ],
)
def test_other_names_are_refused(name: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        validate_timezone(name)
    assert info.value.field == "timezone"
    assert info.value.code == "invalid_timezone"
    assert info.value.message == f"unknown time zone '{name}': use an IANA name such as Europe/Paris"


def test_the_message_for_pst() -> None:
    with pytest.raises(
        ValidationFailed, match=r"^unknown time zone 'PST': use an IANA name such as Europe/Paris$"
    ):
        validate_timezone("PST")


def test_the_field_can_be_named() -> None:
    with pytest.raises(ValidationFailed) as info:
        validate_timezone("PST", field="defaultTimezone")
    assert info.value.field == "defaultTimezone"
    assert info.value.details == {"field": "defaultTimezone", "code": "invalid_timezone"}


def test_zone_returns_the_cached_zoneinfo() -> None:
    paris = zone("Europe/Paris")
    assert paris == ZoneInfo("Europe/Paris")
    assert zone("Europe/Paris") is paris


def test_zone_refuses_unknown_names() -> None:
    with pytest.raises(ValidationFailed) as info:
        zone("UTC+8")
    assert info.value.code == "invalid_timezone"


_KNOWN = available_timezones() - {"localtime", "posixrules", "Factory"}


@settings(max_examples=200)
@given(st.one_of(st.text(max_size=40), st.sampled_from(sorted(_KNOWN))))
def test_only_tz_database_names_pass(name: str) -> None:
    known = name in _KNOWN
    try:
        validate_timezone(name)
    except ValidationFailed:
        assert not known
    else:
        assert known
