"""Which scheduler replica claims a job's fires first: the jobs shared out among the replicas alive.

Rendezvous hashing: each (replica, job) pair gets a stable score and the replica with the highest score
owns the job. Every replica that sees the same members agrees without talking; when a replica joins or
leaves, only the jobs it gains or loses move (about 1/n of them). The score must be the same in every
process, so it is a BLAKE2b digest of the bytes, not Python's `hash` (randomised per process).

Ownership only decides who claims first. Exactly-once never depends on it: a claim is guarded by the
job's aggregate (SPEC §3.3), and the other replicas claim a fire its owner has not claimed after a short
grace (a dead owner, replicas briefly seeing different members).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from uuid import UUID


def owner(job_id: UUID, members: Sequence[str]) -> str | None:
    """The member that owns the job (None: no members)."""
    job = job_id.bytes
    best: tuple[bytes, str] | None = None
    for member in members:
        scored = (hashlib.blake2b(job + member.encode(), digest_size=8).digest(), member)
        if best is None or scored > best:
            best = scored
    return None if best is None else best[1]
