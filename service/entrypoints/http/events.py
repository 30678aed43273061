"""`GET /events`: job and run changes as Server-Sent Events, as this process applies them (SPEC §2.2).

A plain `Stream` rather than Litestar's `ServerSentEvent`: that one decodes each `data` to text to split
its lines and hops to a thread before the first chunk, while our data is already one line of JSON bytes.
Errors (credentials, a bad query) are answered as JSON before the stream starts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any
from uuid import UUID

from litestar import Request, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from litestar.response import Stream

from contracts.live import LIVE_EVENT_TYPES, LiveEvent
from service.domain.errors import Unavailable, ValidationFailed
from service.entrypoints.http.common import error_responses, services
from service.ports import LiveFeed, LiveMessage

EVENT_STREAM = "text/event-stream"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # X-Accel-Buffering: nginx, flush
# First bytes of every stream: once a client reads them, it is subscribed (later changes reach it).
SUBSCRIBED = b": subscribed\n\n"
KEEP_ALIVE = b": keep-alive\n\n"
DESCRIPTION = f"""Server-Sent Events (`{EVENT_STREAM}`): changes as this process's read models apply them
(every replica applies every change). Each message has `event:` (its `type`), `id:` (the change's position
in the store's global order, increasing) and `data:` (one line of JSON, one of the schemas below). The
stream starts with the comment `: subscribed`: every change applied after it is sent; earlier ones are not
replayed. A comment `: keep-alive` comes after a quiet spell (15 s by default). A client that falls too far
behind (1000 messages by default) gets a last `dropped` message, without `id:`, and the stream ends:
reconnect and reload what you show. Event types: {", ".join(f"`{t}`" for t in LIVE_EVENT_TYPES)}."""

LibraryFilter = Annotated[UUID | None, Parameter(description="Only the changes of this library's jobs")]
TypesFilter = Annotated[
    str | None,
    Parameter(
        description=f"Comma-separated event types to receive (default all): {', '.join(LIVE_EVENT_TYPES)}"
    ),
]


def _kinds(types: str | None) -> frozenset[str] | None:
    if types is None:
        return None
    kinds = frozenset(t.strip() for t in types.split(","))
    unknown = sorted(kinds.difference(LIVE_EVENT_TYPES))
    if unknown:
        raise ValidationFailed(
            "types",
            "invalid_value",
            f"types: unknown event type(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(LIVE_EVENT_TYPES)}",
        )
    return kinds


def _frame(message: LiveMessage) -> bytes:
    id_line = b"" if message.id is None else b"id: " + message.id.encode() + b"\n"
    return b"event: " + message.kind.encode() + b"\n" + id_line + b"data: " + message.data + b"\n\n"


async def _frames(
    feed: LiveFeed, library_id: UUID | None, kinds: frozenset[str] | None
) -> AsyncIterator[bytes]:
    # Subscribed here, not in the handler: a stream that never starts leaves no subscription behind.
    with feed.subscribe(library_id=library_id, kinds=kinds) as subscription:
        yield SUBSCRIBED
        async for message in subscription:
            yield KEEP_ALIVE if message is None else _frame(message)


@get(
    "/events",
    operation_id="stream_events",
    summary="Job and run changes as they happen (Server-Sent Events)",
    description=DESCRIPTION,
    opt={"scope": "jobs:read"},
    responses={
        200: ResponseSpec(
            data_container=LiveEvent,
            media_type=EVENT_STREAM,
            description="A stream of events; the schema is that of each message's `data`",
            generate_examples=False,
        ),
        **error_responses(400, 503),
    },
)
async def stream_events(
    request: Request[Any, Any, Any],
    libraryId: LibraryFilter = None,  # named as sent: a validation error names the Python parameter
    types: TypesFilter = None,
) -> Stream:
    kinds = _kinds(types)
    feed = services(request).live
    if feed is None:
        raise Unavailable("Live events are not served by this process")
    return Stream(_frames(feed, libraryId, kinds), media_type=EVENT_STREAM, headers=HEADERS)


ROUTES = [stream_events]
