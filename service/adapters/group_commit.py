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


@dataclass
class _Pending:
    events: list[Any]  # collected once: saving an aggregate empties its pending events
    done: bool = False
    result: list[Any] = field(default_factory=list)
    error: BaseException | None = None


class GroupCommitter:
    def __init__(self, save: Save, max_batch: int = 64) -> None:
        self._save = save
        self._max_batch = max_batch
        self._lock = threading.Condition()
        self._pending: list[_Pending] = []
        self._leading = False

    def save(self, *aggregates: Any) -> list[Any]:
        mine = _Pending([event for aggregate in aggregates for event in aggregate.collect_events()])
        with self._lock:
            self._pending.append(mine)
            while not mine.done and self._leading:
                self._lock.wait()
            leader = not mine.done
            if leader:
                self._leading = True
        if leader:
            try:
                while not mine.done:  # its own save may be behind a full batch
                    with self._lock:
                        batch = self._pending[: self._max_batch]
                        del self._pending[: self._max_batch]
                    self._commit(batch)
            finally:
                with self._lock:
                    self._leading = False
                    self._lock.notify_all()
        if mine.error is not None:
            raise mine.error
        return mine.result

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
