"""When a cron schedule fires in a time zone, with the daylight-saving rules of SPEC §3.2 (Vixie cron's).

Pure: no clock, no I/O. Two steps:

1. Wall-clock candidates: the first local wall time after a given one that matches, walked over the value
   sets croniter expanded the expression into (`CronSchedule.fields`, cron.py), so the dialect stays
   croniter's. croniter's own iterator is not used: it costs 55-130 µs a call here (the scheduler needs
   the next fire of 100,000 jobs at start-up), and with a zone it fires a fixed time twice on a fall-back.
2. Wall time to real instants:
   - fixed-hour expressions (hour field a value, list or range: `30 2 * * *`, `0 1-3 * * *`, `@daily`):
     a wall time in a spring-forward gap fires once, at the first instant after the gap (gap times
     coalesce into that one fire, and with a fire at the gap's end); a wall time that a fall-back repeats
     fires once, at its first occurrence.
   - wildcard-hour expressions (the hour field has a `*` or a `/` step: `*/15 * * * *`, `0 */2 * * *`,
     `0 0-6/2 * * *`, `@hourly`): every real instant whose wall time matches fires, so a repeated time
     fires at both occurrences, and a gap's times, which no instant has, are skipped, as Vixie skips them
     for its wildcard jobs: `0 */2 * * *` over a 02:00->03:00 gap fires at 00:00, then 04:00.

Away from transitions a candidate wall time has exactly one instant and that is the answer: the common
case costs a walk of the sets and two `utcoffset` look-ups. Only when `after` or the candidate sits in a
gap or an overlap does `_near_transition` look for the transition itself (a binary search on offsets).
"""

from __future__ import annotations

import calendar
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from service.domain.cron import CronSchedule

__all__ = ["fires", "fires_between", "next_fire"]

# An expression that can fire at all does so within 8 years (Feb 29 skips 2100); look a little further.
_HORIZON_DAYS = 366 * 10
_LAST_ORDINAL = date.max.toordinal()
_DAY_S = 86_400
_ZERO = timedelta(0)
_SECOND = timedelta(seconds=1)
_TICK = timedelta(microseconds=1)
_EPOCH = datetime(1970, 1, 1)  # naive UTC: the careful path computes in naive UTC and local wall times


@dataclass(frozen=True, slots=True)
class _Plan:
    """An expression's value sets, ready to walk, and which DST rule it follows."""

    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    doms: frozenset[int]
    dom_list: tuple[int, ...]  # the same, sorted: monthly jobs jump to their day
    months: frozenset[int]
    dows: frozenset[int]  # 0 = Sunday
    days_or: bool  # Vixie: day-of-month and day-of-week both restricted, either one matches
    every_day: bool
    dom_only: bool  # day-of-week is `*`: only the day of the month (and the month) decide
    wild_hour: bool

    def day_matches(self, day: date) -> bool:
        if self.every_day:
            return True
        if day.month not in self.months:
            return False
        in_dom = day.day in self.doms
        in_dow = day.isoweekday() % 7 in self.dows
        return (in_dom or in_dow) if self.days_or else (in_dom and in_dow)

    def time_from(self, t: int) -> tuple[int, int, int] | None:
        """The first fire time of a day at or after second-of-day `t`, as (hour, minute, second)."""
        hours, minutes, seconds = self.hours, self.minutes, self.seconds
        h, rest = divmod(t, 3600)
        m, s = divmod(rest, 60)
        i = bisect_left(hours, h)
        if i < len(hours) and hours[i] == h:
            j = bisect_left(minutes, m)
            if j < len(minutes) and minutes[j] == m:
                k = bisect_left(seconds, s)
                if k < len(seconds):
                    return h, m, seconds[k]
                j += 1
            if j < len(minutes):
                return h, minutes[j], seconds[0]
            i += 1
        if i < len(hours):
            return hours[i], minutes[0], seconds[0]
        return None

    def next_day(self, day: date) -> date | None:
        """The first day after `day` that matches, within the horizon."""
        o = day.toordinal() + 1
        limit = min(o + _HORIZON_DAYS, _LAST_ORDINAL)
        while o <= limit:
            d = date.fromordinal(o)
            if self.every_day:
                return d
            if d.month in self.months:
                if not self.dom_only:
                    if self.day_matches(d):
                        return d
                    o += 1
                    continue
                i = bisect_left(self.dom_list, d.day)
                if i < len(self.dom_list) and self.dom_list[i] <= calendar.monthrange(d.year, d.month)[1]:
                    return d.replace(day=self.dom_list[i])
            o += calendar.monthrange(d.year, d.month)[1] - d.day + 1  # to the 1st of the next month
        return None

    def next_wall(self, wall: datetime) -> datetime | None:
        """The first matching wall time strictly after the naive wall time `wall`; fires are whole seconds."""
        t = wall.hour * 3600 + wall.minute * 60 + wall.second + 1
        day = wall.date()
        if t < _DAY_S and self.day_matches(day):
            hms = self.time_from(t)
            if hms is not None:
                return datetime(day.year, day.month, day.day, *hms)
        next_day = self.next_day(day)
        if next_day is None:
            return None
        return datetime(
            next_day.year, next_day.month, next_day.day, self.hours[0], self.minutes[0], self.seconds[0]
        )


_plans: dict[str, _Plan] = {}


def _plan(schedule: CronSchedule) -> _Plan:
    # A memo by expression: plans are immutable, so threads may share them (a race builds one twice).
    plan = _plans.get(schedule.expression)
    if plan is None:
        if len(_plans) >= 4096:
            _plans.clear()
        plan = _plans[schedule.expression] = _build_plan(schedule)
    return plan


def _build_plan(schedule: CronSchedule) -> _Plan:
    f = schedule.fields
    text = schedule.expression
    if text.startswith("@"):
        hour_field = "*" if text.lower() == "@hourly" else "0"
    else:
        hour_field = text.split(" ")[2 if schedule.has_seconds else 1]
    return _Plan(
        seconds=f.seconds,
        minutes=f.minutes,
        hours=f.hours,
        doms=f.doms,
        dom_list=tuple(sorted(f.doms)),
        months=frozenset(f.months),
        dows=f.dows,
        days_or=f.days_or,
        every_day=not f.days_or and len(f.doms) == 31 and len(f.months) == 12 and len(f.dows) == 7,
        dom_only=not f.days_or and len(f.dows) == 7,
        wild_hour="*" in hour_field or "/" in hour_field,
    )


def next_fire(schedule: CronSchedule, tz: ZoneInfo, after: datetime) -> datetime | None:
    """The first fire strictly after the aware instant `after`, evaluated in `tz`, as an aware UTC datetime.

    None when nothing fires within the horizon (about ten years) or within datetime's range.
    """
    if after.utcoffset() is None:
        raise ValueError("next_fire needs an aware datetime")
    plan = _plan(schedule)
    try:
        local = after.astimezone(tz)
        wall = local.replace(tzinfo=None)
        candidate = plan.next_wall(wall)
        if candidate is None:
            return None
        # Away from transitions: `after` is not in the second pass of an overlap (nor, for wildcard hours,
        # in the first pass, whose times come again) and the candidate has one instant: that is the fire.
        if not local.fold and (not plan.wild_hour or tz.utcoffset(wall.replace(fold=1)) == local.utcoffset()):
            offset = tz.utcoffset(candidate) or _ZERO
            if offset == (tz.utcoffset(candidate.replace(fold=1)) or _ZERO):
                return (candidate - offset).replace(tzinfo=UTC)
        return _near_transition(plan, tz, local, candidate)
    except OverflowError:  # near datetime.min/max
        return None


def fires(schedule: CronSchedule, tz: ZoneInfo, after: datetime, count: int) -> list[datetime]:
    """The next `count` fires strictly after `after` (fewer if the schedule runs out within the horizon)."""
    out: list[datetime] = []
    current: datetime | None = after
    while len(out) < count and current is not None:
        current = next_fire(schedule, tz, current)
        if current is not None:
            out.append(current)
    return out


def fires_between(schedule: CronSchedule, tz: ZoneInfo, start: datetime, end: datetime) -> Iterator[datetime]:
    """The fires in (start, end], in order: what the scheduler's catch-up looks at."""
    if end.utcoffset() is None:
        raise ValueError("fires_between needs aware datetimes")
    first = next_fire(schedule, tz, start)  # checks `start` now rather than at the first iteration
    return _until(schedule, tz, first, end)


def _until(schedule: CronSchedule, tz: ZoneInfo, fire: datetime | None, end: datetime) -> Iterator[datetime]:
    while fire is not None and fire <= end:
        yield fire
        fire = next_fire(schedule, tz, fire)


def _near_transition(
    plan: _Plan, tz: ZoneInfo, local: datetime, candidate: datetime | None
) -> datetime | None:
    """The careful path: `after` (as `local`) or the first matching wall time after it is at a transition.

    Works in naive UTC and naive wall times. `candidate` is the first matching wall time after `local`'s.
    """
    wall = local.replace(tzinfo=None, fold=0)
    offset_now = local.utcoffset() or _ZERO
    after = wall - offset_now
    best: datetime | None = None  # for wildcard hours: the earliest second occurrence found so far
    if local.fold:
        if not plan.wild_hour:
            # Second pass of an overlap: every wall time up to the overlap's end fired in the first pass.
            offset_first = tz.utcoffset(wall) or _ZERO
            shift_s = (offset_first - offset_now) // _SECOND
            transition = _transition(tz, _timestamp(after) - shift_s, _timestamp(after))
            candidate = plan.next_wall(transition + offset_first - _TICK)
    elif plan.wild_hour:
        offset_second = tz.utcoffset(wall.replace(fold=1)) or _ZERO
        if offset_second != offset_now:
            # First pass of an overlap: the times from the overlap's start up to now come again, after the
            # transition; the earliest of those that matches may fire before anything later.
            shift_s = (offset_now - offset_second) // _SECOND
            transition = _transition(tz, _timestamp(after), _timestamp(after) + shift_s)
            again = plan.next_wall(transition + offset_second - _TICK)
            if again is not None and again <= wall:
                best = again - offset_second
    while candidate is not None:
        offset0 = tz.utcoffset(candidate) or _ZERO  # first occurrence, or the offset before a gap
        offset1 = tz.utcoffset(candidate.replace(fold=1)) or _ZERO  # second occurrence, or after a gap
        if offset0 == offset1:
            fire = candidate - offset0
        elif offset0 > offset1:  # repeated wall time
            fire = candidate - offset0
            if plan.wild_hour and fire <= after:
                fire = candidate - offset1
        else:  # a wall time that does not exist
            gap_end = _transition(tz, _timestamp(candidate - offset1), _timestamp(candidate - offset0))
            if plan.wild_hour:
                candidate = plan.next_wall(gap_end + offset1 - _TICK)  # skipped: go on from the gap's end
                continue
            fire = gap_end
        if best is not None and best < fire:
            fire = best
        return fire.replace(tzinfo=UTC)
    return None if best is None else best.replace(tzinfo=UTC)


def _timestamp(naive_utc: datetime) -> int:
    return (naive_utc - _EPOCH) // _SECOND


def _offset_at(tz: ZoneInfo, timestamp: int) -> timedelta | None:
    return datetime.fromtimestamp(timestamp, tz).utcoffset()


def _transition(tz: ZoneInfo, low: int, high: int) -> datetime:
    """The transition between the timestamps `low` and `high` (whose offsets differ), as naive UTC: the
    first second whose offset is not `low`'s. Transitions are on whole seconds."""
    before = _offset_at(tz, low)
    while high - low > 1:
        middle = (low + high) // 2
        if _offset_at(tz, middle) == before:
            low = middle
        else:
            high = middle
    return _EPOCH + timedelta(seconds=high)
