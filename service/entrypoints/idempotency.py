"""`Idempotency-Key` for HTTP and NATS alike (SPEC §2.1, §5): one effect per key and request.

A retry with the same key and the same request gets the first reply, stored durably; the same key with
another request is a 409. Replies of 5xx are not stored: the retry runs the command again.
"""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from service.domain.errors import Conflict, ValidationFailed
from service.ports import IdempotencyStore, RunSync, StoredResponse

IDEMPOTENCY_KEY_MAX = 128


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class IdempotencyMismatch(Conflict):
    def __init__(self) -> None:
        super().__init__("Idempotency-Key was already used with a different request")


def check_key(key: str) -> None:
    if not key or len(key) > IDEMPOTENCY_KEY_MAX:
        raise ValidationFailed(
            "Idempotency-Key", "invalid_header", f"Idempotency-Key must be 1-{IDEMPOTENCY_KEY_MAX} characters"
        )


def fingerprint(*parts: bytes) -> str:
    """What makes two requests "the same": a hash of the parts that identify the request."""
    return hashlib.sha256(b"\n".join(parts)).hexdigest()


@dataclass
class Idempotency:
    store: IdempotencyStore
    run_sync: RunSync
    # A lock lives while a request holds it, so the map never grows with old keys.
    _locks: weakref.WeakValueDictionary[str, asyncio.Lock] = field(
        default_factory=weakref.WeakValueDictionary
    )

    async def once(
        self, key: str, fingerprint: str, handle: Callable[[], Awaitable[Reply]]
    ) -> tuple[Reply, bool]:
        """The reply to the request under `key` (scoped by the caller), and whether it is a replay."""
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        async with lock:  # one request per key at a time in this process; the store settles the rest
            stored = await self.run_sync(self.store.get, key)
            if stored is not None:
                if stored.fingerprint != fingerprint:
                    raise IdempotencyMismatch
                return Reply(stored.status, stored.body, stored.headers), True
            reply = await handle()
            if reply.status < 500:
                await self.run_sync(
                    self.store.put, key, StoredResponse(fingerprint, reply.status, reply.body, reply.headers)
                )
            return reply, False
