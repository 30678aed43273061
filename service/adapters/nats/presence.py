"""Which scheduler replicas are alive, as this one hears it on NATS (core, not stored).

Each scheduler publishes `SchedulerPresence` with its own id every `interval_s`, and `leaving` when it
stops; it listens to the others' and counts a replica as a member while it was heard from within
`ttl_s`. `owns(job_id)` says whether this replica owns the job among the members (`service.domain.shares`),
which only decides who claims its fires first (`Scheduler`): a replica that is not heard (NATS down,
a message lost) only makes its jobs' fires a grace later, claimed by another, never lost or doubled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from uuid import UUID

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from contracts.nats import SchedulerPresence
from service.domain.shares import owner

log = logging.getLogger("libjobs.scheduler.presence")
_decode = msgspec.json.Decoder(SchedulerPresence).decode
_encode = msgspec.json.encode


class Presence:
    def __init__(
        self,
        subject: str,
        *,
        interval_s: float = 1.0,
        ttl_s: float = 3.5,
        member: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.subject = subject
        self.member = member or uuid.uuid4().hex
        self._interval_s, self._ttl_s = interval_s, ttl_s
        self._monotonic = monotonic
        self._heard: dict[str, float] = {}  # other member → when last heard (monotonic)
        self._members: tuple[str, ...] = (self.member,)
        self._client: Client | None = None
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def members(self) -> tuple[str, ...]:
        """This replica and those heard from within `ttl_s`, sorted."""
        return self._members

    def owns(self, job_id: UUID) -> bool:
        return len(self._members) == 1 or owner(job_id, self._members) == self.member

    async def start(self, client: Client) -> None:
        """Listens and announces (once connected; nats-py keeps the subscription across reconnects)."""
        if self._task is not None:
            return
        self._client = client
        self._subscription = await client.subscribe(self.subject, cb=self._on_message)
        self._task = asyncio.create_task(self._announce_forever(), name="scheduler-presence")

    async def stop(self) -> None:
        """Says it is leaving (its jobs go to the others at once, not after `ttl_s`) and stops listening."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None and not self._client.is_closed:
            with contextlib.suppress(Exception):  # NATS away: the others stop hearing us after ttl_s
                goodbye = SchedulerPresence(member=self.member, leaving=True)
                await self._client.publish(self.subject, _encode(goodbye))
                await self._client.flush(timeout=1)
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
            self._subscription = None

    async def _announce_forever(self) -> None:
        hello = _encode(SchedulerPresence(member=self.member))
        while True:
            if self._client is not None and self._client.is_connected:
                try:
                    await self._client.publish(self.subject, hello)
                except Exception as e:  # disconnected meanwhile: the next round tries again
                    log.debug("could not announce this scheduler: %s", e)
            self._expire()
            await asyncio.sleep(self._interval_s)

    async def _on_message(self, message: Msg) -> None:
        self.heard(message.data)

    def heard(self, data: bytes) -> None:
        """One presence message (anything else is logged and ignored)."""
        try:
            presence = _decode(data)
        except msgspec.DecodeError as e:
            log.warning("ignoring a malformed scheduler presence message: %s", e)
            return
        if presence.member == self.member:
            return
        if presence.leaving:
            self._heard.pop(presence.member, None)
        else:
            self._heard[presence.member] = self._monotonic()
        self._expire()

    def _expire(self) -> None:
        oldest = self._monotonic() - self._ttl_s
        for member in [m for m, at in self._heard.items() if at < oldest]:
            del self._heard[member]
        members = tuple(sorted((self.member, *self._heard)))
        if members != self._members:
            log.info("scheduler replicas: %d", len(members), extra={"members": list(members)})
            self._members = members
