"""The audit log's pure parts: type names and their stored topics, the cursor, `libjobs events`' loop."""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field
from uuid import UUID

import pytest

from contracts.nats import CATALOG_EVENT_TYPES, JOB_EVENT_TYPES
from service.adapters.audit import event_topics
from service.domain.errors import ValidationFailed
from service.entrypoints.events_cli import print_events
from service.entrypoints.http.audit import decode_cursor, encode_cursor
from service.ports import AuditFilter, AuditPage

pytestmark = pytest.mark.unit


def test_every_event_type_of_the_wire_has_its_stored_topic() -> None:
    topics = event_topics()

    assert set(topics) == {*JOB_EVENT_TYPES, *CATALOG_EVENT_TYPES}
    assert "libjobs:LibraryJob.Created" in topics["JobCreated"]
    assert "libjobs:LibraryJob.RunFinished" in topics["RunFinished"]
    assert "libjobs:Library.Registered" in topics["LibraryRegistered"]
    assert "libjobs:Book.Refreshed" in topics["BookRefreshed"]
    all_topics = [t for names in topics.values() for t in names]
    assert len(all_topics) == len(set(all_topics))  # a topic names one type


@pytest.mark.parametrize("position", [0, 1, 42, 10**12])
def test_a_cursor_is_opaque_and_gives_back_its_position(position: int) -> None:
    cursor = encode_cursor(position)

    assert cursor != str(position)
    assert decode_cursor(cursor) == position


@pytest.mark.parametrize("cursor", ["", "x", "!!!", "YWZ0ZXI6", "YWZ0ZXI6LTE", "Zm9vOjE"])
def test_a_cursor_this_service_did_not_hand_out_is_a_400(cursor: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        decode_cursor(cursor)

    assert raised.value.details == {"field": "cursor", "code": "invalid_cursor"}


@dataclass
class FakeLog:
    """Pages of a growing list of (position, line); `page` stops at `bound` positions like the store's."""

    stored: list[tuple[int, bytes]]
    bound: int = 1000
    asked: list[tuple[int, AuditFilter]] = field(default_factory=list)
    on_idle: list[object] = field(default_factory=list)  # called once the end is reached

    def event_types(self) -> frozenset[str]:
        return frozenset({"JobCreated"})

    def page(self, after: int, limit: int, where: AuditFilter) -> AuditPage:
        self.asked.append((after, where))
        end = self.stored[-1][0] if self.stored else 0
        stop = min(after + self.bound, end)
        found = [(p, line) for p, line in self.stored if after < p <= stop][:limit]
        if len(found) == limit:
            return AuditPage([line for _, line in found], found[-1][0], found[-1][0] >= end)
        if stop >= end and self.on_idle:
            callback = self.on_idle.pop(0)
            assert callable(callback)
            callback()
        return AuditPage([line for _, line in found], max(stop, after), stop >= end)

    def job_history(self, library_id: UUID, job_id: UUID) -> list[bytes]:
        raise NotImplementedError

    def job_at_version(self, library_id: UUID, job_id: UUID, version: int) -> bytes:
        raise NotImplementedError


def test_events_are_printed_one_per_line_through_every_page_and_bounded_scan() -> None:
    log = FakeLog([(p, b'{"position":%d}' % p) for p in range(1, 1201)], bound=7)
    out = io.BytesIO()

    assert print_events(log, AuditFilter(), after=100, out=out) == 0

    lines = out.getvalue().splitlines()
    assert lines == [b'{"position":%d}' % p for p in range(101, 1201)]


def test_follow_prints_new_events_until_stopped() -> None:
    log = FakeLog([(1, b"one")])
    out = io.BytesIO()
    stop = threading.Event()
    log.on_idle = [lambda: log.stored.append((5, b"five")), stop.set]

    assert print_events(log, AuditFilter(), follow=True, out=out, poll_s=0.001, stop=stop) == 0

    assert out.getvalue() == b"one\nfive\n"
    assert [after for after, _ in log.asked] == [0, 1]
