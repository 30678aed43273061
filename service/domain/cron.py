"""The one cron dialect of the service (SPEC §3.1): validation and firing both go through here.

Validation is stricter than croniter on purpose: croniter accepts Quartz/Jenkins extensions (`?`, `L`,
`W`, `#`, `H`) and reads an equal range such as `5-5` as the whole field, so every field is checked
against a small Vixie-cron grammar first, with messages that name the field. The accepted text is then
expanded by croniter itself, so the sets we reason about (minimum interval) are the ones that will fire;
`schedule.py` computes the fire instants from those same sets.
"""

from __future__ import annotations

import calendar
import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

from croniter import CroniterBadCronError, croniter

from service.domain.errors import ValidationFailed
from service.domain.schedule import next_fire

__all__ = ["MACROS", "CronSchedule", "normalize_cron", "parse_cron"]

FIELD = "cronSchedule"

# The macros and what they mean; croniter expands the same way.
_MACRO_FIELDS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
MACROS: frozenset[str] = frozenset(_MACRO_FIELDS)

# The Gregorian calendar repeats (dates and weekdays alike) every 400 years = 146097 days.
_CYCLE_START_YEAR = 2000
_CYCLE_YEARS = 400
_CYCLE_DAYS = 146_097
_DAY_S = 86_400


@dataclass(frozen=True)
class _FieldSpec:
    name: str
    low: int
    high: int
    names: dict[str, int]

    @property
    def span(self) -> int:
        return self.high - self.low + 1


_MONTH_NAMES = {name.lower(): i for i, name in enumerate(calendar.month_abbr) if name}
_DOW_NAMES = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}

_SECOND = _FieldSpec("second", 0, 59, {})
_MINUTE = _FieldSpec("minute", 0, 59, {})
_HOUR = _FieldSpec("hour", 0, 23, {})
_DOM = _FieldSpec("day-of-month", 1, 31, {})
_MONTH = _FieldSpec("month", 1, 12, _MONTH_NAMES)
_DOW = _FieldSpec("day-of-week", 0, 7, _DOW_NAMES)  # 0 and 7 are both Sunday (POSIX/Vixie)
_FIVE = (_MINUTE, _HOUR, _DOM, _MONTH, _DOW)
_SIX = (_SECOND, *_FIVE)

# One list item: `*`, `v` or `v-v`, optionally `/step`. ASCII only: `\d` would admit other scripts' digits.
_ITEM_RE = re.compile(r"(?:(?P<star>\*)|(?P<lo>[0-9a-z]+)(?:-(?P<hi>[0-9a-z]+))?)(?:/(?P<step>[0-9]+))?")

# Recognisable extensions of other cron dialects, to say why they are refused.
_EXTENSION_HINTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\?"), "'?' is not supported, use '*'"),
    (re.compile(r"#"), "'#' (nth weekday) is not supported"),
    (re.compile(r"^h(?:\(|/|$)"), "'H' (hashed values) is not supported"),
    (re.compile(r"^(?:l|lw|[0-9]+l|l-[0-9]+)$"), "'L' (last) is not supported"),
    (re.compile(r"^(?:[0-9]+w|w[0-9]+)$"), "'W' (nearest weekday) is not supported"),
)


def normalize_cron(expr: str) -> str:
    """Trim and collapse internal whitespace to single spaces: the stored form of a cron (SPEC §2.4)."""
    return " ".join(expr.split())


@dataclass(frozen=True)
class CronSchedule:
    """A validated cron expression; build it with `parse_cron`."""

    expression: str
    has_seconds: bool

    # The value sets that fire (croniter's expansion); schedule.py walks them. Derived from `expression`.
    fields: _Expanded = field(compare=False, repr=False, kw_only=True)

    def next_after(self, after: datetime, tz: ZoneInfo) -> datetime | None:
        """First fire strictly after the aware instant `after`, evaluated in `tz`, as an aware UTC datetime.

        None when nothing fires within the horizon (about ten years). See `schedule.next_fire`.
        """
        return next_fire(self, tz, after)


def parse_cron(expr: str, *, min_interval_s: int) -> CronSchedule:
    """Validate `expr` (SPEC §3.1) and return its normalised schedule.

    Raises `ValidationFailed("cronSchedule", "invalid_cron" | "too_frequent", ...)`.
    `min_interval_s` = 0 disables the frequency check.
    """
    return _parse(normalize_cron(expr), min_interval_s)


@lru_cache(maxsize=1024)
def _parse(text: str, min_interval_s: int) -> CronSchedule:
    if not text:
        raise _invalid("the expression is empty")
    if text.startswith("@"):
        if text.lower() not in MACROS:
            raise _invalid(f"unknown macro '{text}' (use one of {', '.join(sorted(MACROS))})")
        fields = _MACRO_FIELDS[text.lower()].split(" ")
        specs: Sequence[_FieldSpec] = _FIVE
        has_seconds = False
    else:
        fields = text.split(" ")
        if len(fields) not in (5, 6):
            raise _invalid(f"expected 5 fields (or 6 with seconds first), got {len(fields)}")
        has_seconds = len(fields) == 6
        specs = _SIX if has_seconds else _FIVE
        for spec, field_text in zip(specs, fields, strict=True):
            _check_field(spec, field_text)

    expanded = _expand(text, specs, fields)
    _check_can_fire(expanded, fields, has_seconds)
    if min_interval_s > 0:
        gap = _min_gap_s(expanded, stop_at=min_interval_s)
        if gap < min_interval_s:
            raise ValidationFailed(
                FIELD, "too_frequent", f"cron fires more often than once every {min_interval_s} s"
            )
    return CronSchedule(expression=text, has_seconds=has_seconds, fields=expanded)


def _invalid(reason: str) -> ValidationFailed:
    return ValidationFailed(FIELD, "invalid_cron", f"invalid cron expression: {reason}")


def _field_error(spec: _FieldSpec, text: str, problem: str) -> ValidationFailed:
    return _invalid(f"{spec.name} field '{text}' {problem}")


def _check_field(spec: _FieldSpec, text: str) -> None:
    """Check one field against the Vixie grammar: lists of `*`, values, ranges, each with an optional step."""
    for item in text.lower().split(","):
        m = _ITEM_RE.fullmatch(item)
        tokens = [] if m is None else [t for t in (m["lo"], m["hi"]) if t is not None]
        if m is None or any(not t.isdigit() and t not in spec.names for t in tokens):
            hint = next((h for pattern, h in _EXTENSION_HINTS if pattern.search(item)), None)
            raise _field_error(spec, text, f"is not valid ({hint})" if hint else "is not valid")
        values = [int(t) if t.isdigit() else spec.names[t] for t in tokens]
        if any(not spec.low <= v <= spec.high for v in values):
            raise _field_error(spec, text, f"is out of range {spec.low}-{spec.high}")
        # croniter reads an equal range as the whole field ("5-5" = every minute, and "7-sun" too, as it
        # folds 7 to 0 first); refuse the trap. "0-7" stays: it does mean every day.
        ends = [v % 7 for v in values] if spec is _DOW else values
        if len(ends) == 2 and ends[0] == ends[1] and values != [0, 7]:
            raise _field_error(
                spec, text, f"is not valid (a range needs two different ends; write '{m['lo']}')"
            )
        if m["step"] is not None:
            step = int(m["step"])
            if step == 0:
                raise _field_error(spec, text, "has a zero step")
            if step > spec.span:
                raise _field_error(spec, text, f"has a step larger than the range {spec.low}-{spec.high}")


@dataclass(frozen=True)
class _Expanded:
    """The concrete value sets croniter will fire on; `days_or` is Vixie's dom-OR-dow rule."""

    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    doms: frozenset[int]
    months: tuple[int, ...]
    dows: frozenset[int]  # 0 = Sunday
    days_or: bool


def _expand(text: str, specs: Sequence[_FieldSpec], fields: Sequence[str]) -> _Expanded:
    try:
        raw: Sequence[Sequence[int | str]] = croniter.expand(text, second_at_beginning=True)[0]
    except CroniterBadCronError:
        # Our grammar accepted something croniter did not: blame the first field it rejects alone.
        for i, spec in enumerate(specs):
            probe = ["*"] * len(fields)
            probe[i] = fields[i]
            if not croniter.is_valid(" ".join(probe), second_at_beginning=True):
                raise _field_error(spec, fields[i], "is not valid") from None
        raise _invalid(f"'{text}' is not valid") from None

    # croniter orders fields minute, hour, dom, month, dow[, second] whatever the input order.
    def values(i: int, low: int, high: int) -> tuple[int, ...]:
        got = raw[i]
        if got[0] == "*":
            return tuple(range(low, high + 1))
        return tuple(sorted(int(v) for v in got))

    return _Expanded(
        seconds=values(5, 0, 59) if len(raw) > 5 else (0,),
        minutes=values(0, 0, 59),
        hours=values(1, 0, 23),
        doms=frozenset(values(2, 1, 31)),
        months=values(3, 1, 12),
        dows=frozenset(v % 7 for v in values(4, 0, 6)),
        days_or=raw[2][0] != "*" and raw[4][0] != "*",
    )


def _check_can_fire(e: _Expanded, fields: Sequence[str], has_seconds: bool) -> None:
    """Refuse day/month combinations that never occur (`0 0 30 2 *`): such a job could never run."""
    if e.days_or:
        return  # a restricted day-of-week always matches some day
    longest = max(29 if m == 2 else calendar.monthrange(2001, m)[1] for m in e.months)
    if min(e.doms) > longest:
        offset = 1 if has_seconds else 0
        raise _field_error(_DOM, fields[2 + offset], f"never occurs in month field '{fields[3 + offset]}'")


def _min_step(values: Sequence[int]) -> int | None:
    """Smallest difference between neighbours of a sorted sequence, None if it has fewer than two."""
    return min((b - a for a, b in itertools.pairwise(values)), default=None)


def _min_gap_s(e: _Expanded, *, stop_at: int | None = None) -> int:
    """Exact smallest gap in seconds between two consecutive fires, in wall-clock time.

    The fires of one day are the product hours x minutes x seconds in lexicographic order, so two
    neighbours differ in the second only, or step to the next minute, or to the next hour; the
    smallest gap of each kind comes from the smallest step of that field. Across days, the gap is
    (days between fired days) x 86400 - (last fire of a day - first fire of a day).

    With `stop_at`, the calendar is only scanned when a day boundary could produce a gap below it
    (the result is then a lower bound that is still >= stop_at).
    """
    s, m, h = e.seconds, e.minutes, e.hours
    span_s = s[-1] - s[0]
    span_ms = (m[-1] * 60 + s[-1]) - (m[0] * 60 + s[0])
    span_day = h[-1] * 3600 + m[-1] * 60 + s[-1] - (h[0] * 3600 + m[0] * 60 + s[0])
    candidates: list[int] = []
    if (ds := _min_step(s)) is not None:
        candidates.append(ds)
    if (dm := _min_step(m)) is not None:
        candidates.append(dm * 60 - span_s)
    if (dh := _min_step(h)) is not None:
        candidates.append(dh * 3600 - span_ms)
    # Consecutive fired days are at least one day apart; scan the calendar only if that could matter.
    if stop_at is not None and _DAY_S - span_day >= stop_at:
        candidates.append(_DAY_S - span_day)
    else:
        candidates.append(_min_day_gap(e) * _DAY_S - span_day)
    return min(candidates)


def _fired_days(e: _Expanded) -> Iterable[int]:
    """Ordinals of the fired days over one 400-year Gregorian cycle, ascending."""
    all_doms = len(e.doms) == 31
    all_dows = len(e.dows) == 7
    for year in range(_CYCLE_START_YEAR, _CYCLE_START_YEAR + _CYCLE_YEARS):
        for month in e.months:
            first_weekday, length = calendar.monthrange(year, month)  # weekday: Monday = 0
            base = date(year, month, 1).toordinal() - 1
            for day in range(1, length + 1):
                dom_ok = all_doms or day in e.doms
                dow_ok = all_dows or (first_weekday + day) % 7 in e.dows  # cron: Sunday = 0
                if (dom_ok or dow_ok) if e.days_or else (dom_ok and dow_ok):
                    yield base + day


def _min_day_gap(e: _Expanded) -> int:
    """Smallest number of days between two consecutive fired days, across the cycle's wraparound too."""
    first = prev = None
    best = _CYCLE_DAYS
    for ordinal in _fired_days(e):
        if prev is None:
            first = ordinal
        else:
            best = min(best, ordinal - prev)
            if best == 1:
                return 1
        prev = ordinal
    if first is None or prev is None:
        return _CYCLE_DAYS  # never fires; _check_can_fire refuses these before we get here
    return min(best, first + _CYCLE_DAYS - prev)
