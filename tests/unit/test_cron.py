"""The cron dialect (SPEC §3.1): what is accepted, what is refused and why, minimum interval, next fires."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# The gap maths is private; the tests reach in to pin it down exactly.
from service.domain.cron import (
    _FIVE,
    _SIX,
    MACROS,
    CronSchedule,
    _expand,
    _min_gap_s,
    normalize_cron,
    parse_cron,
)
from service.domain.errors import ValidationFailed
from tests.support.crons import CRON_EXPRESSIONS

pytestmark = pytest.mark.unit

PARIS = ZoneInfo("Europe/Paris")


def parse(expr: str, min_interval_s: int = 60) -> CronSchedule:
    return parse_cron(expr, min_interval_s=min_interval_s)


def refusal(expr: str, min_interval_s: int = 60) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as info:
        parse(expr, min_interval_s)
    assert info.value.field == "cronSchedule"
    return info.value


def gap_of(expr: str) -> int:
    text = normalize_cron(expr)
    fields = text.split(" ")
    return _min_gap_s(_expand(text, _SIX if len(fields) == 6 else _FIVE, fields))


# ---------------------------------------------------------------------------------------------- accepted


@pytest.mark.parametrize("macro", sorted(MACROS))
def test_every_macro_is_accepted(macro: str) -> None:
    schedule = parse(macro)
    assert schedule.expression == macro
    assert not schedule.has_seconds


def test_macros_are_exactly_the_documented_seven() -> None:
    assert {"@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually"} == MACROS


@pytest.mark.parametrize(
    "expr",
    [
        "0 4 * * *",
        "*/15 * * * *",
        "0 9-17/2 * * 1-5",
        "0,30 8,20 1,15 * *",
        "5/15 * * * *",  # a start with a step: 5,20,35,50
        "0 22-2 * * *",  # a range that wraps past midnight
        "0 0 * * sun",
        "0 0 * * SUN",
        "0 0 * * Mon-Fri",
        "0 0 * * sat-sun",
        "0 0 1 jan *",
        "0 0 1 JAN-MAR,oct *",
        "0 0 * * 0",
        "0 0 * * 7",
        "0 0 * * 0-7",
        "0 0 * * 5-7",
        "0 0 * * */2",
        "0 0 29 2 *",  # leap days do come
        "0 0 30 2 1",  # Vixie: dom OR dow, so Mondays in February fire
        "00 04 * * *",
        "59 23 31 12 *",
        "@HOURLY",
    ],
)
def test_five_field_expressions_are_accepted(expr: str) -> None:
    schedule = parse(expr)
    assert schedule.expression == expr
    assert not schedule.has_seconds


@pytest.mark.parametrize("expr", ["0 * * * * *", "30 0 4 * * *", "0 */5 * * * *", "15 30 9 * * mon-fri"])
def test_six_fields_put_seconds_first(expr: str) -> None:
    schedule = parse(expr)
    assert schedule.has_seconds
    assert schedule.expression == expr


def test_six_field_seconds_are_read_first() -> None:
    # "30 0 4 * * *" is 04:00:30, not 00:30 on the 4th nor second 30 at the end.
    fire = parse("30 0 4 * * *").next_after(datetime(2026, 1, 10, 12, tzinfo=UTC), ZoneInfo("UTC"))
    assert fire == datetime(2026, 1, 11, 4, 0, 30, tzinfo=UTC)


def test_zero_and_seven_are_both_sunday() -> None:
    after = datetime(2026, 1, 7, tzinfo=UTC)  # a Wednesday
    utc = ZoneInfo("UTC")
    sunday = datetime(2026, 1, 11, 12, tzinfo=UTC)
    for expr in ("0 12 * * 0", "0 12 * * 7", "0 12 * * sun", "0 12 * * SUN"):
        assert parse(expr).next_after(after, utc) == sunday, expr


def test_day_of_month_and_day_of_week_combine_vixie_style() -> None:
    # The 13th OR any Friday: from Wed 2026-01-07, Fri the 9th comes first, then Tue the 13th.
    schedule = parse("0 0 13 * 5")
    first = schedule.next_after(datetime(2026, 1, 7, tzinfo=UTC), ZoneInfo("UTC"))
    assert first == datetime(2026, 1, 9, tzinfo=UTC)
    assert first is not None
    second = schedule.next_after(first, ZoneInfo("UTC"))
    assert second == datetime(2026, 1, 13, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("  0 4 * * *  ", "0 4 * * *"),
        ("0   4\t*  *\n*", "0 4 * * *"),
        ("\u00a00 4 * * *\u2003", "0 4 * * *"),
        (" @daily ", "@daily"),
        ("0  *  *  *  *  *", "0 * * * * *"),
    ],
)
def test_whitespace_is_trimmed_and_collapsed(raw: str, stored: str) -> None:
    assert normalize_cron(raw) == stored
    assert parse(raw).expression == stored


# ---------------------------------------------------------------------------------------------- refused


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("", "the expression is empty"),
        ("   ", "the expression is empty"),
        ("* * * *", "expected 5 fields (or 6 with seconds first), got 4"),
        ("0 0 0 * * * *", "expected 5 fields (or 6 with seconds first), got 7"),
        ("0 0 0 * * * 2030", "expected 5 fields (or 6 with seconds first), got 7"),
        ("0 25 * * *", "hour field '25' is out of range 0-23"),
        ("60 * * * *", "minute field '60' is out of range 0-59"),
        ("1-70 * * * *", "minute field '1-70' is out of range 0-59"),
        ("0 0 0 * *", "day-of-month field '0' is out of range 1-31"),
        ("0 0 32 * *", "day-of-month field '32' is out of range 1-31"),
        ("0 0 * 13 *", "month field '13' is out of range 1-12"),
        ("0 0 * 0 *", "month field '0' is out of range 1-12"),
        ("0 0 * * 8", "day-of-week field '8' is out of range 0-7"),
        ("60 0 0 * * *", "second field '60' is out of range 0-59"),
        ("0 0 * * fooday", "day-of-week field 'fooday' is not valid"),
        ("0 0 * * monday", "day-of-week field 'monday' is not valid"),
        ("0 0 * foo *", "month field 'foo' is not valid"),
        ("0 0 * * jan", "day-of-week field 'jan' is not valid"),
        ("0 0 * mon *", "month field 'mon' is not valid"),
        ("mon * * * *", "minute field 'mon' is not valid"),
        ("*/0 * * * *", "minute field '*/0' has a zero step"),
        ("0 1-5/0 * * *", "hour field '1-5/0' has a zero step"),
        ("*/90 * * * *", "minute field '*/90' has a step larger than the range 0-59"),
        ("1,,2 * * * *", "minute field '1,,2' is not valid"),
        ("-1 * * * *", "minute field '-1' is not valid"),
        ("*-5 * * * *", "minute field '*-5' is not valid"),
        ("/5 * * * *", "minute field '/5' is not valid"),
        ("1.5 * * * *", "minute field '1.5' is not valid"),
        ("\uff11 * * * *", "minute field '\uff11' is not valid"),  # a fullwidth digit
        ("5-5 * * * *", "minute field '5-5' is not valid (a range needs two different ends; write '5')"),
        (
            "0 0 * * 7-sun",
            "day-of-week field '7-sun' is not valid (a range needs two different ends; write '7')",
        ),
        ("0 0 ? * *", "day-of-month field '?' is not valid ('?' is not supported, use '*')"),
        ("0 0 * * ?", "day-of-week field '?' is not valid ('?' is not supported, use '*')"),
        ("0 0 L * *", "day-of-month field 'L' is not valid ('L' (last) is not supported)"),
        ("0 0 * * 5L", "day-of-week field '5L' is not valid ('L' (last) is not supported)"),
        ("0 0 15W * *", "day-of-month field '15W' is not valid ('W' (nearest weekday) is not supported)"),
        ("0 0 LW * *", "day-of-month field 'LW' is not valid ('L' (last) is not supported)"),
        ("0 0 * * 1#2", "day-of-week field '1#2' is not valid ('#' (nth weekday) is not supported)"),
        ("H * * * *", "minute field 'H' is not valid ('H' (hashed values) is not supported)"),
        ("H/15 H * * *", "minute field 'H/15' is not valid ('H' (hashed values) is not supported)"),
        ("0 0 30 2 *", "day-of-month field '30' never occurs in month field '2'"),
        ("0 0 31 4,6,9,11 *", "day-of-month field '31' never occurs in month field '4,6,9,11'"),
        ("0 0 0 30-31 feb *", "day-of-month field '30-31' never occurs in month field 'feb'"),
    ],
)
def test_refusals_name_the_field(expr: str, message: str) -> None:
    error = refusal(expr)
    assert error.code == "invalid_cron"
    assert error.message == f"invalid cron expression: {message}"


@pytest.mark.parametrize("macro", ["@reboot", "@every 5m", "@every", "@minutely", "@daily 0"])
def test_other_macros_are_refused(macro: str) -> None:
    error = refusal(macro)
    assert error.code == "invalid_cron"
    assert error.message.startswith(
        f"invalid cron expression: unknown macro '{macro}' (use one of @annually,"
    )


# ---------------------------------------------------------------------------------------------- too frequent


@pytest.mark.parametrize(
    ("expr", "min_interval_s", "ok"),
    [
        ("* * * * *", 60, True),
        ("*/30 * * * * *", 60, False),
        ("0 * * * * *", 60, True),
        ("0,59 * * * * *", 60, False),  # :59 then :00 of the next minute is 1 s
        ("0,30 * * * * *", 30, True),
        ("0,30 * * * * *", 31, False),
        ("59 59 23 * * *", 60, True),
        ("0,59 0,59 0,23 * * *", 60, False),  # 23:59:59 then 00:00:00 the next day
        ("0 0,23 * * *", 3600, True),
        ("0 0,23 * * *", 3601, False),  # 23:00 then 00:00 the next day
        ("@hourly", 3600, True),
        ("@hourly", 3601, False),
        ("0 0 * * *", 86_400, True),
        ("0 0 * * *", 86_401, False),
        ("0 0 * * 1,3,5", 2 * 86_400, True),
        ("0 0 * * 1,3,5", 2 * 86_400 + 1, False),
        ("0 0 1,27 * *", 2 * 86_400, True),  # Feb 27 -> Mar 1 in a common year is the shortest
        ("0 0 1,27 * *", 2 * 86_400 + 1, False),
        ("0 0 1,28 * *", 86_400 + 1, False),  # Feb 28 -> Mar 1
        ("0 0 29 2 *", 4 * 365 * 86_400, True),
        ("* * * * * *", 0, True),  # 0 disables the check
        ("* * * * * *", 1, True),
        ("* * * * * *", 2, False),
    ],
)
def test_minimum_interval(expr: str, min_interval_s: int, ok: bool) -> None:
    if ok:
        parse(expr, min_interval_s)
        return
    error = refusal(expr, min_interval_s)
    assert error.code == "too_frequent"
    assert error.message == f"cron fires more often than once every {min_interval_s} s"


@pytest.mark.parametrize(
    ("expr", "gap"),
    [
        ("* * * * *", 60),
        ("*/30 * * * * *", 30),
        ("0 4 * * *", 86_400),
        ("@weekly", 7 * 86_400),
        ("@monthly", 28 * 86_400),
        ("@yearly", 365 * 86_400),
        ("0 0 29 2 *", 4 * 365 * 86_400 + 86_400),  # four years with one Feb 29 in them
        ("0 0 13 * 5", 86_400),  # the 13th or a Friday: Friday the 12th, then the 13th
        ("10,50 * * * *", 20 * 60),  # :50 to :10 of the next hour is shorter than :10 to :50
        ("10,50 */20 * * *", 40 * 60),  # hours 0 and 20 only: :10 to :50 is the shortest
        ("5-10 * * * * *", 1),
    ],
)
def test_min_gap_is_exact(expr: str, gap: int) -> None:
    assert gap_of(expr) == gap


def test_invalid_cron_wins_over_too_frequent() -> None:
    assert refusal("*/0 * * * * *").code == "invalid_cron"


# ---------------------------------------------------------------------------------------------- next fire


def test_next_after_is_evaluated_in_the_zone_and_returned_in_utc() -> None:
    schedule = parse("0 4 * * *")
    winter = schedule.next_after(datetime(2026, 1, 10, 12, tzinfo=UTC), PARIS)
    summer = schedule.next_after(datetime(2026, 7, 10, 12, tzinfo=UTC), PARIS)
    assert winter == datetime(2026, 1, 11, 3, tzinfo=UTC)
    assert summer == datetime(2026, 7, 11, 2, tzinfo=UTC)
    for fire in (winter, summer):
        assert fire is not None
        assert fire.tzinfo is UTC


def test_next_after_is_strictly_after() -> None:
    schedule = parse("0 4 * * *")
    on_a_fire = datetime(2026, 1, 11, 3, tzinfo=UTC)
    assert schedule.next_after(on_a_fire, PARIS) == datetime(2026, 1, 12, 3, tzinfo=UTC)
    assert schedule.next_after(on_a_fire - timedelta(microseconds=1), PARIS) == on_a_fire
    assert schedule.next_after(on_a_fire + timedelta(microseconds=1), PARIS) == datetime(
        2026, 1, 12, 3, tzinfo=UTC
    )


def test_next_after_accepts_any_aware_input() -> None:
    tokyo_noon = datetime(2026, 1, 10, 21, tzinfo=ZoneInfo("Asia/Tokyo"))  # 12:00Z
    assert parse("0 4 * * *").next_after(tokyo_noon, PARIS) == datetime(2026, 1, 11, 3, tzinfo=UTC)


def test_next_after_with_seconds() -> None:
    fire = parse("*/30 * * * * *", 0).next_after(datetime(2026, 1, 10, 12, tzinfo=UTC), PARIS)
    assert fire == datetime(2026, 1, 10, 12, 0, 30, tzinfo=UTC)


def test_next_after_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="aware"):
        parse("0 4 * * *").next_after(datetime(2026, 1, 10, 12), PARIS)


def test_next_after_finds_rare_fires() -> None:
    fire = parse("0 0 29 2 *").next_after(datetime(2097, 1, 1, tzinfo=UTC), ZoneInfo("UTC"))
    assert fire == datetime(2104, 2, 29, tzinfo=UTC)


# ---------------------------------------------------------------------------------------------- properties


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CRON_EXPRESSIONS)
def test_no_two_real_fires_are_closer_than_the_computed_gap(expr: str) -> None:
    gap = gap_of(expr)
    it = croniter(expr, datetime(2027, 12, 25), second_at_beginning=True)  # naive: wall-clock time
    fires = [it.get_next(datetime) for _ in range(200)]
    observed = min((b - a).total_seconds() for a, b in itertools.pairwise(fires))
    assert observed >= gap
    # The boundary is exact: the gap itself passes, one second more is too frequent.
    parse(expr, gap)
    assert refusal(expr, gap + 1).code == "too_frequent"


@settings(max_examples=50, deadline=None)
@given(CRON_EXPRESSIONS, st.lists(st.sampled_from([" ", "  ", "\t", "\n"]), min_size=7, max_size=7))
def test_normalisation_ignores_whitespace(expr: str, spaces: list[str]) -> None:
    fields = expr.split(" ")
    messy = spaces[0] + "".join(f + s for f, s in zip(fields, spaces[1:], strict=False))
    assert normalize_cron(messy) == expr
    assert normalize_cron(normalize_cron(messy)) == expr
