"""Sharing jobs out among scheduler replicas (rendezvous hashing): agreed, balanced, stable."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.shares import owner

pytestmark = pytest.mark.unit

JOBS = [uuid.UUID(int=i * 7_919_273_233) for i in range(6_000)]
member_names = st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=6, unique=True)


@given(member_names, st.uuids())
def test_the_owner_is_a_member_whatever_order_the_members_come_in(members: list[str], job: uuid.UUID) -> None:
    chosen = owner(job, members)
    assert chosen in members
    assert owner(job, list(reversed(members))) == chosen


def test_no_members_no_owner() -> None:
    assert owner(JOBS[0], []) is None


def test_jobs_are_shared_out_evenly() -> None:
    for n in (2, 3, 5):
        members = [f"scheduler-{uuid.uuid4().hex}" for _ in range(n)]
        shares = Counter(owner(job, members) for job in JOBS)
        assert len(shares) == n
        expected = len(JOBS) / n
        assert all(abs(count - expected) < expected * 0.1 for count in shares.values()), shares


def test_a_member_leaving_moves_only_its_own_jobs_and_one_joining_takes_about_its_share() -> None:
    members = [f"m{i}" for i in range(3)]
    before = {job: owner(job, members) for job in JOBS}
    after_leave = {job: owner(job, members[:2]) for job in JOBS}
    moved = [job for job in JOBS if before[job] != after_leave[job]]
    assert all(before[job] == "m2" for job in moved)  # only the leaver's jobs move
    after_join = {job: owner(job, [*members, "m3"]) for job in JOBS}
    taken = [job for job in JOBS if before[job] != after_join[job]]
    assert all(after_join[job] == "m3" for job in taken)  # only the newcomer gains
    assert abs(len(taken) - len(JOBS) / 4) < len(JOBS) / 4 * 0.15
