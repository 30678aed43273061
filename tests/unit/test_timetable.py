"""The scheduler's timetable (next fires in a heap) and the catch-up rule of SPEC §3.4."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from service.domain.timetable import Fire, Timetable, plan_fire

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 27, 4, 0, tzinfo=UTC)
A, B, C = (UUID(int=i) for i in (1, 2, 3))
HOUR = timedelta(hours=1)


def minutes(n: float) -> datetime:
    return T0 + timedelta(minutes=n)


def test_due_fires_come_out_earliest_first_and_only_once() -> None:
    table = Timetable()
    table.set(A, minutes(2))
    table.set(B, minutes(1))
    table.set(C, minutes(5))
    assert table.next_due() == minutes(1)
    assert list(table.take_due(minutes(3))) == [(B, minutes(1)), (A, minutes(2))]
    assert list(table.take_due(minutes(3))) == []
    assert table.next_due() == minutes(5)
    assert len(table) == 1


def test_an_edit_replaces_the_old_fire_and_a_disable_removes_it() -> None:
    table = Timetable()
    table.set(A, minutes(1))
    table.set(B, minutes(2))
    table.set(A, minutes(10))  # the cron changed
    table.set(B, None)  # disabled or deleted
    assert table.next_due() == minutes(10)
    assert list(table.take_due(minutes(60))) == [(A, minutes(10))]


def test_many_changes_keep_the_heap_small_and_the_answers_right() -> None:
    rng = random.Random(7)
    table = Timetable()
    expected: dict[UUID, datetime | None] = {}
    for _ in range(20_000):
        job = UUID(int=rng.randrange(100))
        fire = None if rng.random() < 0.2 else minutes(rng.randrange(1000))
        table.set(job, fire)
        expected[job] = fire
    assert len(table._heap) <= 2 * len(table) + 1024
    due = list(table.take_due(minutes(2000)))
    assert sorted(due) == sorted((job, fire) for job, fire in expected.items() if fire is not None)
    instants = [fire for _, fire in due]
    assert instants == sorted(instants)


def every_hour(start: datetime, end: datetime) -> Iterator[datetime]:
    instant = start + HOUR
    while instant <= end:
        yield instant
        instant += HOUR


def test_a_fire_on_time_or_a_little_late_is_an_ordinary_fire() -> None:
    assert plan_fire(A, T0, T0 + timedelta(seconds=3), HOUR, every_hour) == Fire(A, T0, "schedule")


def test_fires_missed_inside_the_window_become_one_catch_up_run_at_the_latest() -> None:
    now = T0 + timedelta(hours=5, minutes=30)  # missed 04:00 .. 09:00; the window is 2 h
    fire = plan_fire(A, T0, now, 2 * HOUR, every_hour)
    assert fire == Fire(A, T0 + 5 * HOUR, "catchup", missed_fires=4)  # 08:00, 09:00 in the window


def test_fires_missed_before_the_window_are_only_counted() -> None:
    now = T0 + timedelta(hours=2, minutes=30)
    assert plan_fire(A, T0, now, timedelta(0), every_hour) == Fire(A, T0 + 2 * HOUR, "missed", missed_fires=3)


def test_two_fires_due_at_once_are_a_catch_up_however_recent() -> None:
    every_second = timedelta(seconds=1)

    def seconds(start: datetime, end: datetime) -> Iterator[datetime]:
        instant = start + every_second
        while instant <= end:
            yield instant
            instant += every_second

    now = T0 + timedelta(seconds=2, milliseconds=500)  # 04:00:00, :01 and :02 are due
    assert plan_fire(A, T0, now, HOUR, seconds) == Fire(A, T0 + 2 * every_second, "catchup")
