"""Group commit: concurrent saves share a transaction, each caller gets its own recordings, and a conflict
fails only the save that conflicts."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from eventsourcing.persistence import IntegrityError

from service.adapters import group_commit
from service.adapters.group_commit import GroupCommitter

pytestmark = pytest.mark.unit


@dataclass(frozen=True)
class Event:
    originator_id: uuid.UUID


class Aggregate:
    """Like eventsourcing's: collecting its pending events empties them."""

    def __init__(self, aggregate_id: uuid.UUID) -> None:
        self.id = aggregate_id
        self._pending = [Event(aggregate_id)]

    def collect_events(self) -> list[Event]:
        collected, self._pending = self._pending, []
        return collected


@dataclass(frozen=True)
class Recording:
    domain_event: Event


class SlowStore:
    """Saves take a while, like a commit; a conflicting aggregate fails the whole transaction."""

    def __init__(self, conflicting: set[uuid.UUID] | None = None) -> None:
        self.transactions: list[list[uuid.UUID]] = []
        self.conflicting = conflicting or set()
        self._lock = threading.Lock()

    def save(self, *events: Event) -> list[Recording]:
        with self._lock:  # one writer at a time, as in the real stores
            time.sleep(0.01)
            ids = [e.originator_id for e in events]
            if self.conflicting & set(ids):
                raise IntegrityError("conflict")
            self.transactions.append(ids)
            return [Recording(e) for e in events]


def save_concurrently(committer: GroupCommitter, aggregates: list[Aggregate]) -> list[Any]:
    def one(aggregate: Aggregate) -> Any:
        try:
            return committer.save(aggregate)
        except IntegrityError as e:
            return e

    with ThreadPoolExecutor(len(aggregates)) as pool:
        return list(pool.map(one, aggregates))


def test_concurrent_saves_share_transactions_and_each_gets_its_own_recordings() -> None:
    store = SlowStore()
    aggregates = [Aggregate(uuid.uuid4()) for _ in range(16)]
    results = save_concurrently(GroupCommitter(store.save), aggregates)
    for aggregate, recordings in zip(aggregates, results, strict=True):
        assert [r.domain_event.originator_id for r in recordings] == [aggregate.id]
    assert sorted(i for t in store.transactions for i in t) == sorted(a.id for a in aggregates)
    assert len(store.transactions) < len(aggregates)  # some waited and were committed together


def test_a_conflict_fails_only_the_conflicting_save() -> None:
    aggregates = [Aggregate(uuid.uuid4()) for _ in range(12)]
    store = SlowStore(conflicting={aggregates[5].id})
    results = save_concurrently(GroupCommitter(store.save), aggregates)
    assert isinstance(results[5], IntegrityError)
    for i, result in enumerate(results):
        if i != 5:
            assert [r.domain_event.originator_id for r in result] == [aggregates[i].id]
    assert aggregates[5].id not in {i for t in store.transactions for i in t}


def test_a_single_save_is_passed_through() -> None:
    store = SlowStore()
    aggregate = Aggregate(uuid.uuid4())
    assert GroupCommitter(store.save).save(aggregate) == [Recording(Event(aggregate.id))]
    assert store.transactions == [[aggregate.id]]


def test_after_a_conflicting_batch_every_other_save_is_still_stored() -> None:
    """Saving an aggregate empties its pending events: the retry alone must reuse what was collected."""
    aggregates = [Aggregate(uuid.uuid4()) for _ in range(12)]
    store = SlowStore(conflicting={aggregates[0].id})
    save_concurrently(GroupCommitter(store.save), aggregates)
    stored = {i for t in store.transactions for i in t}
    assert stored == {a.id for a in aggregates[1:]}


def test_a_store_failure_reaches_every_caller_of_the_batch() -> None:
    def broken(*events: Event) -> list[Recording]:
        time.sleep(0.01)
        raise OSError("disk gone")

    results = []
    committer = GroupCommitter(broken)

    def one() -> None:
        try:
            committer.save(Aggregate(uuid.uuid4()))
            results.append("saved")
        except OSError:
            results.append("failed")

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert results == ["failed"] * 8


def test_a_leader_behind_a_full_batch_still_saves_its_own() -> None:
    store = SlowStore()
    aggregates = [Aggregate(uuid.uuid4()) for _ in range(20)]
    results = save_concurrently(GroupCommitter(store.save, max_batch=2), aggregates)
    assert all(len(r) == 1 for r in results)
    assert sorted(i for t in store.transactions for i in t) == sorted(a.id for a in aggregates)


class CountedWake:
    """A caller's wake-up lock (held until released) that counts the waits and the releases."""

    waits = 0
    releases = 0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def acquire(self) -> bool:
        CountedWake.waits += 1
        return self._lock.acquire()

    def release(self) -> None:
        CountedWake.releases += 1
        self._lock.release()


@dataclass(eq=False)
class CountedPending(group_commit._Pending):
    wake: Any = field(default_factory=CountedWake)


def test_each_waiting_caller_sleeps_once_and_is_woken_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """For its own answer or for its turn to lead, never to find it must wait again (a condition notified
    for all wakes every waiting thread after each transaction: a thread switch and a fight for the GIL
    each)."""
    monkeypatch.setattr(group_commit, "_Pending", CountedPending)
    CountedWake.waits = CountedWake.releases = 0
    store = SlowStore()
    aggregates = [Aggregate(uuid.uuid4()) for _ in range(24)]
    results = save_concurrently(GroupCommitter(store.save, max_batch=4), aggregates)
    assert all(len(r) == 1 for r in results)
    assert len(store.transactions) >= 6  # several transactions: many chances to wake callers in vain
    assert CountedWake.waits == CountedWake.releases
    assert 0 < CountedWake.waits < len(aggregates)  # the first caller leads without waiting


def test_many_callers_with_conflicts_and_failures_all_get_an_answer() -> None:
    """A stress test of the hand-over between leaders: every save is stored or refused, none hangs."""
    failing = threading.Event()

    class Flaky(SlowStore):
        def save(self, *events: Event) -> list[Recording]:
            if failing.is_set() and len(events) > 1:
                failing.clear()
                raise OSError("disk hiccup")
            return super().save(*events)

    aggregates = [Aggregate(uuid.uuid4()) for _ in range(200)]
    store = Flaky(conflicting={a.id for a in aggregates[::17]})
    committer = GroupCommitter(store.save, max_batch=8)
    answers: dict[uuid.UUID, str] = {}

    def one(aggregate: Aggregate) -> None:
        if aggregate is aggregates[100]:
            failing.set()
        try:
            committer.save(aggregate)
            answers[aggregate.id] = "stored"
        except IntegrityError:
            answers[aggregate.id] = "conflict"
        except OSError:
            answers[aggregate.id] = "failed"

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(one, aggregates, timeout=60))
    assert len(answers) == len(aggregates)
    stored = {i for t in store.transactions for i in t}
    assert {a for a, answer in answers.items() if answer == "stored"} == stored
    assert all(answers[a.id] in ("conflict", "failed") for a in aggregates[::17])  # failed: the hiccup
    assert list(answers.values()).count("failed") <= 8  # one batch hit the hiccup
