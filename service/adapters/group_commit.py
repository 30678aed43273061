"""Group commit: commands that wait for the store's one writer are saved together, in one transaction.

The store takes one write at a time (SQLite's lock; eventsourcing's table lock on PostgreSQL), so under
concurrent writes each save would wait for every earlier commit. Instead the first waiting thread leads:
it takes every pending save, stores them in one transaction, and hands each caller its own recordings.
When that transaction conflicts (two commands on one aggregate), each save is tried alone, so only the
one that really conflicts raises, and its caller's optimistic-concurrency retry reloads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from eventsourcing.persistence import IntegrityError

Save = Callable[..., Sequence[Any]]  # eventsourcing's Application.save: aggregates → recordings


def _held() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass(eq=False)
class _Pending:
    events: list[Any]  # collected once: saving an aggregate empties its pending events
    done: bool = False
    result: list[Any] = field(default_factory=list)
    error: BaseException | None = None
    # Released once, for this caller alone: its save is done, or it is its turn to lead. (A condition
    # notified for all would wake every waiting thread after each transaction, to find most of them
    # still waiting: each wake-up is a thread switch and a fight for the GIL.)
    wake: threading.Lock = field(default_factory=_held)


class GroupCommitter:
    def __init__(self, save: Save, max_batch: int = 64) -> None:
        self._save = save
        self._max_batch = max_batch
        self._mutex = threading.Lock()
        self._pending: list[_Pending] = []
        self._leading = False

    def save(self, *objs: Any) -> list[Any]:
        """Saves aggregates' pending events, and events given as they are (as `Application.save` does)."""
        mine = _Pending([event for obj in objs for event in _events(obj)])
        with self._mutex:
            self._pending.append(mine)
            leader = not self._leading
            self._leading = True
        if not leader:
            mine.wake.acquire()  # until its save is done, or the leader hands over
        if not mine.done:
            self._lead(mine)
        if mine.error is not None:
            raise mine.error
        return mine.result

    def _lead(self, mine: _Pending) -> None:
        """Commits what is pending, a batch per transaction, until its own save is done; then hands the
        lead to the first save still pending (or stops leading)."""
        try:
            while not mine.done:  # its own save may be behind a full batch
                with self._mutex:
                    batch = self._pending[: self._max_batch]
                    del self._pending[: self._max_batch]
                try:
                    self._commit(batch)
                finally:
                    for item in batch:
                        if not item.done:  # only if committing itself broke: never leave a caller waiting
                            item.error, item.done = RuntimeError("group commit failed"), True
                        if item is not mine:
                            item.wake.release()
        finally:
            with self._mutex:
                successor = self._pending[0] if self._pending else None
                self._leading = successor is not None
            if successor is not None:
                successor.wake.release()  # not done: it leads now

    def _commit(self, batch: list[_Pending]) -> None:
        """Answers every save of the batch: recordings, or the error that concerns it."""
        if len(batch) > 1:
            try:
                recordings = self._save(*(event for item in batch for event in item.events))
            except IntegrityError:
                pass  # somebody in the batch conflicts: find out who by saving each alone
            except BaseException as e:  # the store failed: every caller hears it
                for item in batch:
                    item.error, item.done = e, True
                return
            else:
                ids = {id(event): item for item in batch for event in item.events}
                for recording in recordings:
                    ids[id(recording.domain_event)].result.append(recording)
                for item in batch:
                    item.done = True
                return
        for item in batch:
            try:
                item.result = list(self._save(*item.events))
            except BaseException as e:  # handed to the caller, who knows what to do with it
                item.error = e
            item.done = True


def _events(obj: Any) -> list[Any]:
    collect = getattr(obj, "collect_events", None)
    return [obj] if collect is None else list(collect())
