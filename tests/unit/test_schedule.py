"""Fire instants in a time zone (SPEC §3.2): named examples of each daylight-saving rule, exact instants.

Fixed-hour expressions fire once for a wall time a gap skips (at the gap's end) or a fall-back repeats (at
its first occurrence); wildcard-hour ones (`*`, a step) fire on every real instant that matches, and
skip the times a gap removes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from service.domain.cron import CronSchedule, parse_cron
from service.domain.schedule import fires, fires_between, next_fire

pytestmark = pytest.mark.unit

NEW_YORK = ZoneInfo("America/New_York")  # 2026: 03-08 02:00 EST -> 03:00 EDT, 11-01 02:00 EDT -> 01:00 EST
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")  # 30-minute DST: 04-05 02:00 -> 01:30, 10-04 02:00 -> 02:30


def cron(expr: str) -> CronSchedule:
    return parse_cron(expr, min_interval_s=0)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


def fires_of(expr: str, tz: ZoneInfo, after: datetime, count: int) -> list[datetime]:
    return fires(cron(expr), tz, after, count)


# ---------------------------------------------------------------------------------------------- gap


def test_a_fixed_time_in_the_gap_fires_once_at_the_end_of_the_gap() -> None:
    # 02:30 does not exist on 2026-03-08: the fire is 03:00 EDT = 07:00Z, the next day is normal again.
    assert fires_of("30 2 * * *", NEW_YORK, utc(2026, 3, 7, 12), 3) == [
        utc(2026, 3, 8, 7),
        utc(2026, 3, 9, 6, 30),
        utc(2026, 3, 10, 6, 30),
    ]


def test_several_gap_times_coalesce_into_one_fire() -> None:
    assert fires_of("0,30 2 * * *", NEW_YORK, utc(2026, 3, 7, 12), 3) == [
        utc(2026, 3, 8, 7),
        utc(2026, 3, 9, 6),
        utc(2026, 3, 9, 6, 30),
    ]


def test_a_gap_time_and_the_time_after_the_gap_are_one_fire() -> None:
    # 01:00 EST, then 02:00 (missing) and 03:00 EDT are the same instant: one fire, not two.
    assert fires_of("0 1-3 * * *", NEW_YORK, utc(2026, 3, 8, 5, 30), 3) == [
        utc(2026, 3, 8, 6),
        utc(2026, 3, 8, 7),
        utc(2026, 3, 9, 5),
    ]


def test_midnight_in_a_gap() -> None:
    # Havana springs forward at midnight: the daily midnight job runs at 01:00 CDT.
    assert next_fire(cron("0 0 * * *"), ZoneInfo("America/Havana"), utc(2026, 3, 7, 12)) == utc(2026, 3, 8, 5)
    # São Paulo did until 2019 (2018-11-04 00:00 -03 -> 01:00 -02).
    sao_paulo = ZoneInfo("America/Sao_Paulo")
    assert next_fire(cron("@daily"), sao_paulo, utc(2018, 11, 3, 12)) == utc(2018, 11, 4, 3)


def test_a_two_hour_gap() -> None:
    # Antarctica/Troll goes from +00 to +02 at 01:00Z: 01:00-03:00 local does not exist.
    assert next_fire(cron("30 1 * * *"), ZoneInfo("Antarctica/Troll"), utc(2026, 3, 28, 12)) == utc(
        2026, 3, 29, 1
    )


# ---------------------------------------------------------------------------------------------- overlap


def test_a_fixed_time_in_the_overlap_fires_once_at_its_first_occurrence() -> None:
    # 01:30 happens at 05:30Z (EDT) and 06:30Z (EST) on 2026-11-01: only the first fires.
    assert fires_of("30 1 * * *", NEW_YORK, utc(2026, 10, 31, 12), 3) == [
        utc(2026, 11, 1, 5, 30),
        utc(2026, 11, 2, 6, 30),
        utc(2026, 11, 3, 6, 30),
    ]


def test_from_the_second_pass_of_the_overlap_the_repeated_times_do_not_fire_again() -> None:
    schedule = cron("30 1 * * *")
    assert next_fire(schedule, NEW_YORK, utc(2026, 11, 1, 6, 10)) == utc(2026, 11, 2, 6, 30)  # 01:10 EST
    assert next_fire(cron("*/10 1 * * *"), NEW_YORK, utc(2026, 11, 1, 6, 10)) == utc(2026, 11, 2, 6)


def test_a_fixed_hour_range_over_the_fall_back() -> None:
    assert fires_of("0 1-3 * * *", NEW_YORK, utc(2026, 11, 1, 4, 30), 4) == [
        utc(2026, 11, 1, 5),  # 01:00 EDT
        utc(2026, 11, 1, 7),  # 02:00 EST
        utc(2026, 11, 1, 8),  # 03:00 EST
        utc(2026, 11, 2, 6),
    ]


def test_a_two_hour_overlap() -> None:
    # Troll goes back from +02 to +00 at 01:00Z: 01:00-03:00 local happens twice.
    assert next_fire(cron("30 2 * * *"), ZoneInfo("Antarctica/Troll"), utc(2026, 10, 24, 12)) == utc(
        2026, 10, 25, 0, 30
    )


# ---------------------------------------------------------------------------------------------- wildcard hour


@pytest.mark.parametrize("expr", ["0 * * * *", "@hourly"])
def test_hourly_runs_every_sixty_real_minutes_through_the_fall_back(expr: str) -> None:
    got = fires_of(expr, NEW_YORK, utc(2026, 11, 1, 3, 30), 6)
    assert got == [utc(2026, 11, 1, hour) for hour in range(4, 10)]  # 01:00 EDT and 01:00 EST both fire


@pytest.mark.parametrize("expr", ["0 * * * *", "@hourly"])
def test_hourly_runs_every_sixty_real_minutes_through_the_gap(expr: str) -> None:
    got = fires_of(expr, NEW_YORK, utc(2026, 3, 8, 4, 30), 4)
    assert got == [utc(2026, 3, 8, hour) for hour in range(5, 9)]  # 00:00 EST, 01:00 EST, 03:00 EDT, 04:00


def test_every_fifteen_minutes_keeps_real_fifteen_minutes() -> None:
    fall = fires_of("*/15 * * * *", NEW_YORK, utc(2026, 11, 1, 4, 50), 10)
    assert fall == [utc(2026, 11, 1, 5) + timedelta(minutes=15 * i) for i in range(10)]
    spring = fires_of("*/15 * * * *", NEW_YORK, utc(2026, 3, 8, 6, 40), 3)
    assert spring == [
        utc(2026, 3, 8, 6, 45),
        utc(2026, 3, 8, 7),
        utc(2026, 3, 8, 7, 15),
    ]  # 01:45 EST, 03:00 EDT


def test_wildcard_hours_skip_the_gap() -> None:
    # The chosen rule (Vixie's for wildcard jobs): a step job has nothing to do at 02:00 on a day without
    # one; it is not moved to 03:00.
    assert fires_of("0 */2 * * *", NEW_YORK, utc(2026, 3, 8, 4, 30), 3) == [
        utc(2026, 3, 8, 5),  # 00:00 EST
        utc(2026, 3, 8, 8),  # 04:00 EDT
        utc(2026, 3, 8, 10),
    ]
    sao_paulo = ZoneInfo("America/Sao_Paulo")
    assert fires_of("0 */2 * * *", sao_paulo, utc(2018, 11, 4, 0, 30), 2) == [
        utc(2018, 11, 4, 1),
        utc(2018, 11, 4, 4),
    ]


def test_a_stepped_hour_range_is_wildcard_too() -> None:
    assert fires_of("0 1-23/2 * * *", NEW_YORK, utc(2026, 11, 1, 4, 30), 3) == [
        utc(2026, 11, 1, 5),  # 01:00 EDT
        utc(2026, 11, 1, 6),  # 01:00 EST
        utc(2026, 11, 1, 8),  # 03:00 EST
    ]


def test_wildcard_hours_from_inside_the_overlap() -> None:
    # From 01:20 EDT, the first pass's 01:30 comes first, then 01:00 EST and every later quarter.
    assert fires_of("0,30 * * * *", NEW_YORK, utc(2026, 11, 1, 5, 20), 4) == [
        utc(2026, 11, 1, 5, 30),
        utc(2026, 11, 1, 6),
        utc(2026, 11, 1, 6, 30),
        utc(2026, 11, 1, 7),
    ]
    # From 01:40 EDT nothing is left in the first pass: 01:00 EST is next.
    assert next_fire(cron("0,30 * * * *"), NEW_YORK, utc(2026, 11, 1, 5, 40)) == utc(2026, 11, 1, 6)
    # From 01:40 EST, 02:00 EST.
    assert next_fire(cron("0,30 * * * *"), NEW_YORK, utc(2026, 11, 1, 6, 40)) == utc(2026, 11, 1, 7)


# ---------------------------------------------------------------------------------------------- odd zones


def test_lord_howe_thirty_minute_fall_back() -> None:
    # 2026-04-05 02:00 +11 -> 01:30 +10:30 (15:00Z): 01:30-02:00 happens twice.
    assert fires_of("45 1 * * *", LORD_HOWE, utc(2026, 4, 4, 12), 2) == [
        utc(2026, 4, 4, 14, 45),  # 01:45 +11, the first occurrence only
        utc(2026, 4, 5, 15, 15),  # 01:45 +10:30 the next day
    ]
    assert fires_of("30 * * * *", LORD_HOWE, utc(2026, 4, 4, 13), 4) == [
        utc(2026, 4, 4, 13, 30),  # 00:30 +11
        utc(2026, 4, 4, 14, 30),  # 01:30 +11
        utc(2026, 4, 4, 15),  # 01:30 +10:30, thirty real minutes later
        utc(2026, 4, 4, 16),  # 02:30 +10:30
    ]


def test_lord_howe_thirty_minute_spring_forward() -> None:
    # 2026-10-04 02:00 +10:30 -> 02:30 +11 (15:30Z): 02:00-02:30 does not exist.
    assert fires_of("15 2 * * *", LORD_HOWE, utc(2026, 10, 3, 12), 2) == [
        utc(2026, 10, 3, 15, 30),
        utc(2026, 10, 4, 15, 15),
    ]
    assert fires_of("0 * * * *", LORD_HOWE, utc(2026, 10, 3, 14), 3) == [
        utc(2026, 10, 3, 14, 30),  # 01:00 +10:30
        utc(2026, 10, 3, 16),  # 03:00 +11: there is no 02:00
        utc(2026, 10, 3, 17),
    ]


def test_chatham_transitions_at_a_quarter_to() -> None:
    chatham = ZoneInfo("Pacific/Chatham")  # 2026-09-27 02:45 +12:45 -> 03:45 +13:45 (14:00Z)
    assert next_fire(cron("0 3 * * *"), chatham, utc(2026, 9, 26, 12)) == utc(2026, 9, 26, 14)
    assert next_fire(cron("45 2 * * *"), chatham, utc(2026, 9, 26, 12)) == utc(2026, 9, 26, 14)
    # 2026-04-05 03:45 +13:45 -> 02:45 +12:45: 03:00 fires at its first occurrence.
    assert next_fire(cron("0 3 * * *"), chatham, utc(2026, 4, 4, 12)) == utc(2026, 4, 4, 13, 15)


def test_kathmandu_quarter_hour_offset() -> None:
    kathmandu = ZoneInfo("Asia/Kathmandu")  # +05:45, no DST
    assert fires_of("0 9 * * *", kathmandu, utc(2026, 6, 1), 2) == [
        utc(2026, 6, 1, 3, 15),
        utc(2026, 6, 2, 3, 15),
    ]
    assert fires_of("*/30 * * * *", kathmandu, utc(2026, 6, 1), 2) == [
        utc(2026, 6, 1, 0, 15),
        utc(2026, 6, 1, 0, 45),
    ]


def test_utc() -> None:
    assert fires_of("0 4 * * *", ZoneInfo("UTC"), utc(2026, 3, 29), 2) == [
        utc(2026, 3, 29, 4),
        utc(2026, 3, 30, 4),
    ]


# ---------------------------------------------------------------------------------------------- fields


def test_six_fields_follow_the_same_rules() -> None:
    # Gap: the first instant after the gap, 03:00:00 EDT.
    assert fires_of("30 30 2 * * *", NEW_YORK, utc(2026, 3, 7, 12), 2) == [
        utc(2026, 3, 8, 7),
        utc(2026, 3, 9, 6, 30, 30),
    ]
    # Overlap, fixed hour: once.
    assert fires_of("0 30 1 * * *", NEW_YORK, utc(2026, 10, 31, 12), 2) == [
        utc(2026, 11, 1, 5, 30),
        utc(2026, 11, 2, 6, 30),
    ]
    # Overlap, wildcard hour: both occurrences.
    assert fires_of("15 0 * * * *", NEW_YORK, utc(2026, 11, 1, 4, 30), 3) == [
        utc(2026, 11, 1, 5, 0, 15),
        utc(2026, 11, 1, 6, 0, 15),
        utc(2026, 11, 1, 7, 0, 15),
    ]


def test_weekly_over_a_spring_forward() -> None:
    berlin = ZoneInfo("Europe/Berlin")  # 2026-03-29 02:00 CET -> 03:00 CEST, after the Sunday's midnight
    assert fires_of("@weekly", berlin, utc(2026, 3, 25), 3) == [
        utc(2026, 3, 28, 23),  # Sunday 00:00 CET
        utc(2026, 4, 4, 22),  # Sunday 00:00 CEST
        utc(2026, 4, 11, 22),
    ]


def test_day_of_month_or_day_of_week() -> None:
    # Vixie: the 13th OR a Friday. January 2026 starts on a Thursday; the 13th is a Tuesday.
    got = fires_of("0 12 13 * 5", ZoneInfo("Europe/Berlin"), utc(2026, 1, 1), 5)
    assert got == [utc(2026, 1, day, 11) for day in (2, 9, 13, 16, 23)]


def test_monthly_and_yearly() -> None:
    assert fires_of("@monthly", NEW_YORK, utc(2026, 1, 15), 3) == [
        utc(2026, 2, 1, 5),
        utc(2026, 3, 1, 5),
        utc(2026, 4, 1, 4),
    ]
    assert next_fire(cron("0 0 29 2 *"), ZoneInfo("UTC"), utc(2097, 1, 1)) == utc(2104, 2, 29)
    assert next_fire(cron("0 0 31 * *"), ZoneInfo("UTC"), utc(2026, 1, 31)) == utc(2026, 3, 31)


# ---------------------------------------------------------------------------------------------- API


def test_fires_between_excludes_the_start_and_includes_the_end() -> None:
    got = list(fires_between(cron("0 * * * *"), ZoneInfo("UTC"), utc(2026, 1, 1, 1), utc(2026, 1, 1, 3)))
    assert got == [utc(2026, 1, 1, 2), utc(2026, 1, 1, 3)]
    assert (
        list(fires_between(cron("0 * * * *"), ZoneInfo("UTC"), utc(2026, 1, 1, 1), utc(2026, 1, 1, 1))) == []
    )


def test_fires_between_through_a_fall_back() -> None:
    got = list(fires_between(cron("0 * * * *"), NEW_YORK, utc(2026, 11, 1, 4), utc(2026, 11, 1, 7)))
    assert got == [utc(2026, 11, 1, 5), utc(2026, 11, 1, 6), utc(2026, 11, 1, 7)]


def test_results_are_utc_and_strictly_after_any_aware_input() -> None:
    tokyo = datetime(2026, 3, 8, 16, 0, tzinfo=ZoneInfo("Asia/Tokyo"))  # 07:00Z, the gap's fire itself
    fire = next_fire(cron("30 2 * * *"), NEW_YORK, tokyo)
    assert fire == utc(2026, 3, 9, 6, 30)
    assert fire is not None
    assert fire.tzinfo is UTC
    assert next_fire(cron("30 2 * * *"), NEW_YORK, utc(2026, 3, 8, 6, 59, 59, 999_999)) == utc(2026, 3, 8, 7)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        next_fire(cron("0 4 * * *"), NEW_YORK, datetime(2026, 1, 10, 12))
    with pytest.raises(ValueError, match="aware"):
        fires_between(cron("0 4 * * *"), NEW_YORK, utc(2026, 1, 10), datetime(2026, 1, 11))


def test_the_schedule_method_is_the_same_maths() -> None:
    schedule = cron("30 1 * * *")
    assert schedule.next_after(utc(2026, 11, 1, 5, 30), NEW_YORK) == utc(2026, 11, 2, 6, 30)


def test_nothing_beyond_datetimes_range() -> None:
    assert next_fire(cron("0 4 * * *"), ZoneInfo("UTC"), datetime.max.replace(tzinfo=UTC)) is None
