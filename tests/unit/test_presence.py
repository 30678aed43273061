"""Which scheduler replicas a replica counts as alive, from the presence messages it hears."""

from __future__ import annotations

import uuid

import msgspec
import pytest

from contracts.nats import SchedulerPresence
from service.adapters.nats.presence import Presence
from service.domain.shares import owner

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def said(member: str, *, leaving: bool = False) -> bytes:
    return msgspec.json.encode(SchedulerPresence(member=member, leaving=leaving))


def test_alone_a_replica_owns_every_job() -> None:
    presence = Presence("libjobs.scheduler.presence", member="me")
    assert list(presence.members) == [
        "me",
    ]
    assert all(presence.owns(uuid.uuid4()) for _ in range(50))


def test_members_heard_within_the_ttl_share_the_jobs_and_are_forgotten_after_it() -> None:
    clock = Clock()
    presence = Presence("s", member="me", ttl_s=3.0, monotonic=clock)
    presence.heard(said("other"))
    presence.heard(said("me"))  # its own message, heard back
    assert list(presence.members) == ["me", "other"]
    jobs = [uuid.uuid4() for _ in range(200)]
    mine = [job for job in jobs if presence.owns(job)]
    assert mine == [job for job in jobs if owner(job, ["me", "other"]) == "me"]
    assert 0 < len(mine) < len(jobs)
    clock.now += 2.0
    presence.heard(said("third"))
    assert list(presence.members) == ["me", "other", "third"]
    clock.now += 1.5  # "other" last heard 3.5 s ago
    presence.heard(said("third"))
    assert list(presence.members) == ["me", "third"]


def test_a_replica_that_says_it_leaves_is_forgotten_at_once() -> None:
    presence = Presence("s", member="me")
    presence.heard(said("other"))
    presence.heard(said("other", leaving=True))
    assert list(presence.members) == [
        "me",
    ]


@pytest.mark.parametrize("garbage", [b"", b"not json", b'{"leaving": true}', b'{"member": 7}', b"[]"])
def test_a_malformed_message_is_ignored(garbage: bytes) -> None:
    presence = Presence("s", member="me")
    presence.heard(said("other"))
    presence.heard(garbage)
    assert list(presence.members) == ["me", "other"]
